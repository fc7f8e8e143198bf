-- Retention: the inbox, published outbox rows and idempotency keys are purged
-- once older than the configured retention (never shorter than the streams'
-- max_age). Per consumer and input stream, what the inbox has forgotten: the
-- highest stream sequence of a purged inbox row. A replay that starts at or
-- below it could apply an event a second time, so it is refused unless
-- forced. In the service's schema, so a backup carries it with its inbox.
CREATE TABLE inbox_horizon (
    consumer      TEXT        NOT NULL,
    stream        TEXT        NOT NULL,
    seq           BIGINT      NOT NULL,
    -- Rows processed before this time may have been purged.
    purged_before TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, stream)
);
CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);
