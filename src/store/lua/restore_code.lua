-- Put back a code that verify_code spent for a login that could not finish (the database failed
-- after the code check), unless a new code was issued since: the newer one stays.
-- KEYS[1] the code hash
-- ARGV[1] HMAC of the code, ARGV[2] wrong attempts it had, ARGV[3] lifetime it had left (ms)
-- Returns 1 when put back, 0 when another code is live.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'h', ARGV[1], 'a', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
