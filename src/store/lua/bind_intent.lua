-- Bind a pending login intent to the one who sent its code; an intent is bound once.
-- KEYS[1] the intent; ARGV[1] the channel the code arrived on, ARGV[2] the sender.
-- Returns 0 bound, 1 unknown (absent, expired, or another channel's), 2 bound before.
local v = redis.call('HMGET', KEYS[1], 'c', 's')
if not v[1] or v[1] ~= ARGV[1] then
  return 1
end
if v[2] ~= 'pending' then
  return 2
end
redis.call('HSET', KEYS[1], 's', 'bound', 'u', ARGV[2])
return 0
