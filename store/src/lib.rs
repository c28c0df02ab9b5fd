//! Herald's durable store: grants, notifications and the outbox (sqlx).
//! SQLite is embedded for `herald standalone`; PostgreSQL serves clusters.
//! Each backend has its own migrations (`migrations/sqlite`,
//! `migrations/postgres`), applied at start, so a new database needs no
//! setup. Every query is parameterized.
//!
//! The SQL text is shared where the dialects agree (both accept `$n`
//! parameters); the [`on_pool!`] macro runs one query body against
//! whichever pool is open.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

pub mod outbox;

pub use outbox::{OutboxRow, RelayPass};

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL (use postgres://… or sqlite://PATH)")]
    UnsupportedUrl,
    #[error("cannot open database {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("cannot apply migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
}

/// The open pool, by backend.
#[derive(Clone, Debug)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

// Runs `$body` with `$p` bound to the open pool, whichever backend it is.
macro_rules! on_pool {
    ($pool:expr, |$p:ident| $body:expr) => {
        match $pool {
            $crate::Pool::Sqlite($p) => $body,
            $crate::Pool::Postgres($p) => $body,
        }
    };
}

/// A handle on the store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) pool: Pool,
}

/// One stored notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Opaque id (decimal text).
    pub id: String,
    pub event: String,
    /// The JSON text as the application sent it.
    pub data: String,
    pub created_at_ms: u64,
    pub read_at_ms: Option<u64>,
}

/// What a notifications listing asks for.
#[derive(Debug, Clone, Copy)]
pub struct NotificationQuery {
    pub unread_only: bool,
    pub limit: u32,
    /// Only notifications older than this id (paging).
    pub before: Option<i64>,
}

/// Hides the password of a database URL for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_string(),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

type NotificationRow = (i64, String, String, i64, Option<i64>);

fn notification(row: NotificationRow) -> Notification {
    let (id, event, data, created, read) = row;
    Notification {
        id: id.to_string(),
        event,
        data,
        created_at_ms: created.max(0) as u64,
        read_at_ms: read.map(|r| r.max(0) as u64),
    }
}

impl Store {
    /// Opens (creating a SQLite file if needed) the database at `url` and
    /// applies the migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let connect_error = |source| StoreError::Connect {
            url: redacted(url),
            source,
        };
        let pool = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(connect_error)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(2))
                .connect_with(options)
                .await
                .map_err(connect_error)?;
            sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
            Pool::Sqlite(pool)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(2))
                .connect(url)
                .await
                .map_err(connect_error)?;
            sqlx::migrate!("./migrations/postgres").run(&pool).await?;
            Pool::Postgres(pool)
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        Ok(Self { pool })
    }

    /// The SQLite URL of a database file.
    pub fn sqlite_url(path: &Path) -> String {
        format!("sqlite://{}", path.display())
    }

    /// True for PostgreSQL (the outbox relay listens for notifications there).
    pub fn is_postgres(&self) -> bool {
        matches!(self.pool, Pool::Postgres(_))
    }

    /// Succeeds when the database answers (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(&self.pool, |p| sqlx::query("SELECT 1")
            .execute(p)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        on_pool!(&self.pool, |p| p.close().await)
    }

    // ---- grants ----------------------------------------------------------

    /// Grants `subject` (`user:<id>` or `role:<name>`) the rooms matching
    /// `pattern`. Granting twice is not an error.
    pub async fn put_grant(&self, subject: &str, pattern: &str) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO herald_grants (subject, pattern, created_at_ms) VALUES ($1, $2, $3) \
                           ON CONFLICT (subject, pattern) DO NOTHING";
        on_pool!(&self.pool, |p| sqlx::query(SQL)
            .bind(subject)
            .bind(pattern)
            .bind(now_ms())
            .execute(p)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Removes a grant; true if it existed.
    pub async fn delete_grant(&self, subject: &str, pattern: &str) -> Result<bool, StoreError> {
        const SQL: &str = "DELETE FROM herald_grants WHERE subject = $1 AND pattern = $2";
        let done = on_pool!(&self.pool, |p| sqlx::query(SQL)
            .bind(subject)
            .bind(pattern)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(done > 0)
    }

    /// Every pattern granted to any of `subjects`.
    pub async fn grants_for(&self, subjects: &[String]) -> Result<Vec<String>, StoreError> {
        const SQL: &str = "SELECT pattern FROM herald_grants WHERE subject = $1";
        let mut patterns = Vec::new();
        for subject in subjects {
            let rows: Vec<(String,)> = on_pool!(&self.pool, |p| sqlx::query_as(SQL)
                .bind(subject)
                .fetch_all(p)
                .await)?;
            patterns.extend(rows.into_iter().map(|(pattern,)| pattern));
        }
        patterns.sort();
        patterns.dedup();
        Ok(patterns)
    }

    // ---- notifications ---------------------------------------------------

    /// Stores a notification for `user`; returns it with its id.
    pub async fn insert_notification(
        &self,
        user: &str,
        event: &str,
        data: &str,
    ) -> Result<Notification, StoreError> {
        const SQL: &str = "INSERT INTO herald_notifications (user_id, event, data, created_at_ms) \
                           VALUES ($1, $2, $3, $4) RETURNING id, event, data, created_at_ms, read_at_ms";
        let row: NotificationRow = on_pool!(&self.pool, |p| sqlx::query_as(SQL)
            .bind(user)
            .bind(event)
            .bind(data)
            .bind(now_ms())
            .fetch_one(p)
            .await)?;
        Ok(notification(row))
    }

    /// Lists a user's notifications, newest first.
    pub async fn notifications(
        &self,
        user: &str,
        query: NotificationQuery,
    ) -> Result<Vec<Notification>, StoreError> {
        const SQL: &str = "SELECT id, event, data, created_at_ms, read_at_ms FROM herald_notifications \
                           WHERE user_id = $1 AND ($2 = 0 OR read_at_ms IS NULL) AND id < $3 \
                           ORDER BY id DESC LIMIT $4";
        let rows: Vec<NotificationRow> = on_pool!(&self.pool, |p| sqlx::query_as(SQL)
            .bind(user)
            .bind(i64::from(query.unread_only))
            .bind(query.before.unwrap_or(i64::MAX))
            .bind(i64::from(query.limit))
            .fetch_all(p)
            .await)?;
        Ok(rows.into_iter().map(notification).collect())
    }

    /// Marks a notification read (keeping the first read time); false when
    /// the user has no notification with that id.
    pub async fn mark_read(&self, user: &str, id: i64) -> Result<bool, StoreError> {
        const SQL: &str = "UPDATE herald_notifications SET read_at_ms = COALESCE(read_at_ms, $3) \
                           WHERE user_id = $1 AND id = $2";
        let done = on_pool!(&self.pool, |p| sqlx::query(SQL)
            .bind(user)
            .bind(id)
            .bind(now_ms())
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(done > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redacted("postgres://u:pw@h/db"), "postgres://***@h/db");
        assert_eq!(redacted("sqlite://x.db"), "sqlite://x.db");
    }
}
