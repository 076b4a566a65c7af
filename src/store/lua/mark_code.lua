-- Two small edits of a code, while it is still the phone's code (the key keeps its TTL):
-- set the mark kept with it (the channel that delivered it changed), or, with ARGV[2] 'refund',
-- put back a spent code with one wrong try fewer (a Twilio Verify check that got no answer).
-- KEYS[1] the code hash
-- ARGV[1] HMAC of the code (or the Verify marker), ARGV[2] the mark, or 'refund'
-- Returns 1 when changed, 0 otherwise.
if ARGV[2] == 'refund' then
  local stored = redis.call('HMGET', KEYS[1], 'h', 's', 'a')
  if stored[1] ~= ARGV[1] or not stored[2] then
    return 0
  end
  redis.call('HDEL', KEYS[1], 's')
  if (tonumber(stored[3]) or 0) > 0 then
    redis.call('HINCRBY', KEYS[1], 'a', -1)
  end
  return 1
end
if redis.call('HGET', KEYS[1], 'h') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'm', ARGV[2])
  return 1
end
return 0
