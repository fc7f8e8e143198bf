-- The namespace whose streams this schema's state belongs to: recorded by
-- the first service to start on the schema, checked by every later start,
-- so that two namespaces never share a schema (their relays would publish
-- each other's outbox, their sweeps act on each other's rows). One row.
CREATE TABLE namespace_claim (
    only_row   BOOLEAN     PRIMARY KEY DEFAULT true CHECK (only_row),
    namespace  TEXT        NOT NULL,
    claimed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
