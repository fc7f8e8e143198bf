-- Per consumer and input stream, the sequence up to which every message is
-- accounted for (not for the consumer, or in its inbox): where a replay
-- --from-checkpoint starts. In the service's schema, so a backup carries it.
CREATE TABLE replay_checkpoints (
    consumer   TEXT        NOT NULL,
    stream     TEXT        NOT NULL,
    seq        BIGINT      NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, stream)
);
