-- Shared by every Tidings script; each script is this file followed by its body.
--
-- Keys of a channel C under prefix P (braces make them one cluster slot):
--   P{C}:m   hash    e = epoch, o = last offset, t = history TTL (ms),
--                    b = bytes of the stream's entries (data + ENTRY_OVERHEAD each)
--   P{C}:s   stream  entries "<offset>-0" with fields t (ms), y (type), x (1 = text), d (data)
--   P{C}:k:K string  "<epoch> <offset>" of the publish with idempotency key K
--   P{C}:p   zset    client id -> expiry time (ms)
--   P{C}:pd  hash    "c" .. client id -> 12-digit join sequence .. payload; "#" -> sequence
--   Pchannels zset   channel -> time (ms) its meta hash expires
-- Pub/Sub channel P{C} carries "E<epoch> <offset> <ms> <type> <x>\n<data>",
-- "J<n> <client id><payload>" (join) and "L<n> <client id><payload>" (leave).

local function now_ms(arg)
  if arg ~= '' then
    return tonumber(arg)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function id_offset(id)
  return tonumber(string.match(id, '^(%d+)'))
end

-- The channel's epoch and offset; a channel without meta (new, expired,
-- evicted, flushed) starts a fresh epoch and forgets any stream left over.
local function channel_meta(meta, stream, index, channel, fresh_epoch, now, meta_ttl)
  local m = redis.call('HMGET', meta, 'e', 'o')
  if m[1] then
    return m[1], tonumber(m[2])
  end
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', fresh_epoch, 'o', 0)
  redis.call('PEXPIRE', meta, meta_ttl)
  redis.call('ZADD', index, now + meta_ttl, channel)
  return fresh_epoch, 0
end

-- Bytes counted for a stream entry: its data plus a fixed share for the
-- entry itself (the memory backend counts the same).
local ENTRY_OVERHEAD = 128

local function entry_cost(entry)
  return #entry[2][8] + ENTRY_OVERHEAD  -- fields: t, time, y, type, x, is_text, d, data
end

-- Remove the entries up to id `last` and take `freed` off the meta hash's byte count.
local function drop_through(meta, stream, last, freed)
  if last then
    redis.call('XTRIM', stream, 'MINID', (id_offset(last) + 1) .. '-0')
    redis.call('HINCRBY', meta, 'b', -freed)
  end
end

-- Drop stream entries published before cutoff (ms); entries are in time order.
local function expire_stream(meta, stream, cutoff)
  local count = 1  -- usually the oldest entry is fresh: look at it alone first
  local start, last, freed = '-', nil, 0
  while true do
    local batch = redis.call('XRANGE', stream, start, '+', 'COUNT', count)
    if #batch == 0 then
      break
    end
    for _, entry in ipairs(batch) do
      if tonumber(entry[2][2]) >= cutoff then
        drop_through(meta, stream, last, freed)
        return
      end
      last, freed = entry[1], freed + entry_cost(entry)
    end
    start = (id_offset(last) + 1) .. '-0'
    count = 100
  end
  drop_through(meta, stream, last, freed)
end

-- Drop the oldest entries until at most `size` entries of at most `max_bytes`
-- bytes (meta field b) are left. Each entry is looked at once: O(1) amortised.
local function trim_stream(meta, stream, size, max_bytes)
  local count = redis.call('XLEN', stream)
  local bytes = tonumber(redis.call('HGET', meta, 'b') or '0')
  local start, last, freed = '-', nil, 0
  while count > 0 and (count > size or bytes - freed > max_bytes) do
    local want = math.max(1, math.min(100, count - size))
    local batch = redis.call('XRANGE', stream, start, '+', 'COUNT', want)
    if #batch == 0 then
      break
    end
    for _, entry in ipairs(batch) do
      if not (count > size or bytes - freed > max_bytes) then
        break
      end
      last, freed, count = entry[1], freed + entry_cost(entry), count - 1
    end
    start = (id_offset(last) + 1) .. '-0'
  end
  drop_through(meta, stream, last, freed)
end

local function announce(pubsub, kind, client, payload)
  redis.call('PUBLISH', pubsub, kind .. #client .. ' ' .. client .. payload)
end

-- Remove presence entries whose expiry has passed, announcing their leave.
local function expire_presence(p, pd, pubsub, now)
  local gone = redis.call('ZRANGEBYSCORE', p, '-inf', now)
  for _, client in ipairs(gone) do
    local value = redis.call('HGET', pd, 'c' .. client)
    redis.call('ZREM', p, client)
    redis.call('HDEL', pd, 'c' .. client)
    if value then
      announce(pubsub, 'L', client, string.sub(value, 13))
    end
  end
end

local function forget_empty_presence(p, pd)
  if redis.call('ZCARD', p) == 0 then
    redis.call('DEL', p, pd)
  end
end
