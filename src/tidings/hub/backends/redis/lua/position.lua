-- KEYS: meta, stream, index
-- ARGV: channel, meta ttl (ms), now (ms or ''), fresh epoch
-- Returns {epoch, offset, entries kept in history}.
local meta, stream, index = KEYS[1], KEYS[2], KEYS[3]
local now = now_ms(ARGV[3])
local epoch, offset = channel_meta(meta, stream, index, ARGV[1], ARGV[4], now, tonumber(ARGV[2]))
local ttl = tonumber(redis.call('HGET', meta, 't'))
if ttl then
  expire_stream(meta, stream, now - ttl)
end
return {epoch, offset, redis.call('XLEN', stream)}
