-- Check a code for one phone; a right code works once, wrong ones are counted.
-- KEYS[1] the code hash, KEYS[2] the resend cooldown marker (cleared on success)
-- ARGV[1] HMAC of the presented code (hex), ARGV[2] wrong attempts allowed
-- Returns {status, remaining}: 0 verified, 1 wrong, 2 no live code, 3 burned.
local stored = redis.call('HMGET', KEYS[1], 'h', 'a')
local hash = stored[1]
if not hash then
  return {2, 0}
end
local max = tonumber(ARGV[2])
local attempts = tonumber(stored[2]) or max
if attempts >= max then
  return {3, 0}
end
-- Constant-time comparison: every byte is looked at whatever the first difference.
local given = ARGV[1]
local diff = 0
if #given ~= #hash then
  diff = 1
end
for i = 1, #hash do
  diff = bit.bor(diff, bit.bxor(string.byte(hash, i), string.byte(given, i) or 0))
end
if diff == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  return {0, 0}
end
attempts = redis.call('HINCRBY', KEYS[1], 'a', 1)
if attempts >= max then
  return {3, 0}
end
return {1, max - attempts}
