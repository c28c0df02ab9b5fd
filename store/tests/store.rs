//! The store's behaviour, run against both backends: an SQLite file and a
//! fresh PostgreSQL database created for each test (dropped afterwards).
//! `HERALD_TEST_PG_URL` names the PostgreSQL server's admin URL (default:
//! `postgres://postgres@127.0.0.1:5432/postgres`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use herald_store::{NotificationQuery, Store};
use sqlx::Connection;

fn admin_url() -> String {
    std::env::var("HERALD_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database for one test; removed by `finish`.
struct TestDb {
    store: Store,
    url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    File(std::path::PathBuf),
    Postgres(String),
}

fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{nanos}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl TestDb {
    async fn sqlite() -> Self {
        let dir = std::env::temp_dir().join(unique("herald_store"));
        std::fs::create_dir_all(&dir).unwrap();
        let url = Store::sqlite_url(&dir.join("herald.db"));
        let store = Store::connect(&url).await.unwrap();
        Self {
            store,
            url,
            cleanup: Cleanup::File(dir),
        }
    }

    async fn postgres() -> Self {
        let name = unique("herald_test");
        let mut admin = sqlx::PgConnection::connect(&admin_url())
            .await
            .expect("PostgreSQL must be reachable at HERALD_TEST_PG_URL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let base = admin_url();
        let url = format!("{}/{name}", &base[..base.rfind('/').unwrap()]);
        let store = Store::connect(&url).await.unwrap();
        Self {
            store,
            url,
            cleanup: Cleanup::Postgres(name),
        }
    }

    async fn finish(self) {
        self.store.close().await;
        match self.cleanup {
            Cleanup::File(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Postgres(name) => {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await;
                }
            }
        }
    }
}

/// Expands each behaviour into one test per backend.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { let db = super::TestDb::sqlite().await; super::$name(&db).await; db.finish().await; })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { let db = super::TestDb::postgres().await; super::$name(&db).await; db.finish().await; })*
        }
    };
}

both_backends!(
    grants,
    notifications,
    outbox_relays_in_order_once,
    outbox_stops_at_a_failure
);

async fn grants(db: &TestDb) {
    let store = &db.store;
    store.ping().await.unwrap();
    store.put_grant("user:alice", "event:*").await.unwrap();
    store.put_grant("user:alice", "event:*").await.unwrap();
    store.put_grant("role:ADMIN", "admin:*").await.unwrap();
    store.put_grant("user:bob", "bob:1").await.unwrap();
    let subjects = ["user:alice".to_string(), "role:ADMIN".to_string()];
    assert_eq!(
        store.grants_for(&subjects).await.unwrap(),
        vec!["admin:*", "event:*"]
    );
    assert!(store.delete_grant("user:alice", "event:*").await.unwrap());
    assert!(!store.delete_grant("user:alice", "event:*").await.unwrap());
    assert_eq!(store.grants_for(&subjects).await.unwrap(), vec!["admin:*"]);
    // Parameters are data, never SQL.
    store.put_grant("user:x' OR '1'='1", "p").await.unwrap();
    assert_eq!(
        store.grants_for(&["user:y".into()]).await.unwrap(),
        Vec::<String>::new()
    );
}

