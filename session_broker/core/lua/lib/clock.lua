-- Redis server time (TIME), seconds as a float: hosts with skewed clocks agree on every
-- timestamp. NOW is read once, so one script stamps all it writes with one instant.
local function now() local t = redis.call('TIME'); return tonumber(t[1]) + tonumber(t[2]) / 1000000 end
local NOW = now()
