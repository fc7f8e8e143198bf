-- Direct reservations (ReserveStock) answer a retry with the same decision,
-- so a rejection keeps the SKU it was about.
ALTER TABLE order_holds ADD COLUMN rejected_sku TEXT;
