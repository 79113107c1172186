-- A running job lost its process (child killed, worker dead, hard time limit): queue it
-- again at the head of its queue, or end it when it has used all its attempts.
-- Returns 'requeued' | 'failed' | 'stale' (the job is not RUNNING on ``node``).
local function job_lost(jid, node, max_attempts, code, message)
  local j = K.job(jid)
  redis.call('SREM', K.worker_running(node), jid)
  if get(j, 'status') ~= 'RUNNING' or get(j, 'worker') ~= node then return 'stale' end
  local sid = get(j, 'session')
  local ttl = num(j, 'ttl')
  local retry = code == CODE.WORKER_LOST and num(j, 'attempts') < max_attempts
  if retry then
    redis.call('HSET', j, 'status', 'QUEUED', 'claim', '', 'worker', '', 'requeued_at', NOW)
    repush(jid)
  else
    if code == CODE.WORKER_LOST then
      message = 'job ' .. jid .. ' killed the worker process running it ' .. get(j, 'attempts') ..
        ' times (limit SESSION_BROKER_MAX_ATTEMPTS=' .. max_attempts .. '); it is not retried: ' .. message
    end
    finish_job_record(jid, 'ERROR', code, message, ttl)
  end
  if sid ~= '' then
    local s = K.session(sid)
    redis.call('HINCRBY', s, 'running', -1)
    redis.call('HSET', s, 'served_at', NOW)  -- its executor restarts: the liveness bound starts again
    if retry then
      redis.call('HINCRBY', s, 'queued', 1)
      if get(s, 'state') == 'closed' then
        -- the session was cancelled or expired while this job ran: it may not run again
        local reason = get(s, 'closed_reason')
        local st, cd = 'CANCELLED', CODE.CANCELLED
        if reason == 'max_time' then st, cd = 'ERROR', CODE.SESSION_MAX_TIME end
        finish_job_record(jid, st, cd, 'job ' .. jid .. ' lost its worker after session ' .. sid .. ' ended (' .. reason .. ')', ttl)
        redis.call('HINCRBY', s, 'queued', -1)
      end
    else
      redis.call('HINCRBY', s, 'failed', 1)
      redis.call('HSET', s, 'last_job_completed', NOW)
    end
    on_idle(sid)
  end
  return retry and 'requeued' or 'failed'
end
