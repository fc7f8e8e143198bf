-- Rebuilds one SKU's counter from a Postgres snapshot taken under the SKU's
-- row lock, without trusting either side alone:
--   holds := (Redis holds - closed in Postgres - orphans) + reserved in Postgres
--   avail := on_hand - sold - sum(holds)
-- A hold both sides have counts with Postgres's quantity (Postgres recorded
-- it; a Redis hold of another size is corrected).
-- A Redis-only hold is a reservation in flight (kept) or, once older than the
-- grace period, an orphan (dropped). A Postgres hold whose marker says it was
-- released is not brought back; one marked committed is (until Postgres says
-- so, its units are not in `sold` yet).
--
-- The epoch fences holds granted by this counter: Postgres records a hold
-- only if its epoch is still the counter's. The epoch moves on (to
-- next_epoch) when grants may have been lost or may be wrong: the counter
-- was missing, its epoch differs from Postgres's, or an orphan was dropped.
-- A rebuild that only corrects the count keeps it, so holds in flight stay
-- valid.
-- KEYS: [1] the SKU's hash: '~avail', '~epoch', and one field per hold
-- ARGV: pg_epoch, next_epoch, on_hand, sold, now_ms, grace_ms (-1: keep all),
--       marker_prefix, n_reserved, order_1, qty_1, ..., n_closed, order_1, ...
-- Returns {"OK", avail, removed, added, had_counter (0/1), previous_avail,
--          orphans, epoch_moved (0/1), resized}
local pg_epoch = ARGV[1]
local next_epoch = ARGV[2]
local on_hand = tonumber(ARGV[3])
local sold = tonumber(ARGV[4])
local now = tonumber(ARGV[5])
local grace = tonumber(ARGV[6])
local marker_prefix = ARGV[7]
local idx = 8
local reserved = {}
local nr = tonumber(ARGV[idx]); idx = idx + 1
for _ = 1, nr do
  reserved[ARGV[idx]] = ARGV[idx + 1]
  idx = idx + 2
end
local closed = {}
local nc = tonumber(ARGV[idx]); idx = idx + 1
for _ = 1, nc do
  closed[ARGV[idx]] = true
  idx = idx + 1
end

local drop = {}
local add = {}
local resize = {}
local orphans = 0
local held = 0
local current = redis.call('HGETALL', KEYS[1])
local present = {}
local previous, epoch = nil, nil
for i = 1, #current, 2 do
  local field, value = current[i], current[i + 1]
  if field == '~avail' then
    previous = tonumber(value)
  elseif field == '~epoch' then
    epoch = value
  else
    local order = field
    present[order] = true
    local qty = tonumber(string.match(value, '^(%-?%d+)')) or 0
    local granted = tonumber(string.match(value, ':(%d+)$')) or 0
    if closed[order] then
      drop[#drop + 1] = order
    elseif not reserved[order] and grace >= 0 and now - granted > grace then
      drop[#drop + 1] = order
      orphans = orphans + 1
    elseif reserved[order] and tonumber(reserved[order]) ~= qty then
      resize[#resize + 1] = {order, reserved[order] .. ':' .. granted}
      held = held + tonumber(reserved[order])
    else
      held = held + qty
    end
  end
end
for order, qty in pairs(reserved) do
  if not present[order] and redis.call('GET', marker_prefix .. order) ~= 'R' then
    add[#add + 1] = order
    held = held + tonumber(qty)
  end
end
local avail = on_hand - sold - held
for _, order in ipairs(drop) do
  redis.call('HDEL', KEYS[1], order)
end
for _, order in ipairs(add) do
  redis.call('HSET', KEYS[1], order, reserved[order] .. ':' .. now)
end
for _, r in ipairs(resize) do
  redis.call('HSET', KEYS[1], r[1], r[2])
end
local moved = 0
if previous == nil or epoch ~= pg_epoch or orphans > 0 then
  epoch = next_epoch
  moved = 1
end
redis.call('HSET', KEYS[1], '~avail', avail, '~epoch', epoch)
if previous then
  return {'OK', avail, #drop, #add, 1, previous, orphans, moved, #resize}
end
return {'OK', avail, #drop, #add, 0, 0, orphans, moved, #resize}
