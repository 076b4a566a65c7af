-- Give back one unit of each quota bucket: a charge whose event did not happen (a Cluster
-- charges buckets of other slots apart, and refunds them when a later step refuses).
-- KEYS[1..] quota buckets; ARGV[1..] limit, window (ms) of each quota. Returns {0}.
local now = now_ms()
for i = 1, #KEYS do
  local _, _, interval = quota_args(1, i)
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat then
    local back = tat - interval
    if back > now then
      redis.call('SET', KEYS[i], back, 'PX', back - now)
    else
      redis.call('DEL', KEYS[i])
    end
  end
end
return {0}
