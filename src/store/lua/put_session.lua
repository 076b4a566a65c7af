-- Record a new session in its user's session index.
-- KEYS[1] the index (a hash: sid -> "<created ms> <last used ms> <meta JSON>"), KEYS[2] the
-- user's block mark, KEYS[3] (optional) another user's index the session moves from: its
-- entry there is dropped first, whatever happens here (a session recorded with a code check for
-- the user a login proposed, when the login opened another's)
-- ARGV[1] sid, ARGV[2] meta JSON, ARGV[3] index lifetime (ms, the refresh token lifetime),
-- ARGV[4] the most sessions a user keeps
-- Sessions unused for that long are dropped on the way; beyond the cap the oldest are dropped
-- and returned, for the caller to revoke. Returns {0, evicted sid…}, or {1} when the user is
-- blocked (nothing recorded).
if KEYS[3] then
  redis.call('HDEL', KEYS[3], ARGV[1])
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {1}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  local created, used = string.match(all[i + 1], '^(%d+) (%d+) ')
  if not used or now - tonumber(used) > ttl then
    redis.call('HDEL', KEYS[1], all[i])
  else
    live[#live + 1] = {tonumber(created), all[i]}
  end
end
local out = {0}
local excess = #live + 1 - tonumber(ARGV[4])
if excess > 0 then
  table.sort(live, function(a, b) return a[1] < b[1] end)
  for i = 1, excess do
    redis.call('HDEL', KEYS[1], live[i][2])
    out[#out + 1] = live[i][2]
  end
end
redis.call('HSET', KEYS[1], ARGV[1], now .. ' ' .. now .. ' ' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
return out
