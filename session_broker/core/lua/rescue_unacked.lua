--[[
rescue_unacked: a message a consumer fetched and then lost (its worker died, or Redis went
away between fetch and start) waits in kombu's unacked hash (K.unacked) for the visibility
timeout: an hour by default. A job still QUEUED whose message has sat there longer than
min_age seconds was never claimed by anyone: give it back to the head of its queue now.
Should the original consumer be alive after all, the claim lets only one of the two copies
run. The index is read from a cursor (K.rescue_cursor: the score and tag of the last entry
inspected), limit entries a call, wrapping round at the end: entries that are not ours or
not rescuable (other apps on the database, jobs still running) cannot hide the ones behind.

KEYS: none (every key is built from the prefix P = ARGV[1] by K: one Redis, not a cluster)
ARGV: min_age, limit
Returns: {number of jobs given back, entries inspected}
]]
local upto, limit = NOW - tonumber(min_age), tonumber(limit)
local cursor = K.rescue_cursor
local from_score = redis.call('HGET', cursor, 'score')
local from_tag = redis.call('HGET', cursor, 'tag') or ''
local rows = redis.call('ZRANGEBYSCORE', K.unacked_index, from_score or '-inf', upto, 'WITHSCORES',
  'LIMIT', 0, limit)
local rescued, seen = 0, 0
local last_score, last_tag = nil, nil
for i = 1, #rows, 2 do
  local tag, score = rows[i], rows[i + 1]
  -- ties at the cursor's score come in tag order: those up to the cursor's tag were seen
  if not (from_score and tonumber(score) == tonumber(from_score) and tag <= from_tag) then
    seen = seen + 1
    local jid = unacked_job(tag)
    if jid and give_back(jid) == 1 then
      drop_unacked(tag)
      rescued = rescued + 1
    end
  end
  last_score, last_tag = score, tag
end
if seen == 0 and #rows == 2 * limit then
  -- a page of ties all seen already (only planted data does that): step past the score
  redis.call('HSET', cursor, 'score', '(' .. last_score, 'tag', '')
  redis.call('EXPIRE', cursor, 3600)
elseif #rows < 2 * limit or last_score == nil then
  redis.call('DEL', cursor)  -- reached the end: the next call starts from the oldest again
else
  redis.call('HSET', cursor, 'score', last_score, 'tag', last_tag)
  redis.call('EXPIRE', cursor, 3600)
end
return {rescued, seen}
