-- Reading hash fields: a missing field reads as '' (get) or 0 (num), never nil.
local function get(key, field) local v = redis.call('HGET', key, field); if v then return v end; return '' end
local function num(key, field) return tonumber(get(key, field)) or 0 end
