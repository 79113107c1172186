--[[
submit: record a job and queue its message, atomically. For a session job it also refuses
closing/closed sessions, applies due timers, stops the open and idle timers, and puts a
worker-less session in its backend's line. A later job of a session whose first job was
cancelled is recorded as ERROR (IBM's rule), without a message.

Instances (lib/instances.lua), once any is configured: the job records its instance (a
session's jobs, the session's); an unknown instance is refused, and so is an instance at its
usage limit for the period. A batch or plain job waits in its instance's held line
(K.held), from which FEED moves jobs into the backend's queue by fair share. With no
instance configured, `instance` is ignored and nothing of this runs.

KEYS: none (every key is built from the prefix P = ARGV[1] by K: one Redis, not a cluster)
ARGV: jid, sid, backend, primitive, payload, message, queue, ttl, summary, instance
  sid      the session id, '' for a job without a session
  instance the producer's instance ('' = none)
  queue    the Celery queue (kombu list) its message goes to
  ttl      seconds the records live after the end (a session's own ttl wins)
  summary  JSON: what listings show (tags among it)
A repeated submit (same id, session and summary: a retry after a lost reply) answers as
the first did.
Returns: {'ok', status} or {'error', kind, detail}; kind: 'duplicate' | 'not_found' |
  'backend_mismatch' (detail: the session's backend) | 'closed' (detail: state:reason) |
  'unknown_instance' (detail: the known names, comma-separated) |
  'usage_limit' (detail: instance|limit|used|reset, reset as Unix seconds)
]]
local j = K.job(jid)
ttl = tonumber(ttl)
if redis.call('EXISTS', j) == 1 then
  -- the same submit again: redis-py retried it after its connection died between this
  -- script and the reply (a failover). Ids are random: the earlier attempt was ours.
  if get(j, 'session') == sid and get(j, 'summary') == summary then return {'ok', get(j, 'status')} end
  return {'error', 'duplicate', jid}
end
local status, code, error_message = 'QUEUED', '', ''
local mode = ''
local on = instances_on()
if not on then instance = '' end
if sid ~= '' then
  local s = K.session(sid)
  if redis.call('EXISTS', s) == 0 then return {'error', 'not_found', sid} end
  local state = tick(sid)
  if get(s, 'backend') ~= backend then return {'error', 'backend_mismatch', get(s, 'backend')} end
  if state == 'pending_closed' or state == 'closed' then
    return {'error', 'closed', state .. ':' .. get(s, 'closed_reason')}
  end
  mode = get(s, 'mode')
  ttl = num(s, 'ttl')
  instance = get(s, 'instance')
  local first = get(s, 'first_job_cancelled')
  if first ~= '' then
    status, code = 'ERROR', CODE.FIRST_JOB_CANCELLED
    error_message = 'the first job of session ' .. sid .. ' (' .. first ..
      ') was cancelled, so every later job of the session fails; open a new session'
  end
end
if on and instance ~= '' then
  local conf = instance_conf(instance)
  if conf then
    local over = over_limit(instance, conf)
    if over then return {'error', over[1], over[2]} end
  elseif sid == '' then
    return {'error', 'unknown_instance', instance_names()}
  end
end
redis.call('HSET', j, 'id', jid, 'session', sid, 'mode', mode, 'backend', backend,
  'primitive', primitive, 'status', status, 'created', NOW, 'running', '', 'finished', '',
  'worker', '', 'pid', '', 'attempts', 0, 'claim', '', 'error_code', code, 'error', error_message,
  'queue', queue, 'ttl', ttl, 'summary', summary, 'usage', '', 'instance', instance)
redis.call('ZADD', K.jobs, NOW, jid)
redis.call('ZREMRANGEBYSCORE', K.jobs, '-inf', NOW - ttl)
redis.call('HINCRBY', K.counts, 'submitted', 1)
if sid ~= '' then
  local s = K.session(sid)
  redis.call('RPUSH', K.session_jobs(sid), jid)
  if get(s, 'first_job') == '' then redis.call('HSET', s, 'first_job', jid) end
  redis.call('DEL', K.timer(sid, 'idle'), K.timer(sid, 'open'))
end
if status ~= 'QUEUED' then
  finish_job_record(jid, status, code, error_message, ttl)
  if sid ~= '' then redis.call('HINCRBY', K.session(sid), 'failed', 1); schedule(sid) end
  return {'ok', status}
end
redis.call('HSET', j, 'payload', payload, 'message', message)
if on and mode ~= 'session' then
  -- held in its instance's line; FEED moves the fairest instance's next job into the queue
  local held = K.held(backend, instance)
  redis.call('RPUSH', held, message)
  redis.call('HINCRBY', K.instance_usage(instance), 'held', 1)
  redis.call('SADD', K.held_instances(backend), instance)
  redis.call('HSET', j, 'held', held)
  feed(backend)
else
  redis.call('LPUSH', queue, message)
end
if sid ~= '' then
  redis.call('HINCRBY', K.session(sid), 'queued', 1)
  want_worker(sid, false)
  schedule(sid)
end
return {'ok', status}
