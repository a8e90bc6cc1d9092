-- KEYS: presence zset, presence data
-- ARGV: pubsub, now (ms or '')
-- Returns the live entries as a flat list of field, value (fields are "c" .. client id).
local p, pd = KEYS[1], KEYS[2]
expire_presence(p, pd, ARGV[1], now_ms(ARGV[2]))
forget_empty_presence(p, pd)
return redis.call('HGETALL', pd)
