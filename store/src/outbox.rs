//! The transactional outbox (`herald_outbox`): applications insert rows in
//! their own transactions; the API tier relays each committed row exactly
//! once, in `id` order.
//!
//! Order per room across several API replicas is kept by letting one relay
//! work at a time: a relay pass holds a transaction-scoped advisory lock
//! (PostgreSQL), claims the oldest unpublished rows `FOR UPDATE`, publishes
//! them in order and marks them in the same transaction. A crash between a
//! publish and the commit leaves the row unmarked; the next pass publishes it
//! again with the same idempotency key, which the broker deduplicates.

use std::future::Future;

use sqlx::Row;

use crate::{Pool, Store, StoreError};

/// The advisory lock key of the relay ("herald" in ASCII).
const RELAY_LOCK: i64 = 0x6865_7261_6c64;

/// The PostgreSQL notification channel fired by inserts.
pub const NOTIFY_CHANNEL: &str = "herald_outbox";

/// One unpublished outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    pub room: String,
    pub event: String,
    /// The row's `data` as JSON text.
    pub data: String,
    /// What deduplicates a relay that crashed between publishing and
    /// marking: `outbox:<the row's key>`, or `outbox:#<id>` for a row without
    /// one. The `outbox:` namespace never meets the API's keys.
    pub idempotency_key: String,
}

/// What one relay pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayPass {
    /// Rows published and marked.
    pub relayed: usize,
    /// Another relay held the lock; nothing was done.
    pub busy: bool,
}

fn outbox_row(id: i64, room: String, event: String, data: String, key: Option<String>) -> OutboxRow {
    OutboxRow {
        idempotency_key: match key {
            Some(key) => format!("outbox:{key}"),
            None => format!("outbox:#{id}"),
        },
        id,
        room,
        event,
        data,
    }
}

impl Store {
    /// Publishes up to `limit` unpublished rows, oldest first, with
    /// `publish`; stops at the first failure (later rows must not overtake
    /// it). Rows published are marked in the same transaction.
    pub async fn relay_outbox<F, Fut, E>(&self, limit: u32, mut publish: F) -> Result<RelayPass, StoreError>
    where
        F: FnMut(OutboxRow) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let mut pass = RelayPass::default();
        match &self.pool {
            Pool::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                    .bind(RELAY_LOCK)
                    .fetch_one(&mut *tx)
                    .await?;
                if !locked {
                    pass.busy = true;
                    return Ok(pass);
                }
                let rows = sqlx::query(
                    "SELECT id, room, event, data::text AS data, idempotency_key FROM herald_outbox \
                     WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE",
                )
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await?;
                for row in rows {
                    let row = outbox_row(
                        row.try_get("id")?,
                        row.try_get("room")?,
                        row.try_get("event")?,
                        row.try_get("data")?,
                        row.try_get("idempotency_key")?,
                    );
                    let id = row.id;
                    if let Err(e) = publish(row).await {
                        tracing::warn!(id, error = %e, "outbox publish failed; will retry");
                        break;
                    }
                    sqlx::query("UPDATE herald_outbox SET published_at = now() WHERE id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    pass.relayed += 1;
                }
                tx.commit().await?;
            }
            Pool::Sqlite(pool) => {
                // SQLite has one writer; a standalone node has one relay.
                let mut tx = pool.begin().await?;
                let rows: Vec<(i64, String, String, String, Option<String>)> = sqlx::query_as(
                    "SELECT id, room, event, data, idempotency_key FROM herald_outbox \
                     WHERE published_at IS NULL ORDER BY id LIMIT $1",
                )
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await?;
                for (id, room, event, data, key) in rows {
                    if let Err(e) = publish(outbox_row(id, room, event, data, key)).await {
                        tracing::warn!(id, error = %e, "outbox publish failed; will retry");
                        break;
                    }
                    sqlx::query(
                        "UPDATE herald_outbox SET published_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
                         WHERE id = $1",
                    )
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    pass.relayed += 1;
                }
                tx.commit().await?;
            }
        }
        Ok(pass)
    }

    /// Age in seconds of the oldest unpublished row (0 when none): the
    /// relay's lag.
    pub async fn outbox_lag_seconds(&self) -> Result<f64, StoreError> {
        let lag: Option<f64> = match &self.pool {
            Pool::Postgres(p) => {
                sqlx::query_scalar(
                    "SELECT EXTRACT(EPOCH FROM now() - min(created_at))::float8 FROM herald_outbox \
                     WHERE published_at IS NULL",
                )
                .fetch_one(p)
                .await?
            }
            Pool::Sqlite(p) => {
                sqlx::query_scalar(
                    "SELECT (julianday('now') - julianday(min(created_at))) * 86400.0 FROM herald_outbox \
                     WHERE published_at IS NULL",
                )
                .fetch_one(p)
                .await?
            }
        };
        Ok(lag.unwrap_or(0.0).max(0.0))
    }

    /// Waits for outbox inserts (PostgreSQL LISTEN); `None` on SQLite.
    pub async fn outbox_listener(&self) -> Result<Option<sqlx::postgres::PgListener>, StoreError> {
        match &self.pool {
            Pool::Postgres(pool) => {
                let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
                listener.listen(NOTIFY_CHANNEL).await?;
                Ok(Some(listener))
            }
            Pool::Sqlite(_) => Ok(None),
        }
    }
}
