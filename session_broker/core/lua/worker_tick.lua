--[[
worker_tick: one heartbeat of a worker's agent: refresh the registry entry, follow or drop
the pin, and take the next waiting session when free. It also puts the operator's settings
back into K.config when they are missing (Redis came back empty): otherwise new sessions
would silently get the clients' defaults. A worker whose consumer is not started yet
(consuming = '0') beats but takes no session. With instances, the next session comes from the
instance with the lowest decayed usage per share (next_waiting), and a free worker feeds its
backend's queue from the held lines (feed): lib/instances.lua.

Liveness: a pin must be *served*, not just held by a worker that beats. A session pinned
here that has jobs queued, none running, and no pin, claim, finish or requeue for
unserved_after seconds (served_at) is unserved, whatever the cause (a frozen executor, one
whose Redis connection is dead, one consuming the wrong queue): it goes back to the front of
its backend's line, the messages on this node's fetch list are given back, and the executor
that held it (executor, its pid; '' while none is ready) is marked stalled
(K.worker_stalled(node)) so that this node takes no session until a different executor is
ready. The caller replaces the stalled executor. Counted in K.counts as unserved_pins.

KEYS: none (every key is built from the prefix P = ARGV[1] by K: one Redis, not a cluster)
ARGV: node, backend, ttl_ms, host, pid, started, concurrency, device,
      max_time, interactive_timeout, open_session_timeout, result_ttl, fair_share_half_life,
      consuming, executor, unserved_after
  ttl_ms          the registry entry's life (ms): it expires when the beats stop
  max_time .. result_ttl   the operator's settings, put back when K.config is missing
  consuming       '0' while the worker's consumer is not started: it takes no session
  executor        the ready executor's pid ('' while none is ready)
  unserved_after  seconds a pin may go unserved (SESSION_BROKER_UNSERVED_PIN_TIMEOUT)
Returns: {pin (session id or ''), epoch, stalled executor to replace or '', session released or '',
  instances: K.instances' change counter, '' when the hash is missing (the agent then refreshes
  or puts back its copy of the instances at once: restore_instances.lua)}
]]
local unserved = tonumber(unserved_after)
if redis.call('EXISTS', K.config) == 0 then
  redis.call('HSET', K.config, 'max_time', max_time, 'interactive_timeout', interactive_timeout,
    'open_session_timeout', open_session_timeout, 'result_ttl', result_ttl,
    'fair_share_half_life', fair_share_half_life)
end
local w = K.worker(node)
redis.call('HSET', w, 'node', node, 'backend', backend, 'host', host, 'pid', pid,
  'started', started, 'concurrency', concurrency, 'device', device, 'heartbeat', NOW)
redis.call('PEXPIRE', w, tonumber(ttl_ms))
redis.call('HSET', K.workers, node, backend)
local pin_key = K.worker_pin(node)
local pin = redis.call('GET', pin_key) or ''
if pin ~= '' then
  tick(pin)
  if get(K.session(pin), 'worker') ~= node then
    if redis.call('GET', pin_key) == pin then redis.call('DEL', pin_key) end
    pin = ''
  end
end
local stalled_key = K.worker_stalled(node)
local stalled = redis.call('GET', stalled_key) or ''
local released = ''
local run = K.worker_running(node)
if pin ~= '' and unserved then
  local s = K.session(pin)
  local served = math.max(num(s, 'served_at'), num(s, 'pinned_at'))
  if num(s, 'queued') > 0 and num(s, 'running') == 0 and redis.call('SCARD', run) == 0
     and NOW - served > unserved then
    redis.call('HSET', s, 'worker', '', 'lost_worker', node, 'unserved_at', NOW)
    redis.call('DEL', pin_key)
    want_worker(pin, true)
    give_back_fetched(node, nil)
    redis.call('HINCRBY', K.counts, 'unserved_pins', 1)
    if executor ~= '' then
      stalled = executor
      redis.call('SET', stalled_key, executor, 'EX', num(s, 'ttl') > 0 and num(s, 'ttl') or 86400)
    end
    released, pin = pin, ''
  end
end
if stalled ~= '' and stalled ~= executor and executor ~= '' then
  -- a different executor is ready: the stalled one was replaced
  redis.call('DEL', stalled_key)
  stalled = ''
end
if stalled == executor then stalled = executor else stalled = '' end
if pin == '' and consuming ~= '0' and stalled == '' and redis.call('SCARD', run) == 0 then
  local line = K.waiting(backend)
  while true do
    local sid = next_waiting(line)
    if not sid then break end
    local s = K.session(sid)
    redis.call('HSET', s, 'waiting', '0')
    local state = tick(sid)
    if state ~= '' and state ~= 'closed' and get(s, 'worker') == ''
       and num(s, 'queued') + num(s, 'running') > 0 then
      local epoch = redis.call('INCR', K.epoch)
      redis.call('HSET', s, 'worker', node, 'epoch', epoch, 'pinned_at', NOW, 'served_at', NOW)
      redis.call('SET', pin_key, sid)
      if state == 'inactive' then redis.call('HSET', s, 'state', 'active') end
      pin = sid
      break
    end
  end
end
if pin == '' and holding(backend) then feed(backend) end
redis.call('HSET', w, 'pin', pin)
local epoch = ''
if pin ~= '' then epoch = get(K.session(pin), 'epoch') end
return {pin, epoch, stalled, released, redis.call('HGET', K.instances, '.') or ''}
