-- Instances: named allocations inside one prefix (K.instances: name -> JSON settings), their
-- usage per period (the limit) and decayed usage (fair share), and the held lines that order a
-- backend's batch and plain jobs by fair share. With no instance configured none of this runs.

-- Whether any instance is configured (the hash keeps its '.' change counter when the last goes).
local function instances_on()
  return redis.call('HLEN', K.instances) > 1
end

-- An instance's settings (a table), or nil when it is not configured.
local function instance_conf(name)
  local raw = redis.call('HGET', K.instances, name)
  if not raw or name == '.' then return nil end
  return cjson.decode(raw)
end

-- The configured instances' names, sorted, comma-separated (for an error that lists them).
local function instance_names()
  local names = {}
  for _, n in ipairs(redis.call('HKEYS', K.instances)) do if n ~= '.' then table.insert(names, n) end end
  table.sort(names)
  return table.concat(names, ',')
end

-- Days since 1970-01-01 <-> a civil date (UTC; H. Hinnant's algorithms).
local function civil_from_days(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end

local function days_from_civil(y, m)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5)
  return era * 146097 + yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy - 719468
end

-- The usage period holding instant t: its start and its end (when usage resets), UTC.
-- 'day', 'week' (from Monday 00:00), 'month' (from the 1st), or a length in seconds (periods
-- aligned to the Unix epoch).
local function period_bounds(period, t)
  if period == 'day' then
    local s = math.floor(t / 86400) * 86400
    return s, s + 86400
  elseif period == 'week' then
    local s = math.floor((t - 345600) / 604800) * 604800 + 345600  -- 1970-01-05 was a Monday
    return s, s + 604800
  elseif period == 'month' then
    local y, m = civil_from_days(math.floor(t / 86400))
    local ny, nm = y, m + 1
    if nm > 12 then ny, nm = y + 1, 1 end
    return days_from_civil(y, m) * 86400, days_from_civil(ny, nm) * 86400
  end
  local n = tonumber(period) or 2592000
  local s = math.floor(t / n) * n
  return s, s + n
end

-- An instance's usage in the current period, starting a new period when the last one ended.
-- Returns used seconds, and when the period resets.
local function period_used(name, conf)
  local h = K.instance_usage(name)
  local start, stop = period_bounds(conf.period or 'month', NOW)
  if num(h, 'period') ~= start then redis.call('HSET', h, 'period', start, 'used', 0) end
  return num(h, 'used'), stop
end

-- Why the instance may not start more work now: its usage limit. Returns {kind, detail},
-- or nil when it may.
local function over_limit(name, conf)
  local limit = tonumber(conf.usage_limit)
  if not limit then return nil end
  local used, stop = period_used(name, conf)
  if used >= limit then
    return {'usage_limit', name .. '|' .. conf.usage_limit .. '|' .. string.format('%.3f', used) .. '|' .. string.format('%.0f', stop)}
  end
  return nil
end

-- Usage decays with the half-life the workers publish (K.config: fair_share_half_life, s).
local function half_life()
  return tonumber(redis.call('HGET', K.config, 'fair_share_half_life')) or 604800
end

-- An instance's decayed usage now.
local function fair_usage(name)
  local h = K.instance_usage(name)
  local age = math.max(0, NOW - num(h, 'fair_at'))
  return num(h, 'fair') * math.pow(0.5, age / half_life())
end

local function charge(name, seconds)
  local v = math.max(0, fair_usage(name) + seconds)
  redis.call('HSET', K.instance_usage(name), 'fair', v, 'fair_at', NOW)
end

-- Decayed usage per unit of share: the lowest goes next.
local function priority(name)
  local conf = instance_conf(name)
  local share = (conf and tonumber(conf.share)) or 1
  if share <= 0 then share = 1 end
  return fair_usage(name) / share
end

-- A job of the instance ran `seconds` (FINISH): the period's usage, the total, the decayed
-- usage (less what was charged for it when it left its held line), the mean job length.
local function instance_used(name, seconds, charged)
  local h = K.instance_usage(name)
  local conf = instance_conf(name)
  if conf then period_used(name, conf) end
  redis.call('HINCRBYFLOAT', h, 'used', seconds)
  redis.call('HINCRBYFLOAT', h, 'total', seconds)
  redis.call('HINCRBY', h, 'jobs', 1)
  charge(name, seconds - charged)
  local avg = num(h, 'avg')
  if avg == 0 then avg = seconds else avg = 0.8 * avg + 0.2 * seconds end
  redis.call('HSET', h, 'avg', avg)
end

-- Whether jobs of the backend wait in held lines (they are fed to workers even after the last
-- instance is removed: nothing stays held).
local function holding(backend)
  return redis.call('EXISTS', K.held_instances(backend)) == 1
end

-- Keep one message in the backend's queue while jobs are held: the oldest held job of the
-- instance with the lowest decayed usage per share moves there (workers take it with their
-- reliable fetch, as any message). It is charged the instance's mean job length at once, so
-- the next pick sees the work in flight; FINISH puts the measured time in its place.
local function feed(backend)
  local q = K.backend_queue(backend)
  local set = K.held_instances(backend)
  while redis.call('LLEN', q) < 1 do
    local best, bp = nil, nil
    for _, name in ipairs(redis.call('SMEMBERS', set)) do
      local p = priority(name)
      if bp == nil or p < bp or (p == bp and name < best) then best, bp = name, p end
    end
    if best == nil then return end
    local held = K.held(backend, best)
    local msg = redis.call('LPOP', held)
    if redis.call('LLEN', held) == 0 then redis.call('SREM', set, best) end
    if msg then
      redis.call('HINCRBY', K.instance_usage(best), 'held', -1)
      local jid = message_job(msg)
      if jid and get(K.job(jid), 'status') == 'QUEUED' then
        local est = math.max(num(K.instance_usage(best), 'avg'), 0.001)
        charge(best, est)
        redis.call('HSET', K.job(jid), 'held', '', 'charged', est)
        redis.call('LPUSH', q, msg)
      end
    end
  end
end

-- The next session to pin from a backend's line: the first of the instance with the lowest
-- decayed usage per share (FIFO within an instance and between equals). Without instances,
-- the head of the line.
local function next_waiting(line)
  if not instances_on() then return redis.call('LPOP', line) end
  local best, bp, seen = nil, nil, {}
  for _, sid in ipairs(redis.call('LRANGE', line, 0, 199)) do
    local name = get(K.session(sid), 'instance')
    if not seen[name] then
      seen[name] = true
      local p = priority(name)
      if bp == nil or p < bp then best, bp = sid, p end
    end
  end
  if best == nil then return nil end
  redis.call('LREM', line, 1, best)
  return best
end
