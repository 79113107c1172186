--[[
claim: QUEUED -> RUNNING, only if this worker may run the job now. A session's job runs only
on the session's worker, and a pinned worker runs its session's jobs and nothing else: a
message fetched by any other worker goes back to the head of its queue. Starting a
session's first job makes the session 'active', sets started_at and starts the max-time
timer; it also fixes the session's device context (a worker simulating another device
fails the job). With instances, a job taken off its backend's queue makes FEED move the next
held job there (lib/instances.lua). A message the lean consumer fetched onto the worker's
fetch list leaves it here, whatever the outcome: from now on the running set (run), a fresh
copy (repush) or the record (skip) stands for it.

KEYS: none (every key is built from the prefix P = ARGV[1] by K: one Redis, not a cluster)
ARGV: jid, node, pid, context, fetched
  context  the worker's device fingerprint
  fetched  the message text to take off the worker's fetch list ('' = none: Celery's path,
           where kombu's unacked hash holds it)
Returns: {'run', payload, claim, session, epoch} or {'skip', reason}
  claim    the claim token (node/attempt) that fences FINISH and JOB_LOST
]]
if fetched ~= '' then redis.call('LREM', K.worker_fetch(node), 1, fetched) end
local j = K.job(jid)
if redis.call('EXISTS', j) == 0 then return {'skip', 'unknown job'} end
-- a message left the backend's queue: move the next held one there (fair share, instances)
if get(j, 'mode') ~= 'session' and holding(get(j, 'backend')) then feed(get(j, 'backend')) end
local status = get(j, 'status')
if status ~= 'QUEUED' then return {'skip', 'job is ' .. status} end
local sid, mode = get(j, 'session'), get(j, 'mode')
local pin = redis.call('GET', K.worker_pin(node)) or ''
local epoch = ''
if sid ~= '' then
  tick(sid)
  if get(j, 'status') ~= 'QUEUED' then return {'skip', 'job is ' .. get(j, 'status')} end
end
if mode == 'session' then
  local s = K.session(sid)
  if get(s, 'worker') ~= node then
    -- fetched by a worker that is not (or no longer) the session's: back to the head of its queue
    repush(jid)
    want_worker(sid, true)
    return {'skip', 'session pinned elsewhere'}
  end
  epoch = get(s, 'epoch')
elseif pin ~= '' then
  -- a pinned worker runs its session's jobs and nothing else
  repush(jid)
  return {'skip', 'worker pinned to session ' .. pin}
end
if sid ~= '' then
  local s = K.session(sid)
  local first = get(s, 'first_job_cancelled')
  if first ~= '' then
    finish_job_record(jid, 'ERROR', CODE.FIRST_JOB_CANCELLED, 'the first job of session ' .. sid ..
      ' (' .. first .. ') was cancelled, so every later job of the session fails; open a new session', num(j, 'ttl'))
    redis.call('HINCRBY', s, 'queued', -1)
    redis.call('HINCRBY', s, 'failed', 1)
    on_idle(sid)
    return {'skip', 'first job cancelled'}
  end
  local ctx = get(s, 'context')
  if ctx == '' then
    redis.call('HSET', s, 'context', context)
  elseif ctx ~= context then
    finish_job_record(jid, 'ERROR', CODE.FAILED, 'worker ' .. node .. ' simulates a different device (' ..
      context .. ') than the one the session\'s first job fixed (' .. ctx .. ')', num(j, 'ttl'))
    redis.call('HINCRBY', s, 'queued', -1)
    redis.call('HINCRBY', s, 'failed', 1)
    on_idle(sid)
    return {'skip', 'context mismatch'}
  end
end
observe('queue_wait', NOW - (tonumber(get(j, 'requeued_at')) or num(j, 'created')))
local attempts = redis.call('HINCRBY', j, 'attempts', 1)
local claim = node .. '/' .. attempts
redis.call('HSET', j, 'status', 'RUNNING', 'worker', node, 'pid', pid, 'running', NOW, 'claim', claim)
redis.call('SADD', K.worker_running(node), jid)
if sid ~= '' then
  local s = K.session(sid)
  local last = tonumber(get(s, 'last_job_completed'))
  if last and num(s, 'running') == 0 then observe('session_idle', NOW - last) end
  redis.call('HINCRBY', s, 'queued', -1)
  redis.call('HINCRBY', s, 'running', 1)
  redis.call('HSET', s, 'last_job_started', NOW, 'served_at', NOW)
  redis.call('DEL', K.timer(sid, 'idle'))
  local state = get(s, 'state')
  if get(s, 'started_at') == '' then
    redis.call('HSET', s, 'started_at', NOW)
    redis.call('SET', K.timer(sid, 'max'), '1', 'EX', num(s, 'max_time'))
  end
  if state == 'open' or state == 'inactive' then redis.call('HSET', s, 'state', 'active') end
  schedule(sid)
end
return {'run', redis.call('HGET', j, 'payload') or '', claim, sid, epoch}
