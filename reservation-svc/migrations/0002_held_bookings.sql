-- Places still HELD: what the repair loop looks at (docs/adr/0011).
CREATE INDEX bookings_held ON bookings (order_id) WHERE state = 'HELD';
