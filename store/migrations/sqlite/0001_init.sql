-- Herald's store schema (SQLite, embedded in standalone).

CREATE TABLE herald_grants (
    subject       TEXT    NOT NULL,
    pattern       TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (subject, pattern)
);

CREATE TABLE herald_notifications (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       TEXT    NOT NULL,
    event         TEXT    NOT NULL,
    data          TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    read_at_ms    INTEGER
);
CREATE INDEX herald_notifications_by_user ON herald_notifications (user_id, id DESC);

CREATE TABLE herald_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    room            TEXT NOT NULL,
    event           TEXT NOT NULL,
    data            TEXT NOT NULL,
    idempotency_key TEXT,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    published_at    TEXT
);
CREATE INDEX herald_outbox_pending ON herald_outbox (id) WHERE published_at IS NULL;
