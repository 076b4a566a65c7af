-- Store a new code for one phone unless its resend cooldown is running or a quota refuses.
-- KEYS[1] the code hash (a hash: h = HMAC of the code, a = wrong attempts, m = the mark)
-- KEYS[2] the resend cooldown marker, KEYS[3] the phone's block mark, KEYS[4..] quota buckets
-- ARGV[1] code HMAC (hex), ARGV[2] code lifetime (ms), ARGV[3] cooldown (ms, 0 = none),
-- ARGV[4] the mark kept with the code (0 = none), ARGV[5] above 0: keep the wrong tries of a
-- live, unspent code stored in the same form (Twilio Verify's marker) while fewer than this,
-- ARGV[6..] limit, window (ms) of each quota
-- Returns {0, remaining, reset_ms, …per quota} when stored, {1, wait_ms} during the cooldown,
-- {2, quota index, wait_ms} when a quota refuses, {3, remaining, reset_ms, …} when the phone is
-- blocked (cooldown and quotas charged as for a stored code, no code stored). Nothing changes
-- in the first two cases.
local wait = redis.call('PTTL', KEYS[2])
if wait > 0 then
  return {1, wait}
end
local out = gcra_take(4, 6, #KEYS - 3, now_ms())
if out[1] ~= 0 then
  return out
end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  out[1] = 3
  return out
end
local attempts = 0
local keep_below = tonumber(ARGV[5])
if keep_below > 0 then
  local previous = redis.call('HMGET', KEYS[1], 'h', 's', 'a')
  local tries = tonumber(previous[3]) or 0
  if previous[1] == ARGV[1] and not previous[2] and tries < keep_below then
    attempts = tries
  end
end
redis.call('DEL', KEYS[1])
if ARGV[4] ~= '0' then
  redis.call('HSET', KEYS[1], 'h', ARGV[1], 'a', attempts, 'm', ARGV[4])
else
  redis.call('HSET', KEYS[1], 'h', ARGV[1], 'a', attempts)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return out
