--[[
notify: wake the waiters of an ended job (after FINISH with quiet = '1' and a WAIT, so a
producer is woken only once a replica holds the result).

KEYS: none (every key is built from the prefix P = ARGV[1] by K: one Redis, not a cluster)
ARGV: jid
Returns: 1, or 0 when the job is not final (a stale finish)
]]
local j = K.job(jid)
local status = get(j, 'status')
if status ~= 'DONE' and status ~= 'ERROR' and status ~= 'CANCELLED' then return 0 end
notify(jid, num(j, 'ttl'))
return 1
