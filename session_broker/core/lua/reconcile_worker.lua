--[[
reconcile_worker: a live worker squares its registry with what its process really runs
(held: the job ids of the requests it holds, read *before* this call). A job its run set
lists, RUNNING here, that it does not hold, is one whose end Redis forgot (an AOF from
before the job finished, appendfsync everysec): left alone it would stay RUNNING forever,
keep its session pending_closed and the worker unpinnable. It is requeued only when seen so
twice with the same claim token (suspects, from the previous call): a job claimed after the
caller read its requests is not mistaken for a lost one. Entries of jobs not RUNNING here
are dropped. Messages left on the worker's own fetch list since the previous call
(stale_fetch; a live consumer keeps one there for an instant) are given back too.

KEYS: none (every key is built from the prefix P = ARGV[1] by K: one Redis, not a cluster)
ARGV: node, max_attempts, suspects, held, stale_fetch
  suspects     JSON {jid: claim}: what the previous call returned
  held         JSON [jid]
  stale_fetch  JSON [raw message]: the fetch list the previous call returned
Returns: {jobs requeued, suspects (JSON), fetched messages given back, fetch list now (JSON [raw])}
]]
max_attempts = tonumber(max_attempts)
suspects = cjson.decode(suspects)
local holds = {}
for _, jid in ipairs(cjson.decode(held)) do holds[jid] = true end
local run = K.worker_running(node)
local again, requeued = {}, 0
for _, jid in ipairs(redis.call('SMEMBERS', run)) do
  local j = K.job(jid)
  if get(j, 'status') ~= 'RUNNING' or get(j, 'worker') ~= node then
    redis.call('SREM', run, jid)
  elseif not holds[jid] then
    local claim = get(j, 'claim')
    if suspects[jid] == claim then
      job_lost(jid, node, max_attempts, CODE.WORKER_LOST, 'worker ' .. node ..
        ' is alive but does not run it (Redis lost the record of its end)')
      requeued = requeued + 1
    else
      again[jid] = claim
    end
  end
end
local stale = cjson.decode(stale_fetch)
local given = 0
if #stale > 0 then given = give_back_fetched(node, stale) end
local fetch = redis.call('LRANGE', K.worker_fetch(node), 0, 9)
return {requeued, cjson.encode(again), given, cjson.encode(fetch)}
