-- Whether a session still stands against its user's cut-off and block mark, and (on a refresh)
-- touch it.
-- KEYS[1] the user's session index (see put_session.lua), KEYS[2] the user's cut-off (ms),
-- KEYS[3] the user's block mark
-- ARGV[1] sid, ARGV[2] '1' to record a use now, ARGV[3] index lifetime (ms)
-- A blocked user's sessions, and a session opened at or before the cut-off (or unknown to the
-- index while a cut-off stands), are revoked: returns 0. Otherwise 1. A refresh of a session
-- the index does not know (opened by an earlier version) adds it, so the list and "log out
-- other sessions" see it.
if redis.call('EXISTS', KEYS[3]) == 1 then
  return 0
end
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
if ARGV[2] == '1' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local created, rest = now, '{}'
  if rec then
    local c, r = string.match(rec, '^(%d+) %d+ (.*)$')
    if c then
      created, rest = c, r
    end
  end
  redis.call('HSET', KEYS[1], ARGV[1], created .. ' ' .. now .. ' ' .. rest)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
