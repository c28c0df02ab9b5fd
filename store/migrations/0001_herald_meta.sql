-- Herald's own bookkeeping: one row per key (schema notes, node facts).
CREATE TABLE IF NOT EXISTS herald_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
