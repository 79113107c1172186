-- Task messages: pushing a job's message again, and kombu's record of fetched messages
-- (K.unacked[tag] = [message, exchange, routing_key], indexed by time in K.unacked_index).

-- Push a job's message again, at the head of its queue, under a delivery tag of its own.
-- kombu keys its unacked hash by delivery tag: two copies of a message under one tag share
-- one record, so the ack of one copy (say, a copy a claim bounced) deletes the record of the
-- other, and a worker that dies holding that other copy takes the job with it. Every push
-- after the first gets a fresh tag, and the record keeps the latest text (CANCEL_JOB's LREM).
local function repush(jid)
  local j = K.job(jid)
  local n = redis.call('HINCRBY', j, 'pushes', 1)
  local msg = string.gsub(get(j, 'message'), '"delivery_tag":"[^"]*"',
    '"delivery_tag":"' .. jid .. '.' .. n .. '"', 1)
  redis.call('HSET', j, 'message', msg)
  redis.call('RPUSH', get(j, 'queue'), msg)
end

-- A decoded kombu envelope of one of our jobs -> its job id, or nil.
local function envelope_job(m)
  if type(m) ~= 'table' or type(m['headers']) ~= 'table' then return nil end
  local jid = m['headers']['id']
  if type(jid) ~= 'string' then return nil end
  return jid
end

-- The message text of one of our jobs (a kombu envelope) -> its job id, or nil.
local function message_job(raw)
  local ok, m = pcall(cjson.decode, raw or '')
  if not ok then return nil end
  return envelope_job(m)
end

-- The job id of the message kombu holds unacked under ``tag``, or nil.
local function unacked_job(tag)
  local ok, entry = pcall(cjson.decode, redis.call('HGET', K.unacked, tag) or '')
  if not ok or type(entry) ~= 'table' then return nil end
  return envelope_job(entry[1])
end

-- Forget kombu's record of a message (what its own ack does).
local function drop_unacked(tag)
  redis.call('ZREM', K.unacked_index, tag)
  redis.call('HDEL', K.unacked, tag)
end

-- A job still QUEUED whose message is held by nobody: push its message again, at the head of
-- its queue. A second copy of a message is harmless (CLAIM runs a job at most once per attempt).
local function give_back(jid)
  local j = K.job(jid)
  if get(j, 'status') ~= 'QUEUED' or get(j, 'message') == '' then return 0 end
  repush(jid)
  redis.call('HSET', j, 'requeued_at', NOW)
  return 1
end

-- Messages a consumer moved into its fetch list and never handed to kombu's unacked hash
-- (it died in between): give back each one whose job still waits to run.
local function give_back_fetched(node, only)
  local f = K.worker_fetch(node)
  local n = 0
  local entries = only or redis.call('LRANGE', f, 0, -1)
  for _, raw in ipairs(entries) do
    if redis.call('LREM', f, 1, raw) > 0 or not only then
      local jid = message_job(raw)
      if jid then n = n + give_back(jid) end
    end
  end
  if not only then redis.call('DEL', f) end
  return n
end
