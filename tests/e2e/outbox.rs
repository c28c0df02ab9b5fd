//! The transactional outbox in a cluster (PROTOCOL.md §2, issue 4): a fresh
//! PostgreSQL database, a `redis-server` of the test's own, one `herald
//! gateway` and two `herald api` replicas on both. The test is the
//! application: it commits (and rolls back) rows of `herald_outbox` in its
//! own transactions, and a WebSocket client checks that every committed row
//! is published exactly once, in id order per room, while one replica is
//! SIGKILLed between publishing rows and marking them.
//!
//! `HERALD_TEST_PG_URL` names the PostgreSQL server's admin URL (default:
//! `postgres://postgres@127.0.0.1:5432/postgres`); each test creates its
//! own database there and drops it afterwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};

use crate::harness::*;

const ROOMS: &str = r#"
[[rooms]]
pattern = "ob:*"
join = "anyone"
history_size = 1000
"#;

/// The contract's bound on relaying a committed row (LISTEN/NOTIFY makes
/// it much less).
const WITHIN: Duration = Duration::from_secs(1);
/// The advisory lock the test holds to stop a relay inside a pass.
const HOLD_LOCK: i64 = 0x4f42;

fn admin_url() -> String {
    std::env::var("HERALD_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh PostgreSQL database for one test, dropped (with its
/// connections) when this is dropped, also when the test fails.
struct PgDb {
    name: String,
}

impl PgDb {
    async fn create() -> PgDb {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "herald_e2e_{}_{nanos}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = bounded(WAIT, "connect to PostgreSQL", PgConnection::connect(&admin_url()))
            .await
            .expect("PostgreSQL must be reachable at HERALD_TEST_PG_URL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        let _ = admin.close().await;
        PgDb { name }
    }

    /// The database's URL, naming the connecting program (visible in
    /// `pg_stat_activity.application_name`).
    fn url(&self, application: &str) -> String {
        let admin = admin_url();
        let (base, query) = admin.split_once('?').unwrap_or((&admin, ""));
        let base = &base[..base.rfind('/').expect("a database URL has a path")];
        let mut url = format!("{base}/{}?application_name={application}", self.name);
        if !query.is_empty() {
            url.push('&');
            url.push_str(query);
        }
        url
    }

    async fn connect(&self, application: &str) -> PgConnection {
        bounded(
            WAIT,
            "connect to the test database",
            PgConnection::connect(&self.url(application)),
        )
        .await
        .expect("connect to the test database")
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut admin = PgConnection::connect(&admin_url()).await.ok()?;
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut admin)
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// One `herald api` replica and the `application_name` it connects with.
struct Replica {
    node: Herald,
    app: String,
}

/// What the client must receive: per room, the payloads of the committed
/// rows in id order, and what it has received so far.
struct Expected {
    rooms: Vec<String>,
    want: Vec<Vec<Value>>,
    got: Vec<Vec<Value>>,
    epochs: Vec<Option<String>>,
}

impl Expected {
    fn new(rooms: &[&str]) -> Expected {
        Expected {
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            want: vec![Vec::new(); rooms.len()],
            got: vec![Vec::new(); rooms.len()],
            epochs: vec![None; rooms.len()],
        }
    }

    fn wanted(&self) -> usize {
        self.want.iter().map(Vec::len).sum()
    }

    fn received(&self) -> usize {
        self.got.iter().map(Vec::len).sum()
    }

    /// Reads `c` until `total` rows have arrived, or panics at `deadline`.
    /// Every event must be the next committed row of its room: the next
    /// offset (no gap, no duplicate), the same epoch, the expected payload
    /// (so no rolled-back row, no repeat, no reordering).
    async fn read_until(&mut self, c: &mut Client, total: usize, deadline: Instant, what: &str) {
        while self.received() < total {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = match c.next_incoming(left).await {
                Some(Incoming::Text(text)) => serde_json::from_str::<Value>(&text).unwrap(),
                None => panic!(
                    "{what}: {} of {total} rows received in time (per room: {:?})",
                    self.received(),
                    self.got.iter().map(Vec::len).collect::<Vec<_>>()
                ),
                Some(other) => panic!("{what}: the client got {}", short(&other)),
            };
            assert_eq!(msg["op"], "event", "{what}: {msg}");
            let r = self
                .rooms
                .iter()
                .position(|room| msg["room"] == *room)
                .unwrap_or_else(|| panic!("{what}: an event of another room: {msg}"));
            let n = self.got[r].len();
            assert_eq!(
                offset_of(&msg),
                n as u64 + 1,
                "{what}: gap or duplicate in {}: {msg}",
                self.rooms[r]
            );
            let epoch = self.epochs[r].get_or_insert_with(|| epoch_of(&msg));
            assert_eq!(msg["epoch"], *epoch, "{what}: {msg}");
            assert_eq!(msg["event"], "row", "{what}: {msg}");
            let want = self.want[r]
                .get(n)
                .unwrap_or_else(|| panic!("{what}: more rows than committed in {}: {msg}", self.rooms[r]));
            assert_eq!(
                &msg["data"], want,
                "{what}: row {n} of {} out of order or not committed",
                self.rooms[r]
            );
            self.got[r].push(msg["data"].clone());
        }
    }
}

/// The application side: the rows it inserts in its own transactions.
struct App {
    rooms: Vec<String>,
    seq: u64,
    /// Ids of the committed rows, in id order.
    committed: Vec<i64>,
}

impl App {
    /// Inserts the next row (`{"seq", "committed"}`, the rooms in turn,
    /// every third with an application idempotency key) in `tx`; its
    /// payload is expected when `commit` is. Returns its id.
    async fn insert(&mut self, tx: &mut PgConnection, commit: bool, expected: &mut Expected) -> i64 {
        let r = (self.seq % self.rooms.len() as u64) as usize;
        let data = json!({"seq": self.seq, "committed": commit});
        let key = self
            .seq
            .is_multiple_of(3)
            .then(|| format!("app-key-{}", self.seq));
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO herald_outbox (room, event, data, idempotency_key) \
             VALUES ($1, 'row', $2::jsonb, $3) RETURNING id",
        )
        .bind(&self.rooms[r])
        .bind(data.to_string())
        .bind(key)
        .fetch_one(&mut *tx)
        .await
        .expect("insert an outbox row");
        if commit {
            expected.want[r].push(data);
        }
        self.seq += 1;
        id
    }

    /// One transaction of `rows` rows on `db`, committed or rolled back;
    /// returns the time of its end.
    async fn transaction(
        &mut self,
        db: &mut PgConnection,
        rows: usize,
        commit: bool,
        expected: &mut Expected,
    ) -> Instant {
        let mut tx = db.begin().await.expect("begin");
        let mut ids = Vec::new();
        for _ in 0..rows {
            ids.push(self.insert(&mut tx, commit, expected).await);
        }
        if commit {
            tx.commit().await.expect("commit");
            self.committed.extend(&ids);
        } else {
            tx.rollback().await.expect("rollback");
        }
        Instant::now()
    }
}

/// The `application_name` of the backend waiting for the test's hold lock
/// (a relay stopped inside its pass), if any.
async fn held_relay(db: &mut PgConnection) -> Option<String> {
    sqlx::query_scalar(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND NOT l.granted AND l.classid = 0 AND l.objid::bigint = $1",
    )
    .bind(HOLD_LOCK)
    .fetch_optional(db)
    .await
    .expect("query pg_locks")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_relays_each_committed_row_once_in_order_across_replicas_and_a_crash() {
    let pg = PgDb::create().await;
    let redis = RedisServer::start().await;
    let redis_url = redis.url();
    let gw_url = pg.url("herald-gw-1");
    let gateway = Herald::start_mode(
        "gateway",
        ROOMS,
        &[
            ("HERALD_REDIS_URL", &redis_url),
            ("HERALD_NODE_ID", "gw-1"),
            ("HERALD_DATABASE_URL", &gw_url),
        ],
    )
    .await;
    let mut replicas = Vec::new();
    for id in ["api-1", "api-2"] {
        let app = format!("herald-{id}");
        let url = pg.url(&app);
        let node = Herald::start_mode(
            "api",
            ROOMS,
            &[
                ("HERALD_REDIS_URL", &redis_url),
                ("HERALD_NODE_ID", id),
                ("HERALD_DATABASE_URL", &url),
            ],
        )
        .await;
        replicas.push(Replica { node, app });
    }

    let rooms = ["ob:0", "ob:1", "ob:2", "ob:3"];
    let mut c = gateway.connect_hello(&gateway.user_token("reader")).await;
    c.name = "reader".into();
    for (i, room) in rooms.iter().enumerate() {
        assert_eq!(c.join(i as u64 + 1, room).await["offset"], 0);
    }
    let mut expected = Expected::new(&rooms);
    let mut app = App {
        rooms: rooms.iter().map(|r| r.to_string()).collect(),
        seq: 0,
        committed: Vec::new(),
    };
    let mut db = pg.connect("app").await;

    // Phase 1, both replicas up: 5 committed transactions of 16 rows and 2
    // rolled back; each committed one arrives within a second.
    for (t, commit) in [true, false, true, true, false, true, true]
        .into_iter()
        .enumerate()
    {
        let rows = if commit { 16 } else { 6 };
        let at = app.transaction(&mut db, rows, commit, &mut expected).await;
        if commit {
            let total = expected.wanted();
            expected
                .read_until(&mut c, total, at + WITHIN, &format!("phase 1, transaction {t}"))
                .await;
        }
    }
    assert_eq!(expected.received(), 80);

    // Phase 2, a crash between publishing and marking. A trigger makes the
    // relay's mark of one row wait for a lock the test holds: the relay has
    // then published that row and the ones before it but committed no
    // mark. The replica stuck there is SIGKILLed; the other must publish
    // the rest, and what it publishes again must be deduplicated.
    let mut holder = pg.connect("test-holder").await;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(HOLD_LOCK)
        .execute(&mut holder)
        .await
        .unwrap();
    // One transaction of 80 rows, which also installs the trigger for its
    // 30th row (both become visible to the relays at its commit).
    let mut tx = db.begin().await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..80 {
        ids.push(app.insert(&mut tx, true, &mut expected).await);
    }
    let stop_at = ids[29];
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE FUNCTION e2e_hold_mark() RETURNS trigger AS $$ BEGIN \
           IF NEW.id = {stop_at} AND NEW.published_at IS NOT NULL THEN \
             PERFORM pg_advisory_xact_lock({HOLD_LOCK}); \
           END IF; \
           RETURN NEW; \
         END; $$ LANGUAGE plpgsql"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER e2e_hold_mark BEFORE UPDATE ON herald_outbox \
         FOR EACH ROW EXECUTE FUNCTION e2e_hold_mark()",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    app.committed.extend(&ids);
    // The first 30 rows of the transaction are published, then the relay
    // stops at the mark of the 30th.
    expected
        .read_until(
            &mut c,
            80 + 30,
            Instant::now() + WITHIN,
            "phase 2, before the crash",
        )
        .await;
    let deadline = Instant::now() + WAIT;
    let stuck = loop {
        if let Some(app) = held_relay(&mut holder).await {
            break app;
        }
        assert!(Instant::now() < deadline, "no relay is waiting inside its pass");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    c.expect_no_message(Duration::from_millis(300)).await;
    let unmarked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM herald_outbox WHERE published_at IS NULL AND id >= $1 AND id <= $2",
    )
    .bind(ids[0])
    .bind(ids[79])
    .fetch_one(&mut holder)
    .await
    .unwrap();
    assert_eq!(unmarked, 80, "the stuck pass has committed no mark yet");
    let victim = replicas
        .iter()
        .position(|r| r.app == stuck)
        .unwrap_or_else(|| panic!("the stuck relay is no replica: {stuck:?}"));
    let mut victim = replicas.remove(victim);
    let survivor = replicas.pop().unwrap();
    victim.node.sigkill();
    let crashed = Instant::now();
    // Its backend learns of the crash once its statement ends.
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(HOLD_LOCK)
        .execute(&mut holder)
        .await
        .unwrap();
    expected
        .read_until(
            &mut c,
            160,
            crashed + Duration::from_secs(5),
            &format!("phase 2, after SIGKILL of {}", victim.app),
        )
        .await;
    eprintln!(
        "outbox: {} stopped after 30 published rows, SIGKILLed; {} relayed the rest in {:?}",
        victim.app,
        survivor.app,
        crashed.elapsed()
    );

    // Phase 3, the survivor alone, still within a second per commit.
    for (t, commit) in [true, false, true].into_iter().enumerate() {
        let rows = if commit { 20 } else { 10 };
        let at = app.transaction(&mut db, rows, commit, &mut expected).await;
        if commit {
            let total = expected.wanted();
            expected
                .read_until(&mut c, total, at + WITHIN, &format!("phase 3, transaction {t}"))
                .await;
        }
    }
    assert_eq!(expected.received(), 200);
    assert_eq!(app.committed.len(), 200);
    // Nothing more: no duplicate, no rolled-back row (over a poll period).
    c.expect_no_message(Duration::from_millis(1500)).await;

    // Every committed row is marked, and only committed rows exist.
    let rows = sqlx::query("SELECT id, published_at IS NOT NULL AS published FROM herald_outbox ORDER BY id")
        .fetch_all(&mut db)
        .await
        .unwrap();
    let stored: Vec<i64> = rows.iter().map(|r| r.get("id")).collect();
    assert_eq!(
        stored, app.committed,
        "the stored rows are exactly the committed ones"
    );
    let unpublished: Vec<i64> = rows
        .iter()
        .filter(|r| !r.get::<bool, _>("published"))
        .map(|r| r.get("id"))
        .collect();
    assert!(
        unpublished.is_empty(),
        "rows never marked published: {unpublished:?}"
    );
    // The survivor published the held pass's 30 rows again: with their
    // keys, deduplicated by the broker (checked above: no repeat reached
    // the client).
    let (_, metrics) = survivor.node.get_text("/metrics").await;
    let relayed = metric_value(&metrics, "herald_outbox_relayed_total").unwrap_or(0.0);
    assert!(relayed >= 80.0 + 40.0, "the survivor relayed {relayed} rows");
    survivor.node.assert_no_panic().await;
    gateway.assert_no_panic().await;
}
