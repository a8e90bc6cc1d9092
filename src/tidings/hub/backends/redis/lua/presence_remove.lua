-- KEYS: presence zset, presence data
-- ARGV: pubsub, client id, now (ms or '')
local p, pd = KEYS[1], KEYS[2]
local pubsub, client = ARGV[1], ARGV[2]
expire_presence(p, pd, pubsub, now_ms(ARGV[3]))
local removed = redis.call('ZREM', p, client)
if removed == 1 then
  local value = redis.call('HGET', pd, 'c' .. client)
  redis.call('HDEL', pd, 'c' .. client)
  if value then
    announce(pubsub, 'L', client, string.sub(value, 13))
  end
end
forget_empty_presence(p, pd)
return removed
