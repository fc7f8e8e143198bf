-- Slots and the bookings orders hold in them.
CREATE TABLE slots (
    id         UUID PRIMARY KEY,
    name       TEXT        NOT NULL,
    capacity   INT         NOT NULL CHECK (capacity > 0),
    -- Places held by orders in flight, and taken by confirmed orders.
    held       INT         NOT NULL DEFAULT 0 CHECK (held >= 0),
    confirmed  INT         NOT NULL DEFAULT 0 CHECK (confirmed >= 0),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The fence: whatever the lock did, a slot is never overbooked.
    CONSTRAINT slot_is_not_overbooked CHECK (held + confirmed <= capacity)
);

-- One booking per order. A RELEASED row for an order whose placement was not
-- seen yet is a tombstone: the late placement holds nothing.
CREATE TABLE bookings (
    order_id   UUID PRIMARY KEY,
    slot_id    UUID,
    state      TEXT        NOT NULL CHECK (state IN ('HELD', 'CONFIRMED', 'RELEASED', 'REJECTED')),
    reason     TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX bookings_by_slot ON bookings (slot_id, state);
