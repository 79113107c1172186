--[[
tick_session: apply the session's timers that ran out (max time, interactive, open-session).
Timers are keys with an expiry, so no transition waits for a client process to be alive:
whoever reads a session ticks it first.

KEYS: none (every key is built from the prefix P = ARGV[1] by K: one Redis, not a cluster)
ARGV: sid
Returns: the state after applying due timers ('' when the session is unknown)
]]
return tick(sid)
