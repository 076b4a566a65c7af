-- Record a new session in its user's session index.
-- KEYS[1] the index (a hash: sid -> "<created ms> <last used ms> <meta JSON>")
-- ARGV[1] sid, ARGV[2] meta JSON, ARGV[3] index lifetime (ms, the refresh token lifetime)
-- Sessions unused for that long are dropped on the way. Returns the time recorded (ms).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local used = tonumber(string.match(all[i + 1], '^%d+ (%d+) '))
  if not used or now - used > ttl then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
redis.call('HSET', KEYS[1], ARGV[1], now .. ' ' .. now .. ' ' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
return now
