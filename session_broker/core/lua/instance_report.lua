--[[
instance_report: each configured instance's settings and usage, as `session-broker instances`,
service.usage(), the REST API's /instances/usage and /metrics show them. Starts a new period
for an instance whose period ended (as a submit would).

KEYS: none (every key is built from the prefix P = ARGV[1] by K: one Redis, not a cluster)
ARGV: instance
  instance  one instance, or '' for all of them
Returns: JSON list of {name, settings (JSON text), used, reset (Unix s), total, fair
  (decayed usage), priority (fair / share), jobs, held (batch and plain jobs waiting their
  turn), sessions (sessions not closed)}
]]
local out = {}
local names = {}
if instance ~= '' then
  names = {instance}
else
  for _, n in ipairs(redis.call('HKEYS', K.instances)) do if n ~= '.' then table.insert(names, n) end end
  table.sort(names)
end
for _, n in ipairs(names) do
  local conf = instance_conf(n)
  if conf then
    local h = K.instance_usage(n)
    local used, reset = period_used(n, conf)
    local open = K.instance_sessions(n)
    for _, sid in ipairs(redis.call('SMEMBERS', open)) do
      local st = redis.call('HGET', K.session(sid), 'state')
      if not st or st == 'closed' then redis.call('SREM', open, sid) end
    end
    table.insert(out, {name = n, settings = redis.call('HGET', K.instances, n), used = used,
      reset = reset, total = num(h, 'total'), fair = fair_usage(n), priority = priority(n),
      jobs = num(h, 'jobs'), held = num(h, 'held'), sessions = redis.call('SCARD', open)})
  end
end
if #out == 0 then return '[]' end
return cjson.encode(out)
