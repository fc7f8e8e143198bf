-- Holds every line of an order, or none. Idempotent per order.
-- KEYS, two per line i (both with the line's SKU hash tag):
--   [2i-1] the SKU's hash: '~avail', '~epoch', and one field per hold
--          (order id -> "qty:granted_ms")
--   [2i]   marker of this order ("R" released, "C" committed)
-- ARGV: order_id, now_ms, qty_1 .. qty_n
-- Returns {"GRANTED", epoch_1..epoch_n, fresh_1..fresh_n} (fresh_i: 1 if
--         this call took line i's hold, 0 if the order held it already)
--       | {"REJECTED", i, avail, epoch}: line i has only `avail` units by a
--         counter of `epoch` (stale if Postgres's epoch has moved since)
--       | {"NOT_READY", i} | {"CLOSED", i, marker}
--       | {"MISMATCH", i, held}: the order already holds `held` units of line
--         i, another quantity than asked (a retry with other lines); nothing
--         changes.
local order = ARGV[1]
local now = ARGV[2]
local n = #KEYS / 2
local avail, epoch, held = {}, {}, {}
for i = 1, n do
  local sku = redis.call('HMGET', KEYS[2 * i - 1], '~avail', '~epoch', order)
  if not sku[1] then
    return {'NOT_READY', i}
  end
  local marker = redis.call('GET', KEYS[2 * i])
  if marker then
    return {'CLOSED', i, marker}
  end
  avail[i] = tonumber(sku[1])
  epoch[i] = tonumber(sku[2])
  held[i] = sku[3]
  if held[i] then
    local qty = tonumber(string.match(held[i], '^(%-?%d+)'))
    if qty ~= tonumber(ARGV[2 + i]) then
      return {'MISMATCH', i, qty}
    end
  end
end
for i = 1, n do
  if not held[i] and avail[i] < tonumber(ARGV[2 + i]) then
    return {'REJECTED', i, avail[i], epoch[i]}
  end
end
for i = 1, n do
  if not held[i] then
    local qty = tonumber(ARGV[2 + i])
    redis.call('HSET', KEYS[2 * i - 1], '~avail', avail[i] - qty, order, qty .. ':' .. now)
  end
end
local out = {'GRANTED'}
for i = 1, n do
  out[#out + 1] = epoch[i]
end
for i = 1, n do
  out[#out + 1] = held[i] and 0 or 1
end
return out
