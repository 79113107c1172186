--[[
finish: RUNNING -> DONE / ERROR, fenced by the claim token (a job requeued meanwhile, or
whose claim Redis lost, keeps its record: the result is dropped); may idle or close the
session. The job's message is acknowledged here too (tag: kombu's unacked entry goes),
whatever the outcome but one: its work is over, the record says what came of it. A job
that is QUEUED again keeps the record, so the unacked rescue can give its message back. The executor then
skips kombu's own ack round trip (transport.QoS.ack).

KEYS: none (every key is built from the prefix P = ARGV[1] by K: one Redis, not a cluster)
ARGV: jid, claim, status, result, error_code, error_message, usage, tag, quiet
  status   'DONE' | 'ERROR'
  usage    seconds the job ran
  tag      the delivery tag of the job's message ('' = none)
  quiet    '1': leave the waiters asleep; the caller sends WAIT then NOTIFY in the same
           pipeline, so a producer is woken only once a replica holds the result
With instances, the measured usage is added to the job's instance (its period's usage, its
total, its decayed fair-share usage less the estimate charged when it left its held line).
Returns: 'ok' | 'stale'
]]
local j = K.job(jid)
-- a job QUEUED again (a crash took its claim back) still needs that message: the rescue
-- gives it back from kombu's record; any other outcome is over, so the record goes
if tag ~= '' and get(j, 'status') ~= 'QUEUED' then drop_unacked(tag) end
if get(j, 'claim') ~= claim or get(j, 'status') ~= 'RUNNING' then return 'stale' end
local node = get(j, 'worker')
redis.call('SREM', K.worker_running(node), jid)
redis.call('HSET', j, 'result', result, 'usage', usage)
observe('execution', NOW - num(j, 'running'))
local inst = get(j, 'instance')
if inst ~= '' or get(j, 'charged') ~= '' then
  instance_used(inst, tonumber(usage) or 0, tonumber(get(j, 'charged')) or 0)
  redis.call('HSET', j, 'charged', '')
end
finish_job_record(jid, status, error_code, error_message, num(j, 'ttl'), quiet == '1')
local sid = get(j, 'session')
if sid ~= '' then
  local s = K.session(sid)
  redis.call('HINCRBY', s, 'running', -1)
  redis.call('HINCRBY', s, status == 'DONE' and 'done' or 'failed', 1)
  redis.call('HINCRBYFLOAT', s, 'usage', tonumber(usage) or 0)
  redis.call('HSET', s, 'last_job_completed', NOW, 'served_at', NOW)
  on_idle(sid)
end
return 'ok'
