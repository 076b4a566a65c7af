-- Undo a code that could not be delivered: drop it (if it is still ours) with its cooldown, and
-- give back the quota units it was charged, so a send that never left costs nothing.
-- KEYS[1] the code hash, KEYS[2] the resend cooldown marker, KEYS[3..] quota buckets
-- ARGV[1] HMAC of the code that was issued, ARGV[2..] limit, window (ms) of each quota
if redis.call('HGET', KEYS[1], 'h') == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
end
local now = now_ms()
for i = 1, #KEYS - 2 do
  local _, _, interval = quota_args(2, i)
  local tat = tonumber(redis.call('GET', KEYS[2 + i]))
  if tat then
    local back = tat - interval
    if back > now then
      redis.call('SET', KEYS[2 + i], back, 'PX', back - now)
    else
      redis.call('DEL', KEYS[2 + i])
    end
  end
end
return 0
