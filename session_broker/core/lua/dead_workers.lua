--[[
dead_workers: the registered workers (K.workers) whose registry entry has expired, i.e.
that stopped beating. Read-only: the caller reaps each (REAP_WORKER).

KEYS: none (every key is built from the prefix P = ARGV[1] by K: one Redis, not a cluster)
ARGV: none
Returns: the list of dead nodes
]]
local dead = {}
for node, _ in pairs((function() local t = {}; local f = redis.call('HGETALL', K.workers);
    for i = 1, #f, 2 do t[f[i]] = f[i + 1] end; return t end)()) do
  if redis.call('EXISTS', K.worker(node)) == 0 then table.insert(dead, node) end
end
return dead
