-- Spend one refresh token of a session (family), detecting reuse.
-- KEYS[1] the spent marker of this token, KEYS[2] the revocation marker of its session (both in
-- the session's slot); outside Cluster mode also KEYS[3], KEYS[4]: the same two under the names
-- of earlier versions, read and written too, so replicas of the previous version see what this
-- one did during a rolling upgrade.
-- ARGV[1] reuse grace (ms), ARGV[2] marker lifetime (ms, the refresh token lifetime)
-- Returns {status, spent_at_ms}: 0 rotated (first use, spent now), 1 within grace (spent at
-- spent_at_ms, moments ago: the caller issues the same successor again), 2 reused after grace
-- (the whole session is revoked now), 3 session already revoked.
if redis.call('EXISTS', KEYS[2]) == 1 or (KEYS[3] and redis.call('EXISTS', KEYS[3]) == 1) then
  return {3, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local spent = redis.call('GET', KEYS[1])
if not spent and KEYS[4] then
  spent = redis.call('GET', KEYS[4])
end
if not spent then
  redis.call('SET', KEYS[1], now, 'PX', ARGV[2])
  if KEYS[4] then
    redis.call('SET', KEYS[4], now, 'PX', ARGV[2])
  end
  return {0, now}
end
if now - tonumber(spent) <= tonumber(ARGV[1]) then
  return {1, tonumber(spent)}
end
redis.call('SET', KEYS[2], 'reused', 'PX', ARGV[2])
if KEYS[3] then
  redis.call('SET', KEYS[3], 'reused', 'PX', ARGV[2])
end
return {2, 0}
