-- Ending job records.

-- Wake everyone waiting on a job: the latch keeps its token until it expires.
local function notify(jid, ttl)
  local d = K.job_done(jid)
  redis.call('DEL', d)
  redis.call('RPUSH', d, '1')
  redis.call('EXPIRE', d, ttl)
end

-- quiet: do not wake the waiters yet (FINISH when the caller WAITs for a replica first and
-- then runs NOTIFY: a result is delivered only once a replica holds it)
local function finish_job_record(jid, status, code, message, ttl, quiet)
  local j = K.job(jid)
  redis.call('HSET', j, 'status', status, 'finished', NOW, 'error_code', code, 'error', message)
  redis.call('HDEL', j, 'payload', 'message')
  redis.call('HINCRBY', K.counts, status, 1)
  redis.call('EXPIRE', j, ttl)
  if not quiet then notify(jid, ttl) end
end

-- Every still-queued job of the session ends with status/code/message.
local function fail_queued(sid, status, code, message)
  local s = K.session(sid)
  local ttl = num(s, 'ttl')
  for _, jid in ipairs(redis.call('LRANGE', K.session_jobs(sid), 0, -1)) do
    if get(K.job(jid), 'status') == 'QUEUED' then
      finish_job_record(jid, status, code, message, ttl)
      redis.call('HINCRBY', s, 'queued', -1)
      redis.call('HINCRBY', s, status == 'CANCELLED' and 'cancelled' or 'failed', 1)
    end
  end
end
