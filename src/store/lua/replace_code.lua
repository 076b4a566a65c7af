-- Replace a code that was not delivered (its delivery receipt reported a failure) by a new one
-- sent on another channel: only while it is still the phone's live, unspent code, so a code
-- already verified, or replaced by a newer send, is left alone. Wrong attempts carry over (a
-- replacement never buys a guesser more tries); the lifetime starts again.
-- KEYS[1] the code hash
-- ARGV[1] HMAC of the failed code, ARGV[2] HMAC of the new code, ARGV[3] lifetime (ms),
-- ARGV[4] the new code's mark (0 = none)
-- Returns 1 when replaced, 0 otherwise.
local stored = redis.call('HMGET', KEYS[1], 'h', 's', 'a')
if stored[1] ~= ARGV[1] or stored[2] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'h', ARGV[2], 'a', tonumber(stored[3]) or 0)
if ARGV[4] ~= '0' then
  redis.call('HSET', KEYS[1], 'm', ARGV[4])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
