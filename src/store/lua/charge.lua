-- Charge one event to quota buckets, all or none.
-- KEYS[1..] quota buckets; ARGV[1..] limit, window (ms) of each quota
-- Returns {0, remaining, reset_ms, …per quota} when charged, {2, quota index, wait_ms} when a
-- quota refuses (nothing changes then).
return gcra_take(1, 1, #KEYS, now_ms())
