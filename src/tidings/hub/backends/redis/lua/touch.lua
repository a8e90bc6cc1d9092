-- KEYS: meta, index
-- ARGV: channel, meta ttl (ms), now (ms or '')
-- Keeps a watched channel's epoch alive while it has no publishes; creates nothing.
local meta, index = KEYS[1], KEYS[2]
local ttl = tonumber(ARGV[2])
if redis.call('PTTL', meta) >= 0 and redis.call('PTTL', meta) < ttl then
  redis.call('PEXPIRE', meta, ttl)
  redis.call('ZADD', index, now_ms(ARGV[3]) + ttl, ARGV[1])
  return 1
end
return 0
