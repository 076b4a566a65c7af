-- Poll a login intent: a bound intent is claimed here, so exactly one poll gets it. It stays
-- (claimed) until it expires, so later polls learn it was consumed.
-- KEYS[1] the intent; ARGV[1] hash of the presented poll token.
-- Returns {'pending'}, {'claimed', channel, sender}, {'consumed'}, {'missing'} or
-- {'forbidden'} (wrong poll token; nothing changed).
local v = redis.call('HMGET', KEYS[1], 'p', 'c', 's', 'u')
if not v[1] then
  return {'missing'}
end
if not ct_equal(v[1], ARGV[1]) then
  return {'forbidden'}
end
if v[3] == 'pending' then
  return {'pending'}
end
if v[3] == 'bound' then
  redis.call('HSET', KEYS[1], 's', 'claimed')
  return {'claimed', v[2], v[4]}
end
return {'consumed'}
