-- Charge one event to quota buckets, all or none.
-- KEYS[1..] quota buckets; ARGV[1..] limit, window (ms) of each quota
-- Returns {0, remaining, reset_ms, …per quota} when charged, {2, quota index, wait_ms} when a
-- quota refuses (nothing changes then).
local n = #KEYS
local now = now_ms()
local tats, refused = gcra_check(1, 1, n, now)
if refused then
  return {2, refused[1], refused[2]}
end
local out = {0}
gcra_charge(1, 1, 1, n, now, tats, out)
return out
