-- Whether a session still stands against its user's cut-off, and (on a refresh) touch it.
-- KEYS[1] the user's session index (see put_session.lua), KEYS[2] the user's cut-off (ms)
-- ARGV[1] sid, ARGV[2] '1' to record a use now, ARGV[3] index lifetime (ms)
-- A session opened at or before the cut-off (or unknown to the index while a cut-off stands)
-- is revoked: returns 0. Otherwise 1.
local rec = redis.call('HGET', KEYS[1], ARGV[1])
local cutoff = redis.call('GET', KEYS[2])
if cutoff then
  if not rec then
    return 0
  end
  local created = tonumber(string.match(rec, '^(%d+) '))
  if not created or created <= tonumber(cutoff) then
    return 0
  end
end
if ARGV[2] == '1' and rec then
  local created, rest = string.match(rec, '^(%d+) %d+ (.*)$')
  if created then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('HSET', KEYS[1], ARGV[1], created .. ' ' .. now .. ' ' .. rest)
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  end
end
return 1
