-- Herald's store schema (PostgreSQL).

-- Room access granted through the API: a subject ('user:<id>' or
-- 'role:<name>') may join rooms matching a pattern.
CREATE TABLE herald_grants (
    subject       TEXT   NOT NULL,
    pattern       TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (subject, pattern)
);

-- Durable per-user notifications. `data` keeps the JSON text exactly as
-- the application sent it.
CREATE TABLE herald_notifications (
    id            BIGSERIAL PRIMARY KEY,
    user_id       TEXT   NOT NULL,
    event         TEXT   NOT NULL,
    data          TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL,
    read_at_ms    BIGINT
);
CREATE INDEX herald_notifications_by_user ON herald_notifications (user_id, id DESC);

-- The transactional outbox: applications insert rows in their own
-- transactions; the API tier publishes each committed row exactly once.
CREATE TABLE herald_outbox (
    id              BIGSERIAL PRIMARY KEY,
    room            TEXT NOT NULL,
    event           TEXT NOT NULL,
    data            JSONB NOT NULL,
    idempotency_key TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at    TIMESTAMPTZ
);
CREATE INDEX herald_outbox_pending ON herald_outbox (id) WHERE published_at IS NULL;

-- Wake the relay as soon as a row commits (polling remains the fallback).
CREATE FUNCTION herald_outbox_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('herald_outbox', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER herald_outbox_notify AFTER INSERT ON herald_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION herald_outbox_notify();
