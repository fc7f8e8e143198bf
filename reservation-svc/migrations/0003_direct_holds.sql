-- Direct holds (HoldSlot / ReleaseSlot) live in the bookings table under an
-- id of their own: UUIDv5(DIRECT_HOLDS, hold_id), which never equals an
-- order id (UUIDv7), so no id a direct caller names reaches a saga's
-- booking (the same rule as inventory's direct reservations, ADR 0008).
ALTER TABLE bookings
    ADD COLUMN kind TEXT NOT NULL DEFAULT 'saga' CHECK (kind IN ('saga', 'direct')),
    ADD COLUMN hold_id UUID;
ALTER TABLE bookings
    ADD CONSTRAINT direct_bookings_name_their_hold CHECK ((kind = 'direct') = (hold_id IS NOT NULL));
