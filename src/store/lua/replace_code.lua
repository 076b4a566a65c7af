-- Replace a code that was not delivered (its delivery receipt reported a failure) by a new one
-- sent on another channel: only while it is still the phone's live, unspent, unburned code and
-- the phone is not blocked, so a code already verified, burned by wrong tries, or replaced by a
-- newer send is left alone. Wrong attempts carry over (a replacement never buys a guesser more
-- tries); the lifetime starts again. Also used to put the failed code back when the fallback's
-- own send fails.
-- KEYS[1] the code hash, KEYS[2] the phone's block mark (same slot)
-- ARGV[1] HMAC of the code to replace, ARGV[2] HMAC of the new code, ARGV[3] lifetime (ms),
-- ARGV[4] the new code's mark (0 = none), ARGV[5] wrong attempts allowed
-- Returns 1 when replaced, 0 otherwise.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
local stored = redis.call('HMGET', KEYS[1], 'h', 's', 'a')
local attempts = tonumber(stored[3]) or 0
if stored[1] ~= ARGV[1] or stored[2] or attempts >= tonumber(ARGV[5]) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'h', ARGV[2], 'a', attempts)
if ARGV[4] ~= '0' then
  redis.call('HSET', KEYS[1], 'm', ARGV[4])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
