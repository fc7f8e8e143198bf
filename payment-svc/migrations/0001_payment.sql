-- Wallets, one payment per order, and the ledger of every money movement.
CREATE TABLE wallets (
    customer_id     TEXT PRIMARY KEY,
    balance_cents   BIGINT      NOT NULL CHECK (balance_cents >= 0),
    topped_up_cents BIGINT      NOT NULL DEFAULT 0,
    charged_cents   BIGINT      NOT NULL DEFAULT 0,
    refunded_cents  BIGINT      NOT NULL DEFAULT 0,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Wallet conservation: nothing appears or vanishes.
    CONSTRAINT wallet_is_conserved
        CHECK (balance_cents = topped_up_cents - charged_cents + refunded_cents)
);

-- One payment per order. A VOIDED row written before any charge is a
-- tombstone: the order was cancelled first, and a late charge is refused.
CREATE TABLE payments (
    order_id       UUID PRIMARY KEY,
    payment_id     UUID        NOT NULL UNIQUE,
    customer_id    TEXT        NOT NULL,
    amount_cents   BIGINT      NOT NULL CHECK (amount_cents >= 0),
    state          TEXT        NOT NULL CHECK (state IN ('PENDING', 'CAPTURED', 'FAILED', 'REFUNDED', 'VOIDED')),
    failure_reason TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX payments_by_customer ON payments (customer_id);

CREATE TABLE wallet_ledger (
    id           BIGSERIAL PRIMARY KEY,
    customer_id  TEXT        NOT NULL REFERENCES wallets (customer_id),
    order_id     UUID,
    kind         TEXT        NOT NULL CHECK (kind IN ('TOPUP', 'CHARGE', 'REFUND')),
    amount_cents BIGINT      NOT NULL CHECK (amount_cents > 0),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX wallet_ledger_by_customer ON wallet_ledger (customer_id, id);
-- At most one capture and one refund per order.
CREATE UNIQUE INDEX one_charge_per_order ON wallet_ledger (order_id) WHERE kind = 'CHARGE';
CREATE UNIQUE INDEX one_refund_per_order ON wallet_ledger (order_id) WHERE kind = 'REFUND';
