-- KEYS: presence zset, presence data
-- ARGV: pubsub, client id, payload, ttl (ms), now (ms or ''), key lifetime (ms)
local p, pd = KEYS[1], KEYS[2]
local pubsub, client, payload = ARGV[1], ARGV[2], ARGV[3]
local now = now_ms(ARGV[5])
expire_presence(p, pd, pubsub, now)
local new = not redis.call('ZSCORE', p, client)
redis.call('ZADD', p, now + tonumber(ARGV[4]), client)
if new then
  local seq = redis.call('HINCRBY', pd, '#', 1)
  redis.call('HSET', pd, 'c' .. client, string.format('%012d', seq) .. payload)
  announce(pubsub, 'J', client, payload)
else
  local old = redis.call('HGET', pd, 'c' .. client) or string.format('%012d', 0)
  redis.call('HSET', pd, 'c' .. client, string.sub(old, 1, 12) .. payload)
end
-- Key expiry only collects what a vanished process left; scores decide liveness.
local keep = tonumber(ARGV[6])
if redis.call('PTTL', p) < keep then
  redis.call('PEXPIRE', p, keep)
  redis.call('PEXPIRE', pd, keep)
end
return new and 1 or 0
