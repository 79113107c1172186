-- A session's timers are keys with an expiry (K.timer(sid, 'max' | 'idle' | 'open')): the
-- keys' existence is the truth. The deadline index only says when to look again.

-- Put the session's earliest timer into the deadline index (or take it out).
local function schedule(sid)
  local best = nil
  for _, which in ipairs({'max', 'idle', 'open'}) do
    local ms = redis.call('PTTL', K.timer(sid, which))
    if ms >= 0 and (best == nil or ms < best) then best = ms end
  end
  if best == nil or get(K.session(sid), 'state') == 'closed' then
    redis.call('ZREM', K.deadlines, sid)
  else
    redis.call('ZADD', K.deadlines, NOW + best / 1000, sid)
  end
end
