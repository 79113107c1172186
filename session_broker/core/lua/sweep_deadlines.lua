--[[
sweep_deadlines: tick every session whose earliest timer is due (K.deadlines). Any process
may run it: workers do, often.

KEYS: none (every key is built from the prefix P = ARGV[1] by K: one Redis, not a cluster)
ARGV: limit
  limit    the most sessions to tick in one call
Returns: the number of sessions ticked
]]
local due = redis.call('ZRANGEBYSCORE', K.deadlines, '-inf', NOW, 'LIMIT', 0, tonumber(limit))
for _, sid in ipairs(due) do
  if redis.call('EXISTS', K.session(sid)) == 0 then redis.call('ZREM', K.deadlines, sid)
  else tick(sid); if get(K.session(sid), 'state') ~= 'closed' then schedule(sid) end end
end
return #due
