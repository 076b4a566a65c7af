-- Delivery receipts of one message a provider accepted.
-- KEYS[1] the message's hash (r = the record the domain wrote, s = its last status,
-- f = 1 once its fallback was claimed; e = the status of a receipt that came before r)
-- ARGV[1] 'put' or 'note'
-- put:  ARGV[2] record, ARGV[3] lifetime (ms). Returns the early status (now s) or false.
-- note: ARGV[2] status, ARGV[3] 1 to claim the fallback (once per message), ARGV[4] how long
--       (ms, 0 = not) to keep the status of a message not recorded yet. The TTL stays.
--       Returns false for an unknown (or expired) message, else {record, 1 when claimed now}.
if ARGV[1] == 'put' then
  local early = redis.call('HGET', KEYS[1], 'e')
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'r', ARGV[2])
  if early then
    redis.call('HSET', KEYS[1], 's', early)
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return early
end
local record = redis.call('HGET', KEYS[1], 'r')
if not record then
  local keep = tonumber(ARGV[4]) or 0
  if keep > 0 then
    redis.call('HSET', KEYS[1], 'e', ARGV[2])
    redis.call('PEXPIRE', KEYS[1], keep)
  end
  return false
end
redis.call('HSET', KEYS[1], 's', ARGV[2])
local claimed = 0
if ARGV[3] == '1' and redis.call('HSETNX', KEYS[1], 'f', 1) == 1 then
  claimed = 1
end
return {record, claimed}
