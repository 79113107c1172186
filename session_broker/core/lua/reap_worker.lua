--[[
reap_worker: a worker whose registry entry expired is dead: requeue what it ran (and the
messages left on its fetch list), free its session for the next worker (at the front of the
line) and forget the worker. With keep_pin = '1' a worker recovers its own previous life (a
restart, an executor replaced): its jobs are settled but its pin and registry stay.

KEYS: none (every key is built from the prefix P = ARGV[1] by K: one Redis, not a cluster)
ARGV: node, max_attempts, keep_pin
Returns: the number of jobs given back or requeued
]]
local requeued = give_back_fetched(node, nil)
local run = K.worker_running(node)
for _, jid in ipairs(redis.call('SMEMBERS', run)) do
  if job_lost(jid, node, tonumber(max_attempts), CODE.WORKER_LOST, 'worker ' .. node .. ' died while running it') == 'requeued' then
    requeued = requeued + 1
  end
end
redis.call('DEL', run)
if keep_pin ~= '1' then
  local pin_key = K.worker_pin(node)
  local pin = redis.call('GET', pin_key)
  if pin then
    local s = K.session(pin)
    if get(s, 'worker') == node then
      redis.call('HSET', s, 'worker', '', 'lost_worker', node)
      if get(s, 'state') == 'closed' then release_pin(pin) else want_worker(pin, true) end
    end
    redis.call('DEL', pin_key)
  end
  redis.call('HDEL', K.workers, node)
  redis.call('DEL', K.worker(node), K.worker_stalled(node))
end
return requeued
