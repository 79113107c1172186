--[[
instance_set: create or change an instance (the operator's `session-broker instance set`):
its settings replace the old ones whole. The change counter ('.') makes K.instances outlive
its last instance, so that a missing hash means Redis came back empty (restore_instances).

KEYS: none (every key is built from the prefix P = ARGV[1] by K: one Redis, not a cluster)
ARGV: instance, settings
  settings  JSON: share, usage_limit, period, max_sessions, max_session_time
Returns: 'created' | 'changed'
]]
local existed = redis.call('HEXISTS', K.instances, instance) == 1
redis.call('HSET', K.instances, instance, settings)
redis.call('HINCRBY', K.instances, '.', 1)
if existed then return 'changed' end
return 'created'
