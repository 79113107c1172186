--[[
close_session: the session accepts no new job. Without queued or running work it is closed
at once; otherwise it is 'pending_closed' until its last job ends (no idle or open timer
any more: only max_time still applies).

KEYS: none (every key is built from the prefix P = ARGV[1] by K: one Redis, not a cluster)
ARGV: sid
Returns: the new state ('closed' | 'pending_closed'), or '' when the session is unknown
]]
local s = K.session(sid)
if redis.call('EXISTS', s) == 0 then return '' end
local state = tick(sid)
if state == 'closed' then return state end
redis.call('HSET', s, 'accepting', '0')
if num(s, 'queued') == 0 and num(s, 'running') == 0 then
  close_now(sid, 'closed')
  return 'closed'
end
redis.call('HSET', s, 'state', 'pending_closed', 'closing_at', NOW)
redis.call('DEL', K.timer(sid, 'idle'), K.timer(sid, 'open'))
want_worker(sid, false)
schedule(sid)
return 'pending_closed'
