-- Orders and their lines.
CREATE TABLE orders (
    id            UUID PRIMARY KEY,
    customer_id   TEXT        NOT NULL,
    state         TEXT        NOT NULL CHECK (state IN ('PENDING', 'RESERVED', 'CONFIRMED', 'CANCELLED')),
    cancel_reason TEXT CHECK (cancel_reason IN ('out_of_stock', 'slot_unavailable', 'payment_declined',
                                                 'insufficient_funds', 'timeout', 'customer_cancelled')),
    slot_id       UUID,
    -- Where each participant stands for this order.
    inventory     TEXT        NOT NULL CHECK (inventory IN ('PENDING', 'RESERVED', 'REJECTED')),
    slot          TEXT        NOT NULL CHECK (slot IN ('NONE', 'PENDING', 'HELD', 'REJECTED')),
    payment       TEXT        NOT NULL CHECK (payment IN ('NONE', 'CAPTURED', 'FAILED')),
    total_cents   BIGINT CHECK (total_cents >= 0),
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    deadline_at   TIMESTAMPTZ NOT NULL,
    CONSTRAINT cancelled_has_reason CHECK ((state = 'CANCELLED') = (cancel_reason IS NOT NULL))
);
CREATE INDEX orders_by_customer ON orders (customer_id, id DESC);
CREATE INDEX orders_by_state ON orders (state, id DESC);
CREATE INDEX orders_open_by_deadline ON orders (deadline_at) WHERE state IN ('PENDING', 'RESERVED');

CREATE TABLE order_lines (
    order_id         UUID   NOT NULL REFERENCES orders (id),
    line_no          INT    NOT NULL,
    sku              TEXT   NOT NULL,
    quantity         BIGINT NOT NULL CHECK (quantity > 0),
    -- Set when inventory holds the stock, at its price of that moment.
    unit_price_cents BIGINT CHECK (unit_price_cents >= 0),
    PRIMARY KEY (order_id, line_no)
);
