-- KEYS: index
-- ARGV: now (ms or '')
-- Returns the channels whose meta has not expired.
local now = now_ms(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
