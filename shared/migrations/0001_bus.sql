-- Tables every service keeps in its own schema: the transactional outbox, the
-- inbox of processed events, and durable idempotency keys.

CREATE TABLE outbox (
    id             BIGSERIAL PRIMARY KEY,
    event_id       UUID        NOT NULL UNIQUE,
    event_type     TEXT        NOT NULL,
    payload        BYTEA       NOT NULL,
    correlation_id UUID,
    causation_id   UUID,
    traceparent    TEXT,
    tracestate     TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    claimed_until  TIMESTAMPTZ,
    attempts       INT         NOT NULL DEFAULT 0,
    last_error     TEXT,
    published_at   TIMESTAMPTZ
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;

CREATE TABLE processed_events (
    consumer     TEXT        NOT NULL,
    event_id     UUID        NOT NULL,
    event_type   TEXT        NOT NULL,
    stream       TEXT        NOT NULL,
    stream_seq   BIGINT      NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX processed_events_position ON processed_events (stream, stream_seq);
CREATE INDEX processed_events_age ON processed_events (processed_at);

CREATE TABLE idempotency_keys (
    scope        TEXT        NOT NULL,
    key          TEXT        NOT NULL,
    request_hash BYTEA       NOT NULL,
    response     BYTEA,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
