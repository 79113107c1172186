--[[
instance_rm: remove an instance (`session-broker instance rm`). Its usage record stays (its
jobs keep their instance; a new instance of the same name goes on from it); its held jobs
are still fed to workers, at share 1; new jobs naming it are refused.

KEYS: none (every key is built from the prefix P = ARGV[1] by K: one Redis, not a cluster)
ARGV: instance
Returns: 1 when it was configured, 0 when not
]]
local n = redis.call('HDEL', K.instances, instance)
if n == 1 then redis.call('HINCRBY', K.instances, '.', 1) end
return n
