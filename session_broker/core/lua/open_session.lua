--[[
open_session: a new session is 'open', with no worker yet; its open-session timer starts
now. The system settings the workers published (K.config) win over the client's defaults,
so every session of a deployment gets the operator's timers.

Instances (lib/instances.lua), once any is configured: the session records its instance; an
unknown one is refused, so is one at its usage limit, and a session (mode 'session', not a
batch) beyond the instance's max_sessions open ones. A max_time over the instance's
max_session_time is refused when the producer asked for it (explicit = '1'), else lowered to it.

KEYS: none (every key is built from the prefix P = ARGV[1] by K: one Redis, not a cluster)
ARGV: sid, backend, mode, max_time, interactive_timeout, open_session_timeout, ttl, instance, explicit
  instance  the producer's instance ('' = none; ignored while no instance is configured)
  explicit  '1' when the producer chose max_time, '0' when it is the system's default
Returns: {'ok', max_time} or {'error', kind, detail}; kind: 'unknown_instance' (detail: the
  known names) | 'usage_limit' (instance|limit|used|reset) | 'max_sessions' (instance|limit) |
  'max_session_time' (instance|limit); an error reply when the session id exists already
]]
local s = K.session(sid)
if redis.call('EXISTS', s) == 1 then return redis.error_reply('session id already exists: ' .. sid) end
if not instances_on() then instance = '' end
if instance ~= '' then
  local conf = instance_conf(instance)
  if not conf then return {'error', 'unknown_instance', instance_names()} end
  local over = over_limit(instance, conf)
  if over then return {'error', over[1], over[2]} end
  local cap = tonumber(conf.max_session_time)
  if cap and tonumber(max_time) > cap then
    if explicit == '1' then return {'error', 'max_session_time', instance .. '|' .. cap} end
    max_time = cap
  end
  local most = tonumber(conf.max_sessions)
  if mode == 'session' then
    local open = K.instance_sessions(instance)
    if most then
      for _, other in ipairs(redis.call('SMEMBERS', open)) do
        local st = redis.call('HGET', K.session(other), 'state')
        if not st or st == 'closed' then redis.call('SREM', open, other) end
      end
      if redis.call('SCARD', open) >= most then return {'error', 'max_sessions', instance .. '|' .. most} end
    end
    redis.call('SADD', open, sid)
  end
end
local itl = redis.call('HGET', K.config, 'interactive_timeout') or interactive_timeout
local open_timeout = redis.call('HGET', K.config, 'open_session_timeout') or open_session_timeout
ttl = redis.call('HGET', K.config, 'result_ttl') or ttl
redis.call('HSET', s, 'id', sid, 'backend', backend, 'mode', mode, 'state', 'open',
  'accepting', '1', 'max_time', max_time, 'interactive_timeout', itl, 'ttl', ttl,
  'created_at', NOW, 'started_at', '', 'closed_at', '', 'last_job_started', '',
  'last_job_completed', '', 'worker', '', 'epoch', '0', 'waiting', '0', 'first_job', '',
  'first_job_cancelled', '', 'queued', 0, 'running', 0, 'done', 0, 'failed', 0, 'cancelled', 0,
  'usage', 0, 'context', '', 'closed_reason', '', 'instance', instance)
redis.call('SET', K.timer(sid, 'open'), '1', 'EX', open_timeout)
redis.call('ZADD', K.sessions, NOW, sid)
redis.call('ZREMRANGEBYSCORE', K.sessions, '-inf', NOW - tonumber(ttl))
schedule(sid)
return {'ok', tostring(max_time)}
