-- Store a new code for one phone unless its resend cooldown is still running.
-- KEYS[1] the code hash (a hash: h = HMAC of the code, a = wrong attempts)
-- KEYS[2] the resend cooldown marker
-- ARGV[1] code HMAC (hex), ARGV[2] code lifetime (ms), ARGV[3] cooldown (ms, 0 = none)
-- Returns 0 when the code was stored, else the milliseconds left on the cooldown.
local wait = redis.call('PTTL', KEYS[2])
if wait > 0 then
  return wait
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'h', ARGV[1], 'a', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
end
return 0
