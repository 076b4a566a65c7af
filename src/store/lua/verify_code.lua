-- Check a code for one phone; a right code works once, wrong ones are counted.
-- KEYS[1] the code hash, KEYS[2] the resend cooldown marker (cleared on success),
-- KEYS[3..] quota buckets: first the attempt quotas (charged on every check), then the failure
-- quotas (charged on a wrong code). Every quota must admit the attempt first.
-- ARGV[1] HMAC of the presented code (hex), ARGV[2] wrong attempts allowed,
-- ARGV[3] number of attempt quotas, ARGV[4] the marker of a code an outside service checks
-- (Twilio Verify; '' = none), ARGV[5..] limit, window (ms) of each quota
-- Returns {status, x}: {0, mark} verified (the code is marked spent, s = 1, not deleted: until it
-- expires or a new code replaces it, restore_code can undo the spend), {1, remaining} wrong,
-- {2, 0} no live code (or a spent one),
-- {3, 0} burned, {4, quota index, wait_ms} refused by a quota (nothing changed),
-- {5, mark, remaining} the stored code is the marker: spent and its try counted (attempt and
-- failure quotas), for the caller to check outside (and put back when that check refuses).
local n_all = #KEYS - 2
local n_attempts = tonumber(ARGV[3])
local now = now_ms()
local tats, refused = gcra_check(3, 5, n_all, now)
if refused then
  return {4, refused[1], refused[2]}
end
gcra_charge(3, 5, 1, n_attempts, now, tats, nil)

local stored = redis.call('HMGET', KEYS[1], 'h', 'a', 's', 'm')
local hash = stored[1]
if not hash or stored[3] then
  return {2, 0}
end
local max = tonumber(ARGV[2])
local attempts = tonumber(stored[2]) or max
if attempts >= max then
  return {3, 0}
end
if ct_equal(hash, ARGV[1]) then
  redis.call('HSET', KEYS[1], 's', 1)
  redis.call('DEL', KEYS[2])
  return {0, tonumber(stored[4]) or 0}
end
if ARGV[4] ~= '' and hash == ARGV[4] then
  -- Counted now, whatever the outside check says (a check cut short still counts); the
  -- cooldown stays.
  gcra_charge(3, 5, n_attempts + 1, n_all, now, tats, nil)
  attempts = redis.call('HINCRBY', KEYS[1], 'a', 1)
  redis.call('HSET', KEYS[1], 's', 1)
  return {5, tonumber(stored[4]) or 0, math.max(0, max - attempts)}
end
gcra_charge(3, 5, n_attempts + 1, n_all, now, tats, nil)
attempts = redis.call('HINCRBY', KEYS[1], 'a', 1)
if attempts >= max then
  return {3, 0}
end
return {1, max - attempts}
