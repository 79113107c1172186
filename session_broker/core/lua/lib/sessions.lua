-- A session's life: closing it, applying its due timers, going idle.

-- Delete a queue with kombu's priority sub-lists and routing tables (K.queue_keys).
local function drop_queue(q)
  redis.call('DEL', unpack(K.queue_keys(q)))
end

local function close_now(sid, reason)
  local s = K.session(sid)
  local ttl = num(s, 'ttl')
  redis.call('HSET', s, 'state', 'closed', 'accepting', '0', 'closed_at', NOW, 'closed_reason', reason)
  redis.call('DEL', K.timer(sid, 'max'), K.timer(sid, 'idle'), K.timer(sid, 'open'))
  release_pin(sid)
  if get(s, 'mode') == 'session' then drop_queue(K.session_queue(sid)) end
  redis.call('ZREM', K.deadlines, sid)
  if get(s, 'instance') ~= '' then redis.call('SREM', K.instance_sessions(get(s, 'instance')), sid) end
  redis.call('EXPIRE', s, ttl)
  redis.call('EXPIRE', K.session_jobs(sid), ttl)
end

-- Apply every timer that has run out. The timer keys' existence is the truth.
local function tick(sid)
  local s = K.session(sid)
  local state = get(s, 'state')
  if state == '' or state == 'closed' then return state end
  if state == 'open' and get(s, 'first_job') == '' and redis.call('EXISTS', K.timer(sid, 'open')) == 0 then
    close_now(sid, 'open_session_timeout')
    return 'closed'
  end
  if get(s, 'started_at') ~= '' and redis.call('EXISTS', K.timer(sid, 'max')) == 0 then
    fail_queued(sid, 'ERROR', CODE.SESSION_MAX_TIME,
      'session ' .. sid .. ' reached its max_time of ' .. get(s, 'max_time') ..
      ' s before this job started; submit it to a new session')
    close_now(sid, 'max_time')
    return 'closed'
  end
  if state == 'active' and num(s, 'queued') == 0 and num(s, 'running') == 0
     and redis.call('EXISTS', K.timer(sid, 'idle')) == 0 then
    redis.call('HSET', s, 'state', 'inactive', 'deactivated_at', NOW)
    release_pin(sid)
    if get(s, 'mode') == 'session' then drop_queue(K.session_queue(sid)) end
    schedule(sid)
    return 'inactive'
  end
  return state
end

-- The session has nothing queued or running: close it if closing, else start the idle timer.
local function on_idle(sid)
  local s = K.session(sid)
  if num(s, 'queued') > 0 or num(s, 'running') > 0 then return end
  local state = get(s, 'state')
  if state == 'pending_closed' then
    close_now(sid, 'closed')
  elseif state == 'closed' then
    release_pin(sid)
  elseif state == 'active' then
    redis.call('SET', K.timer(sid, 'idle'), '1', 'EX', num(s, 'interactive_timeout'))
    schedule(sid)
  end
end
