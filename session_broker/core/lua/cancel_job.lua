--[[
cancel_job: QUEUED -> CANCELLED, its message taken off its queue. A running job is left to
finish. A job still in its instance's held line is taken off that. Cancelling a session's first job makes every later job of the session fail.

KEYS: none (every key is built from the prefix P = ARGV[1] by K: one Redis, not a cluster)
ARGV: jid
Returns: 'cancelled' | 'running' | 'not_found' | <final status>
]]
local j = K.job(jid)
if redis.call('EXISTS', j) == 0 then return 'not_found' end
local status = get(j, 'status')
if status == 'RUNNING' then return 'running' end
if status ~= 'QUEUED' then return status end
redis.call('LREM', get(j, 'queue'), 1, get(j, 'message'))
if get(j, 'held') ~= '' and redis.call('LREM', get(j, 'held'), 1, get(j, 'message')) == 1 then
  redis.call('HINCRBY', K.instance_usage(get(j, 'instance')), 'held', -1)
end
finish_job_record(jid, 'CANCELLED', CODE.CANCELLED, 'job ' .. jid .. ' was cancelled before it ran', num(j, 'ttl'))
local sid = get(j, 'session')
if sid ~= '' then
  local s = K.session(sid)
  redis.call('HINCRBY', s, 'queued', -1)
  redis.call('HINCRBY', s, 'cancelled', 1)
  if get(s, 'first_job') == jid then redis.call('HSET', s, 'first_job_cancelled', jid) end
  on_idle(sid)
end
return 'cancelled'
