--[[
submit: record a job and queue its message, atomically. For a session job it also refuses
closing/closed sessions, applies due timers, stops the open and idle timers, and puts a
worker-less session in its backend's line. A later job of a session whose first job was
cancelled is recorded as ERROR (IBM's rule), without a message.

KEYS: none (every key is built from the prefix P = ARGV[1] by K: one Redis, not a cluster)
ARGV: jid, sid, backend, primitive, payload, message, queue, ttl, summary
  sid      the session id, '' for a job without a session
  queue    the Celery queue (kombu list) its message goes to
  ttl      seconds the records live after the end (a session's own ttl wins)
  summary  JSON: what listings show (tags among it)
A repeated submit (same id, session and summary: a retry after a lost reply) answers as
the first did.
Returns: {'ok', status} or {'error', kind, detail}; kind: 'duplicate' | 'not_found' |
  'backend_mismatch' (detail: the session's backend) | 'closed' (detail: state:reason)
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
  local first = get(s, 'first_job_cancelled')
  if first ~= '' then
    status, code = 'ERROR', CODE.FIRST_JOB_CANCELLED
    error_message = 'the first job of session ' .. sid .. ' (' .. first ..
      ') was cancelled, so every later job of the session fails; open a new session'
  end
end
redis.call('HSET', j, 'id', jid, 'session', sid, 'mode', mode, 'backend', backend,
  'primitive', primitive, 'status', status, 'created', NOW, 'running', '', 'finished', '',
  'worker', '', 'pid', '', 'attempts', 0, 'claim', '', 'error_code', code, 'error', error_message,
  'queue', queue, 'ttl', ttl, 'summary', summary, 'usage', '')
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
redis.call('LPUSH', queue, message)
if sid ~= '' then
  redis.call('HINCRBY', K.session(sid), 'queued', 1)
  want_worker(sid, false)
  schedule(sid)
end
return {'ok', status}
