--[[
restore_instances: a worker's copy of the instances' settings goes back into K.instances when
the hash is missing (Redis came back empty), as worker_tick does for K.config; then it reads
the hash for the worker's next copy. Run by each worker's agent when its heartbeat sees the
instances' change counter change or vanish (worker_tick.lua), and once a heartbeat TTL.

KEYS: none (every key is built from the prefix P = ARGV[1] by K: one Redis, not a cluster)
ARGV: copy
  copy  JSON object name -> settings (and '.'), the worker's last copy ('{}' = none)
Returns: JSON of K.instances now (after a restore)
]]
if redis.call('EXISTS', K.instances) == 0 then
  local ok, saved = pcall(cjson.decode, copy)
  if ok and type(saved) == 'table' then
    for name, settings in pairs(saved) do redis.call('HSET', K.instances, name, settings) end
  end
end
local now = {}
local flat = redis.call('HGETALL', K.instances)
for i = 1, #flat, 2 do now[flat[i]] = flat[i + 1] end
if next(now) == nil then return '{}' end
return cjson.encode(now)
