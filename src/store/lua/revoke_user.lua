-- Revoke every session a user opened until now: set the cut-off, empty the session index.
-- KEYS[1] the user's session index, KEYS[2] the user's cut-off
-- ARGV[1] cut-off lifetime (ms, the longest token lifetime). Returns the cut-off (ms).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[2], now, 'PX', ARGV[1])
redis.call('DEL', KEYS[1])
return now
