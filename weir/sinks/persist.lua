-- persist.lua: append one batch of one partition and advance its cursor, atomically.
--
-- Idempotent: an event is appended only if its position is above the stored cursor, so replaying
-- a batch (after a crash, a timeout with an unknown outcome, a restart) writes nothing twice.
-- A Lua runtime error does not undo the writes before it, so everything that could make a write
-- fail is checked before the first write, and XADD is only called with an id above the stream's
-- last id.
--
-- KEYS: events stream, cursor hash, dead-letter stream (one hash tag: one cluster slot).
-- ARGV (built by weir/sinks/redis_sink.py, layout version 2):
--   1 through       highest source position the batch covers (decimal, no leading zeros)
--   2 token         source resume state stored beside the cursor
--   3 maxlen        "" for no trimming, else approximate MAXLEN of the events stream
--   4 expect        "" or a cursor the writer knows was stored: a stored cursor below it (or none)
--                   means Redis lost acknowledged writes, and the batch is refused (WEIRBEHIND)
--   5 E             number of events, then per event:
--       position, stream id "<position>-<sub>", N, then N field/value arguments
--   next D          number of dead letters, then per dead letter:
--       position (or ""), reason, data, received
-- Returns {appended, skipped, dead_appended, cursor, stale}; cursor is a decimal string;
-- stale counts events skipped because their id was not above the stream's last id although
-- above the cursor (the cursor key was lost, or events came out of order); they are in skipped.

-- Positions are uint64 and Lua numbers are doubles (exact below 2^53): never convert a whole
-- position. Decimal strings without leading zeros order by length first; equal lengths compare in
-- two parts of at most 15 digits each (10^15 < 2^53, so tonumber is exact there), which also
-- avoids the locale-dependent string comparison of Lua.
local function gt(a, b)
  local la, lb = #a, #b
  if la ~= lb then
    return la > lb
  end
  if la <= 15 then
    return tonumber(a) > tonumber(b)
  end
  local ha, hb = tonumber(string.sub(a, 1, la - 15)), tonumber(string.sub(b, 1, lb - 15))
  if ha ~= hb then
    return ha > hb
  end
  return tonumber(string.sub(a, -15)) > tonumber(string.sub(b, -15))
end

local function is_uint(s)
  return type(s) == 'string' and #s <= 20 and (s == '0' or string.match(s, '^[1-9]%d*$') ~= nil)
end

local events_key, cursor_key, dead_key = KEYS[1], KEYS[2], KEYS[3]
local through, token, maxlen, expect = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

-- Checks that can fail: all before the first write.
if not is_uint(through) then
  return redis.error_reply('ERR weir persist: bad through position ' .. tostring(through))
end
if expect ~= '' and not is_uint(expect) then
  return redis.error_reply('ERR weir persist: bad expected cursor ' .. tostring(expect))
end
for _, pair in ipairs({{events_key, 'stream'}, {cursor_key, 'hash'}, {dead_key, 'stream'}}) do
  local kind = redis.call('TYPE', pair[1])['ok']
  if kind ~= 'none' and kind ~= pair[2] then
    return redis.error_reply('WRONGTYPE weir persist: ' .. pair[1] .. ' is a ' .. kind ..
      ', expected a ' .. pair[2])
  end
end
local cursor = redis.call('HGET', cursor_key, 'position')
if cursor and not is_uint(cursor) then
  return redis.error_reply('ERR weir persist: ' .. cursor_key .. ' has a bad position ' .. cursor)
end
-- The stored cursor only ever grows, so one below what this writer saw stored means Redis went
-- back in time (a restart that lost its last writes, a failover to a lagging replica, keys reset).
-- Writing on would move the cursor over the lost events for good; the writer must replay instead.
if expect ~= '' and (not cursor or gt(expect, cursor)) then
  return redis.error_reply('WEIRBEHIND ' .. (cursor or '-') .. ' ' .. expect)
end

-- The stream's last generated id (not its last entry: an XDEL'd top id cannot be reused).
local top_ms, top_seq = '0', '0'
if redis.call('EXISTS', events_key) == 1 then
  local info = redis.call('XINFO', 'STREAM', events_key)
  for j = 1, #info, 2 do
    if info[j] == 'last-generated-id' then
      top_ms, top_seq = string.match(info[j + 1], '^(%d+)-(%d+)$')
      break
    end
  end
end

local appended, skipped, stale, dead_appended = 0, 0, 0, 0
local i = 6
for _ = 1, tonumber(ARGV[5]) do
  local position, id, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local first = i + 3
  i = first + n
  if cursor and not gt(position, cursor) then
    skipped = skipped + 1
  else
    local sub = string.sub(id, #position + 2)
    local above_top
    if position == top_ms then
      above_top = gt(sub, top_seq)
    else
      above_top = gt(position, top_ms)
    end
    if not above_top then
      skipped = skipped + 1
      stale = stale + 1
    else
      -- the fields straight from ARGV: no copy into a table per event
      if maxlen == '' then
        redis.call('XADD', events_key, id, unpack(ARGV, first, first + n - 1))
      else
        redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, id, unpack(ARGV, first, first + n - 1))
      end
      top_ms, top_seq = position, sub
      appended = appended + 1
    end
  end
end

for _ = 1, tonumber(ARGV[i]) do
  local position = ARGV[i + 1]
  if position == '' or not cursor or gt(position, cursor) then
    redis.call('XADD', dead_key, '*', 'reason', ARGV[i + 2], 'data', ARGV[i + 3],
      'position', position, 'received', ARGV[i + 4])
    dead_appended = dead_appended + 1
  end
  i = i + 4
end

local new_cursor = cursor
if not cursor or gt(through, cursor) then
  new_cursor = through
end
if new_cursor ~= cursor or appended > 0 or dead_appended > 0 then
  local now = redis.call('TIME')
  local updated_ms = now[1] .. string.format('%03d', math.floor(tonumber(now[2]) / 1000))
  redis.call('HSET', cursor_key, 'position', new_cursor, 'updated_ms', updated_ms)
  if new_cursor ~= cursor then
    redis.call('HSET', cursor_key, 'token', token)
  end
  redis.call('HINCRBY', cursor_key, 'events', appended)
  redis.call('HINCRBY', cursor_key, 'dead', dead_appended)
end

return {appended, skipped, dead_appended, new_cursor, stale}
