-- Set the mark kept with a code (the channel that delivered it changed), while it is still the
-- phone's code. The key keeps its TTL.
-- KEYS[1] the code hash
-- ARGV[1] HMAC of the code, ARGV[2] the mark
if redis.call('HGET', KEYS[1], 'h') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'm', ARGV[2])
  return 1
end
return 0
