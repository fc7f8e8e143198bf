-- A saga's story (`sagactl saga show`, OrderService.GetOrderHistory): each
-- inbox row also keeps the event's order (correlation), its cause and when
-- the stream stored it, so the events a service applied for an order are
-- found by order; the outbox is found by order too. The position index was
-- never queried (checkpoints look events up by id): the order index takes
-- its place on the write path.
ALTER TABLE processed_events
    ADD COLUMN correlation_id UUID,
    ADD COLUMN causation_id   UUID,
    ADD COLUMN published_at   TIMESTAMPTZ;
DROP INDEX processed_events_position;
CREATE INDEX processed_events_correlation ON processed_events (correlation_id);
CREATE INDEX outbox_correlation ON outbox (correlation_id);
