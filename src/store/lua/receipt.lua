-- Delivery receipts of one message a provider accepted.
-- KEYS[1] the message's hash (r = the record the domain wrote, s = its last status,
-- f = 1 once its fallback was claimed)
-- ARGV[1] 'put' or 'note'
-- put:  ARGV[2] record, ARGV[3] lifetime (ms). Returns 1.
-- note: ARGV[2] status, ARGV[3] 1 to claim the fallback (once per message). The TTL stays.
--       Returns false for an unknown (or expired) message, else {record, 1 when claimed now}.
if ARGV[1] == 'put' then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'r', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
local record = redis.call('HGET', KEYS[1], 'r')
if not record then
  return false
end
redis.call('HSET', KEYS[1], 's', ARGV[2])
local claimed = 0
if ARGV[3] == '1' and redis.call('HSETNX', KEYS[1], 'f', 1) == 1 then
  claimed = 1
end
return {record, claimed}
