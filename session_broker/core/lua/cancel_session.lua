--[[
cancel_session: the session is closed now; its queued jobs become CANCELLED and never run,
running ones finish (their results are kept).

KEYS: none (every key is built from the prefix P = ARGV[1] by K: one Redis, not a cluster)
ARGV: sid
Returns: 'closed', or '' when the session is unknown
]]
local s = K.session(sid)
if redis.call('EXISTS', s) == 0 then return '' end
local state = tick(sid)
if state == 'closed' then return state end
local first = get(s, 'first_job')
if first ~= '' and get(K.job(first), 'status') == 'QUEUED' then redis.call('HSET', s, 'first_job_cancelled', first) end
fail_queued(sid, 'CANCELLED', CODE.CANCELLED, 'session ' .. sid .. ' was cancelled before this job ran')
close_now(sid, 'cancelled')
return 'closed'
