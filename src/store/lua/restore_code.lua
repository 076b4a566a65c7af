-- Undo the spend of a code that verify_code accepted for a login that could not finish (the
-- database failed after the code check): only while it is still the phone's code, marked spent
-- (issue_code replaces the whole hash, so a newer code, used or not, is never undone). The key
-- keeps its TTL: the code expires when it always would have.
-- KEYS[1] the code hash
-- ARGV[1] HMAC of the code
-- Returns 1 when the code works again, 0 otherwise.
local stored = redis.call('HMGET', KEYS[1], 'h', 's')
if stored[1] == ARGV[1] and stored[2] then
  redis.call('HDEL', KEYS[1], 's')
  return 1
end
return 0
