-- A session's worker (its pin) and its place in its backend's line.

-- Give the session's worker back (only once nothing of the session is running on it).
local function release_pin(sid)
  local s = K.session(sid)
  local w = get(s, 'worker')
  if w ~= '' and num(s, 'running') == 0 then
    if redis.call('GET', K.worker_pin(w)) == sid then
      redis.call('DEL', K.worker_pin(w))
    end
    if redis.call('EXISTS', K.worker(w)) == 1 then redis.call('HSET', K.worker(w), 'pin', '') end
    redis.call('HSET', s, 'worker', '', 'released_at', NOW)
  end
  if get(s, 'waiting') == '1' then
    redis.call('LREM', K.waiting(get(s, 'backend')), 0, sid)
    redis.call('HSET', s, 'waiting', '0')
  end
end

-- A session with work and no worker joins its backend's line (at the back, or the front
-- when it lost its worker and should not wait behind newcomers).
local function want_worker(sid, front)
  local s = K.session(sid)
  if get(s, 'mode') ~= 'session' or get(s, 'worker') ~= '' or get(s, 'waiting') == '1' then return end
  if get(s, 'state') == 'closed' then return end
  if num(s, 'queued') + num(s, 'running') == 0 then return end
  local line = K.waiting(get(s, 'backend'))
  if front then redis.call('LPUSH', line, sid) else redis.call('RPUSH', line, sid) end
  redis.call('HSET', s, 'waiting', '1')
end
