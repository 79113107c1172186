--[[
update_tags: replace a job's tags (IBM's job.update_tags()). A job's tags live in its
summary (written at submit).

KEYS: none (every key is built from the prefix P = ARGV[1] by K: one Redis, not a cluster)
ARGV: jid, tags
  tags     JSON list of strings
Returns: 'ok' | 'not_found'
]]
local j = K.job(jid)
local summary = redis.call('HGET', j, 'summary')
if not summary then return 'not_found' end
local decoded = cjson.decode(summary)
decoded['tags'] = cjson.decode(tags)
redis.call('HSET', j, 'summary', cjson.encode(decoded))
return 'ok'
