-- KEYS: meta, stream, index
-- ARGV: channel, since epoch ('' = newest events), since offset, limit (-1 = all),
--       history ttl (ms), meta ttl (ms), now (ms or ''), fresh epoch
-- Returns {epoch, offset, reset reason or '', entries}; without since, the
-- entries are newest first.
local meta, stream, index = KEYS[1], KEYS[2], KEYS[3]
local now = now_ms(ARGV[7])
local epoch, offset = channel_meta(meta, stream, index, ARGV[1], ARGV[8], now, tonumber(ARGV[6]))
expire_stream(meta, stream, now - tonumber(ARGV[5]))
local limit = tonumber(ARGV[4])
if ARGV[2] == '' then
  if limit == 0 then
    return {epoch, offset, '', {}}
  elseif limit < 0 then
    return {epoch, offset, '', redis.call('XREVRANGE', stream, '+', '-')}
  end
  return {epoch, offset, '', redis.call('XREVRANGE', stream, '+', '-', 'COUNT', limit)}
end
local since = tonumber(ARGV[3])
if ARGV[2] ~= epoch then
  return {epoch, offset, 'epoch', {}}
elseif since > offset then
  return {epoch, offset, 'window', {}}  -- ahead of the channel: not a position we gave out
elseif since == offset then
  return {epoch, offset, '', {}}
end
local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
if #first == 0 or id_offset(first[1][1]) > since + 1 then
  return {epoch, offset, 'window', {}}
elseif limit == 0 then
  return {epoch, offset, '', {}}
end
if limit < 0 then
  return {epoch, offset, '', redis.call('XRANGE', stream, (since + 1) .. '-0', '+')}
end
return {epoch, offset, '', redis.call('XRANGE', stream, (since + 1) .. '-0', '+', 'COUNT', limit)}
