-- The catalog and its stock. Postgres is the source of truth; Redis holds a
-- derived counter per SKU (see src/cache.rs).
CREATE TABLE products (
    sku              TEXT PRIMARY KEY,
    name             TEXT        NOT NULL,
    unit_price_cents BIGINT      NOT NULL CHECK (unit_price_cents >= 0),
    -- Units ever stocked and not removed: on_hand = available + reserved + sold.
    on_hand          BIGINT      NOT NULL DEFAULT 0 CHECK (on_hand >= 0),
    reserved         BIGINT      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold             BIGINT      NOT NULL DEFAULT 0 CHECK (sold >= 0),
    -- Optimistic-locking version, bumped by every change of name, price or on_hand.
    version          BIGINT      NOT NULL DEFAULT 1,
    -- Fencing token of the Redis counter: bumped each time the counter is
    -- rebuilt, so a hold granted by an older counter is not recorded.
    redis_epoch      BIGINT      NOT NULL DEFAULT 0,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT stock_is_conserved CHECK (reserved + sold <= on_hand)
);

-- Per order: what inventory decided. A RELEASED row without holds is a
-- tombstone: the cancellation came first, and a late placement is refused.
CREATE TABLE order_holds (
    order_id   UUID PRIMARY KEY,
    state      TEXT        NOT NULL CHECK (state IN ('RESERVED', 'COMMITTED', 'RELEASED', 'REJECTED')),
    reason     TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The ledger of holds: one row per order and SKU.
CREATE TABLE holds (
    order_id         UUID        NOT NULL REFERENCES order_holds (order_id),
    sku              TEXT        NOT NULL REFERENCES products (sku),
    quantity         BIGINT      NOT NULL CHECK (quantity > 0),
    unit_price_cents BIGINT      NOT NULL CHECK (unit_price_cents >= 0),
    state            TEXT        NOT NULL CHECK (state IN ('RESERVED', 'COMMITTED', 'RELEASED')),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, sku)
);
CREATE INDEX holds_reserved_by_sku ON holds (sku) WHERE state = 'RESERVED';
CREATE INDEX holds_by_sku_updated ON holds (sku, updated_at);
