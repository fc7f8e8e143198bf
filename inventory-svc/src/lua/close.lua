-- Ends an order's holds. Idempotent.
--   "R" release: the units become available again; a marker stops a late
--       placement and stops a rebuild from resurrecting the hold.
--   "C" commit: the units are sold (the counter does not change); a marker
--       lets a rebuild keep counting the hold until Postgres has sold it.
--   "X" revoke: give back a hold granted by a stale counter before it was
--       recorded anywhere (no marker: the order may reserve again).
-- KEYS, two per SKU: the SKU's hash ('~avail', '~epoch', holds), and the
-- marker of this order.
-- ARGV: order_id, kind, marker_ttl_ms
-- Returns the number of holds that were removed.
local order = ARGV[1]
local kind = ARGV[2]
local ttl = ARGV[3]
local n = #KEYS / 2
local removed = 0
for i = 1, n do
  local sku = redis.call('HMGET', KEYS[2 * i - 1], '~avail', order)
  if sku[2] then
    redis.call('HDEL', KEYS[2 * i - 1], order)
    removed = removed + 1
    if kind ~= 'C' and sku[1] then
      local qty = tonumber(string.match(sku[2], '^(%-?%d+)'))
      redis.call('HSET', KEYS[2 * i - 1], '~avail', tonumber(sku[1]) + qty)
    end
  end
  if kind ~= 'X' then
    redis.call('SET', KEYS[2 * i], kind, 'PX', ttl)
  end
end
return removed
