-- Counter epochs come from one sequence. A value is never handed out twice,
-- not even by a transaction that rolls back after it wrote Redis, so Redis and
-- Postgres can agree on an epoch only if Postgres committed it (see
-- docs/adr/0009). Values start above anything the former `epoch + 1` scheme
-- could have produced, in Postgres or in Redis.
CREATE SEQUENCE redis_epochs;
SELECT setval('redis_epochs', COALESCE((SELECT max(redis_epoch) FROM products), 0) + 4294967296);

-- Whose holds a decision row is about: an order's saga, or a direct caller's
-- reservation (ReserveStock). Direct reservations live in their own id space:
-- their ledger id is derived from the caller's id (docs/adr/0008), and the
-- caller's id is kept beside it.
ALTER TABLE order_holds
    ADD COLUMN kind TEXT NOT NULL DEFAULT 'saga' CHECK (kind IN ('saga', 'direct')),
    ADD COLUMN reservation_id UUID,
    ADD CONSTRAINT direct_has_reservation_id CHECK ((kind = 'direct') = (reservation_id IS NOT NULL));
-- Open saga holds: what the repair loop looks at (docs/adr/0011).
CREATE INDEX order_holds_open_sagas ON order_holds (order_id) WHERE state = 'RESERVED' AND kind = 'saga';
