--[[
open_session: a new session is 'open', with no worker yet; its open-session timer starts
now. The system settings the workers published (K.config) win over the client's defaults,
so every session of a deployment gets the operator's timers.

KEYS: none (every key is built from the prefix P = ARGV[1] by K: one Redis, not a cluster)
ARGV: sid, backend, mode, max_time, interactive_timeout, open_session_timeout, ttl
Returns: 'ok', or an error reply when the session id exists already
]]
local s = K.session(sid)
if redis.call('EXISTS', s) == 1 then return redis.error_reply('session id already exists: ' .. sid) end
local itl = redis.call('HGET', K.config, 'interactive_timeout') or interactive_timeout
local open_timeout = redis.call('HGET', K.config, 'open_session_timeout') or open_session_timeout
ttl = redis.call('HGET', K.config, 'result_ttl') or ttl
redis.call('HSET', s, 'id', sid, 'backend', backend, 'mode', mode, 'state', 'open',
  'accepting', '1', 'max_time', max_time, 'interactive_timeout', itl, 'ttl', ttl,
  'created_at', NOW, 'started_at', '', 'closed_at', '', 'last_job_started', '',
  'last_job_completed', '', 'worker', '', 'epoch', '0', 'waiting', '0', 'first_job', '',
  'first_job_cancelled', '', 'queued', 0, 'running', 0, 'done', 0, 'failed', 0, 'cancelled', 0,
  'usage', 0, 'context', '', 'closed_reason', '')
redis.call('SET', K.timer(sid, 'open'), '1', 'EX', open_timeout)
redis.call('ZADD', K.sessions, NOW, sid)
redis.call('ZREMRANGEBYSCORE', K.sessions, '-inf', NOW - tonumber(ttl))
schedule(sid)
return 'ok'
