-- A capture is final once its order is CONFIRMED; until payment has seen
-- that, the repair loop asks order-svc about it once and refunds it if the
-- order was CANCELLED (docs/adr/0011).
ALTER TABLE payments ADD COLUMN outcome_checked BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX payments_unchecked_captures ON payments (order_id)
    WHERE state = 'CAPTURED' AND NOT outcome_checked;
