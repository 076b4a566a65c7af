-- Give a claimed intent back to the bound state (its session could not be opened).
-- KEYS[1] the intent. Returns 1 when it was claimed, else 0.
if redis.call('HGET', KEYS[1], 's') == 'claimed' then
  redis.call('HSET', KEYS[1], 's', 'bound')
  return 1
end
return 0
