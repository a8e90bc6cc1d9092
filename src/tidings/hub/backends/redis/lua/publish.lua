-- KEYS: meta, stream, index[, idempotency key]
-- ARGV: channel, pubsub, data, type, is_text (0/1), history size, history ttl (ms),
--       meta ttl (ms), now (ms or ''), fresh epoch, idempotency window (ms),
--       history max bytes
-- Returns {1, "<epoch> <offset>"} for a new event, {0, ...} for a repeated key.
local meta, stream, index, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local channel, pubsub, data, etype, is_text = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local size, ttl, meta_ttl = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local now = now_ms(ARGV[9])
if idem then
  local seen = redis.call('GET', idem)
  if seen then
    return {0, seen}
  end
end
local epoch, offset = channel_meta(meta, stream, index, channel, ARGV[10], now, meta_ttl)
offset = offset + 1
-- XADD first: if it fails, nothing else has changed.
local max_bytes = tonumber(ARGV[12])
if size > 0 then
  if redis.call('EXISTS', stream) == 0 then
    redis.call('HSET', meta, 'b', 0)  -- the stream expired: nothing is counted any more
  end
  redis.call('XADD', stream, offset .. '-0', 't', now, 'y', etype, 'x', is_text, 'd', data)
  redis.call('HINCRBY', meta, 'b', #data + ENTRY_OVERHEAD)
  expire_stream(meta, stream, now - ttl)
  trim_stream(meta, stream, size, max_bytes)
  redis.call('PEXPIRE', stream, ttl)
end
redis.call('HSET', meta, 'o', offset, 't', ttl)
redis.call('PEXPIRE', meta, math.max(meta_ttl, ttl))
redis.call('ZADD', index, now + math.max(meta_ttl, ttl), channel)
local position = epoch .. ' ' .. offset
if idem then
  redis.call('SET', idem, position, 'PX', tonumber(ARGV[11]), 'NX')
end
redis.call('PUBLISH', pubsub,
  'E' .. epoch .. ' ' .. offset .. ' ' .. now .. ' ' .. etype .. ' ' .. is_text .. '\n' .. data)
return {1, position}