async fn notifications(db: &TestDb) {
    let store = &db.store;
    let mut ids = Vec::new();
    for i in 0..5 {
        let n = store
            .insert_notification("alice", "booked", &format!("{{\"i\": {i}}}"))
            .await
            .unwrap();
        assert_eq!(n.read_at_ms, None);
        ids.push(n.id);
    }
    store.insert_notification("bob", "other", "null").await.unwrap();
    let all = NotificationQuery {
        unread_only: false,
        limit: 50,
        before: None,
    };
    let listed = store.notifications("alice", all).await.unwrap();
    assert_eq!(listed.len(), 5);
    assert_eq!(listed[0].data, "{\"i\": 4}", "newest first, data kept as sent");
    let page = store
        .notifications(
            "alice",
            NotificationQuery {
                limit: 2,
                before: Some(listed[1].id.parse().unwrap()),
                ..all
            },
        )
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|n| n.id.clone()).collect::<Vec<_>>(),
        vec![ids[2].clone(), ids[1].clone()]
    );
    let id: i64 = ids[0].parse().unwrap();
    assert!(store.mark_read("alice", id).await.unwrap());
    let first_read = store.notifications("alice", all).await.unwrap()[4].read_at_ms;
    assert!(first_read.is_some());
    assert!(
        store.mark_read("alice", id).await.unwrap(),
        "marking twice is fine"
    );
    assert_eq!(
        store.notifications("alice", all).await.unwrap()[4].read_at_ms,
        first_read
    );
    assert!(
        !store.mark_read("bob", id).await.unwrap(),
        "another user's id is unknown"
    );
    assert!(!store.mark_read("alice", 999_999).await.unwrap());
    let unread = store
        .notifications(
            "alice",
            NotificationQuery {
                unread_only: true,
                ..all
            },
        )
        .await
        .unwrap();
    assert_eq!(unread.len(), 4);
}

/// Inserts an outbox row the way an application would: over its own
/// connection, in its own transaction.
async fn insert_outbox(db: &TestDb, room: &str, n: i64, key: Option<&str>) {
    let data = format!("{{\"n\":{n}}}");
    if db.store.is_postgres() {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO herald_outbox (room, event, data, idempotency_key) VALUES ($1, 'e', $2::jsonb, $3)",
        )
        .bind(room)
        .bind(&data)
        .bind(key)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
    } else {
        let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        sqlx::query(
            "INSERT INTO herald_outbox (room, event, data, idempotency_key) VALUES ($1, 'e', $2, $3)",
        )
        .bind(room)
        .bind(&data)
        .bind(key)
        .execute(&mut conn)
        .await
        .unwrap();
    }
}

async fn outbox_relays_in_order_once(db: &TestDb) {
    let store = &db.store;
    for n in 1..=5 {
        insert_outbox(
            db,
            if n % 2 == 0 { "a" } else { "b" },
            n,
            (n == 3).then_some("mine"),
        )
        .await;
    }
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let pass = store
        .relay_outbox(3, move |row| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push(row);
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap();
    assert_eq!(pass.relayed, 3);
    let second = store
        .relay_outbox(100, |row| {
            let record = seen.clone();
            async move {
                record.lock().unwrap().push(row);
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap();
    assert_eq!(second.relayed, 2);
    let rows = seen.lock().unwrap().clone();
    let data: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| serde_json::from_str(&r.data).unwrap())
        .collect();
    assert_eq!(
        data.iter().map(|d| d["n"].as_i64().unwrap()).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(rows[2].idempotency_key, "outbox:mine");
    assert_eq!(rows[0].idempotency_key, format!("outbox:#{}", rows[0].id));
    let third = store
        .relay_outbox(100, |_| async { Ok::<(), String>(()) })
        .await
        .unwrap();
    assert_eq!(third.relayed, 0, "each row is relayed once");
    assert_eq!(store.outbox_lag_seconds().await.unwrap(), 0.0);
}

async fn outbox_stops_at_a_failure(db: &TestDb) {
    let store = &db.store;
    for n in 1..=3 {
        insert_outbox(db, "a", n, None).await;
    }
    let pass = store
        .relay_outbox(100, |row| async move {
            if row.data.contains("2") {
                Err("broker down".to_string())
            } else {
                Ok(())
            }
        })
        .await
        .unwrap();
    assert_eq!(pass.relayed, 1, "row 3 must not overtake row 2");
    assert!(store.outbox_lag_seconds().await.unwrap() >= 0.0);
    let mut rest = Vec::new();
    store
        .relay_outbox(100, |row| {
            rest.push(serde_json::from_str::<serde_json::Value>(&row.data).unwrap()["n"].clone());
            async { Ok::<(), String>(()) }
        })
        .await
        .unwrap();
    assert_eq!(rest, vec![2, 3]);
}
