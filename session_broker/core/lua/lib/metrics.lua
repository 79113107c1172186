-- One observation into the histogram K.histogram(name): non-cumulative bucket counts under
-- upper bounds BOUNDS (generated from keys.HISTOGRAM_BOUNDS), plus sum and count.
local function observe(name, value)
  local h = K.histogram(name)
  local le = '+Inf'
  for _, b in ipairs(BOUNDS) do if value <= b then le = tostring(b); break end end
  redis.call('HINCRBY', h, le, 1)
  redis.call('HINCRBYFLOAT', h, 'sum', value)
  redis.call('HINCRBY', h, 'count', 1)
end
