-- Store a pending login intent.
-- KEYS[1] the intent; ARGV[1] hash of its poll token, ARGV[2] channel, ARGV[3] lifetime (ms).
redis.call('HSET', KEYS[1], 'p', ARGV[1], 'c', ARGV[2], 's', 'pending')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 0
