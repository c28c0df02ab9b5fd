//! The Redis engine: the broker of a Herald cluster.
//!
//! Commands go through a small pool of multiplexed connections; each gateway
//! node's [`feed`] holds one dedicated pub/sub connection. Publishing is one
//! Lua script (history append + `PUBLISH`), so offsets are totally ordered
//! per room whichever API node publishes. Every Redis call is bounded by a
//! timeout so that an unreachable Redis is an `unavailable` answer, never a
//! hang. See `docs/architecture.md` for the layout and the reasons.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
use herald_common::policy::Retention;
use herald_common::protocol::{Position, PresenceMember};
use herald_common::rooms::RoomName;
use redis::AsyncCommands;

use crate::{
    Broker, BrokerError, EventRecord, Feed, FeedSink, HistoryQuery, HistoryRange, NodeInfo, PublishRequest,
};

mod feed;
pub mod keys;
mod scripts;
pub mod wire;

/// Bound on any single Redis operation.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Node registry entries older than this are not reported and are removed.
const NODE_STALE: Duration = Duration::from_secs(30);

/// Tunables of the Redis engine.
#[derive(Debug, Clone, Copy)]
pub struct RedisOptions {
    /// Presence entries live this long unless their node refreshes them
    /// (a crashed node's members disappear after it); refreshed every third.
    pub presence_ttl: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            presence_ttl: Duration::from_secs(30),
        }
    }
}

/// Why the Redis engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid Redis URL: {0}")]
    BadUrl(String),
    #[error("cannot reach Redis at {url}: {reason}")]
    Unreachable { url: String, reason: String },
}

/// The presence entries this process created, refreshed until removed.
type OwnedPresence = Mutex<HashSet<(RoomName, String)>>;

struct Inner {
    options: RedisOptions,
    pool: Pool,
    client: redis::Client,
    /// Presence members (`room`, `user\0conn`) owned by this process.
    presence: OwnedPresence,
}

/// The cluster broker. Cheap to clone.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// Runs a Redis operation under [`OP_TIMEOUT`].
async fn bounded<T, E: std::fmt::Display>(
    op: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(OP_TIMEOUT, op).await {
        Ok(result) => result.map_err(unavailable),
        Err(_) => Err(BrokerError::Unavailable("Redis did not answer in time".into())),
    }
}

fn presence_member(user: &str, conn: &str) -> String {
    format!("{user}\0{conn}")
}

/// Redis redacts nothing in its URL; never print the password.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_string(),
    }
}

impl RedisBroker {
    /// Connects to Redis at `url` and checks that it answers.
    pub async fn connect(url: &str) -> Result<Self, ConnectError> {
        Self::connect_with(url, RedisOptions::default()).await
    }

    /// [`connect`](Self::connect) with explicit options.
    pub async fn connect_with(url: &str, options: RedisOptions) -> Result<Self, ConnectError> {
        let client = redis::Client::open(url).map_err(|e| ConnectError::BadUrl(e.to_string()))?;
        let mut config = deadpool_redis::Config::from_url(url);
        config.pool = Some(PoolConfig {
            // Each checkout costs a PING round trip (deadpool's recycle
            // check), so a connect storm's joins need many connections in
            // flight: 16 made a 10 000-connection storm wait for the pool
            // (joins refused `unavailable` after OP_TIMEOUT), 64 did not.
            max_size: 64,
            timeouts: Timeouts {
                wait: Some(OP_TIMEOUT),
                create: Some(OP_TIMEOUT),
                recycle: Some(OP_TIMEOUT),
            },
            ..PoolConfig::default()
        });
        let pool = config
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| ConnectError::BadUrl(e.to_string()))?;
        let broker = Self {
            inner: Arc::new(Inner {
                options,
                pool,
                client,
                presence: Mutex::new(HashSet::new()),
            }),
        };
        broker.ping().await.map_err(|e| ConnectError::Unreachable {
            url: redacted(url),
            reason: e.to_string(),
        })?;
        tokio::spawn(refresh_presence(Arc::downgrade(&broker.inner)));
        Ok(broker)
    }

    /// Runs the publish script, with an idempotency key or without.
    async fn run_publish(
        &self,
        req: PublishRequest<'_>,
        once: Option<&str>,
    ) -> Result<Position, BrokerError> {
        let head = frame_head(&req);
        let tail = match req.notification {
            Some(id) => format!(",\"notification\":{}", json_string(id)),
            None => String::new(),
        };
        let mut conn = self.conn().await?;
        let mut invocation = scripts::PUBLISH.prepare_invoke();
        invocation.key(keys::meta(req.room)).key(keys::history(req.room));
        if let Some(key) = once {
            invocation.key(keys::idempotency(req.room, key));
        }
        invocation
            .arg(keys::channel(req.room))
            .arg(herald_common::random_hex(8))
            .arg(head)
            .arg(tail)
            .arg(req.retention.history_size)
            .arg(req.retention.history_ttl_s.saturating_mul(1000).max(1))
            .arg(req.retention.meta_ttl_s.saturating_mul(1000).max(1))
            .arg(crate::IDEMPOTENCY_TTL.as_millis() as u64);
        let (offset, epoch, _ts): (u64, String, u64) = bounded(invocation.invoke_async(&mut *conn)).await?;
        Ok(Position { offset, epoch })
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, BrokerError> {
        bounded(self.inner.pool.get()).await
    }

    fn owned_presence(&self) -> std::sync::MutexGuard<'_, HashSet<(RoomName, String)>> {
        self.inner.presence.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs the history script; `since` as given, `limit` events at most.
    async fn read_history(
        &self,
        room: &RoomName,
        retention: Retention,
        since: Option<&Position>,
        limit: usize,
    ) -> Result<HistoryRange, BrokerError> {
        let mut conn = self.conn().await?;
        let mut invocation = scripts::HISTORY.prepare_invoke();
        invocation
            .key(keys::meta(room))
            .key(keys::history(room))
            .arg(herald_common::random_hex(8))
            .arg(retention.meta_ttl_s.saturating_mul(1000).max(1))
            .arg(since.map(|s| s.offset.to_string()).unwrap_or_default())
            .arg(since.map(|s| s.epoch.as_str()).unwrap_or(""))
            .arg(limit.min(retention.history_size as usize))
            .arg(retention.history_size);
        let reply: Vec<redis::Value> = bounded(invocation.invoke_async(&mut *conn)).await?;
        parse_history(reply)
    }
}

/// Turns the history script's flat reply into a [`HistoryRange`].
fn parse_history(reply: Vec<redis::Value>) -> Result<HistoryRange, BrokerError> {
    let bad = || BrokerError::Unavailable("unexpected reply from the history script".into());
    let mut items = reply.into_iter();
    let next_u64 = |items: &mut std::vec::IntoIter<redis::Value>| -> Result<i64, BrokerError> {
        let value = items.next().ok_or_else(bad)?;
        redis::from_redis_value::<i64>(value).map_err(|_| bad())
    };
    let newest = next_u64(&mut items)?;
    let epoch: String = redis::from_redis_value(items.next().ok_or_else(bad)?).map_err(|_| bad())?;
    let recovered = match next_u64(&mut items)? {
        -1 => None,
        flag => Some(flag == 1),
    };
    let mut events = Vec::new();
    while let Some(offset) = items.next() {
        let offset: u64 = redis::from_redis_value(offset).map_err(|_| bad())?;
        let ts: u64 = redis::from_redis_value(items.next().ok_or_else(bad)?).map_err(|_| bad())?;
        let frame: Vec<u8> = redis::from_redis_value(items.next().ok_or_else(bad)?).map_err(|_| bad())?;
        events.push(EventRecord {
            offset,
            ts,
            frame: Bytes::from(frame),
        });
    }
    Ok(HistoryRange {
        events,
        position: Position {
            offset: newest.max(0) as u64,
            epoch,
        },
        recovered,
    })
}

/// Keeps this process's presence entries alive until they are removed.
async fn refresh_presence(inner: std::sync::Weak<Inner>) {
    let Some(period) = inner.upgrade().map(|i| i.options.presence_ttl / 3) else {
        return;
    };
    let mut tick = tokio::time::interval(period.max(Duration::from_millis(100)));
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let owned: Vec<(RoomName, String)> = inner
            .presence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        if owned.is_empty() {
            continue;
        }
        let expiry = herald_common::now_ms() + inner.options.presence_ttl.as_millis() as u64;
        let mut pipe = redis::pipe();
        for (room, member) in &owned {
            pipe.cmd("ZADD")
                .arg(keys::presence_expiry(room))
                .arg("XX")
                .arg(expiry)
                .arg(member)
                .ignore();
        }
        let result: Result<(), BrokerError> = async {
            let mut conn = bounded(inner.pool.get()).await?;
            bounded(pipe.query_async::<()>(&mut *conn)).await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "presence refresh failed");
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, req: PublishRequest<'_>) -> Result<Position, BrokerError> {
        self.run_publish(req, None).await
    }

    async fn publish_once(&self, req: PublishRequest<'_>, key: &str) -> Result<Position, BrokerError> {
        self.run_publish(req, Some(key)).await
    }

    async fn position(&self, room: &RoomName, retention: Retention) -> Result<Position, BrokerError> {
        Ok(self.read_history(room, retention, None, 0).await?.position)
    }

    async fn history(
        &self,
        room: &RoomName,
        retention: Retention,
        query: HistoryQuery,
    ) -> Result<HistoryRange, BrokerError> {
        self.read_history(room, retention, query.since.as_ref(), query.limit)
            .await
    }

    async fn publish_transient(
        &self,
        room: &RoomName,
        frame: Bytes,
        exclude: Option<&str>,
    ) -> Result<(), BrokerError> {
        let mut conn = self.conn().await?;
        let payload = wire::transient(&frame, exclude);
        bounded(conn.publish::<_, _, ()>(keys::channel(room), payload)).await
    }

    async fn publish_control(&self, room: &RoomName, payload: Bytes) -> Result<(), BrokerError> {
        let mut conn = self.conn().await?;
        bounded(conn.publish::<_, _, ()>(keys::channel(room), wire::control(&payload))).await
    }

    async fn request(&self, room: &RoomName, command: &[u8]) -> Result<u64, BrokerError> {
        let id = herald_common::random_hex(8);
        let payload = wire::control(&crate::request_payload(&id, command));
        let mut conn = self.conn().await?;
        // PUBLISH answers how many subscribers got it: one per node that
        // holds members of the room, so that many replies are awaited.
        let receivers: u64 = bounded(conn.publish(keys::channel(room), payload)).await?;
        if receivers == 0 {
            return Ok(0);
        }
        let key = keys::reply(&id);
        let deadline = tokio::time::Instant::now() + crate::REQUEST_TIMEOUT;
        loop {
            let replies: u64 = bounded(conn.llen(&key)).await?;
            if replies >= receivers || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let counts: Vec<u64> = bounded(conn.lrange(&key, 0, -1)).await?;
        bounded(conn.del::<_, ()>(&key)).await?;
        Ok(counts.iter().sum())
    }

    async fn reply(&self, request_id: &str, count: u64) -> Result<(), BrokerError> {
        let key = keys::reply(request_id);
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        pipe.rpush(&key, count).ignore().pexpire(&key, 30_000).ignore();
        bounded(pipe.query_async::<()>(&mut *conn)).await
    }

    async fn presence_join(&self, room: &RoomName, user: &str, conn: &str) -> Result<bool, BrokerError> {
        let member = presence_member(user, conn);
        let now = herald_common::now_ms();
        let mut c = self.conn().await?;
        let mut invocation = scripts::PRESENCE_JOIN.prepare_invoke();
        invocation
            .key(keys::presence(room))
            .key(keys::presence_expiry(room))
            .arg(&member)
            .arg(user)
            .arg(now)
            .arg(now + self.inner.options.presence_ttl.as_millis() as u64);
        let first: i64 = bounded(invocation.invoke_async(&mut *c)).await?;
        self.owned_presence().insert((room.clone(), member));
        Ok(first == 1)
    }

    async fn presence_leave(&self, room: &RoomName, user: &str, conn: &str) -> Result<bool, BrokerError> {
        let member = presence_member(user, conn);
        // Forget it first: if Redis is down, the entry expires on its own.
        self.owned_presence().remove(&(room.clone(), member.clone()));
        let mut c = self.conn().await?;
        let mut invocation = scripts::PRESENCE_LEAVE.prepare_invoke();
        invocation
            .key(keys::presence(room))
            .key(keys::presence_expiry(room))
            .arg(&member)
            .arg(user)
            .arg(herald_common::now_ms());
        let last: i64 = bounded(invocation.invoke_async(&mut *c)).await?;
        Ok(last == 1)
    }

    async fn presence(&self, room: &RoomName) -> Result<Vec<PresenceMember>, BrokerError> {
        let mut c = self.conn().await?;
        let mut invocation = scripts::PRESENCE_LIST.prepare_invoke();
        invocation
            .key(keys::presence(room))
            .key(keys::presence_expiry(room))
            .arg(herald_common::now_ms());
        let members: Vec<String> = bounded(invocation.invoke_async(&mut *c)).await?;
        let mut counts: std::collections::BTreeMap<String, u32> = std::collections::BTreeMap::new();
        for member in members {
            let user = member.split('\0').next().unwrap_or_default().to_string();
            *counts.entry(user).or_default() += 1;
        }
        Ok(counts
            .into_iter()
            .map(|(user, conns)| PresenceMember { user, conns })
            .collect())
    }

    fn attach(&self, sink: Arc<dyn FeedSink>) -> Arc<dyn Feed> {
        feed::RedisFeed::start(self.clone(), sink)
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        let mut conn = self.conn().await?;
        bounded(redis::cmd("PING").query_async::<String>(&mut *conn))
            .await
            .map(|_| ())
    }

    async fn rate_limit(
        &self,
        key: &str,
        limit: herald_common::config::RateLimit,
    ) -> Result<Option<Duration>, BrokerError> {
        let mut conn = self.conn().await?;
        let mut invocation = scripts::RATE_LIMIT.prepare_invoke();
        invocation
            .key(keys::bucket(key))
            .arg(crate::gcra::interval_ms(limit))
            .arg(limit.burst.max(1));
        let wait_ms: u64 = bounded(invocation.invoke_async(&mut *conn)).await?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
    }

    async fn heartbeat(&self, node: &NodeInfo) -> Result<(), BrokerError> {
        let json = serde_json::to_string(node).map_err(unavailable)?;
        let mut conn = self.conn().await?;
        bounded(conn.hset::<_, _, _, ()>(keys::NODES, &node.id, json)).await
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError> {
        let mut conn = self.conn().await?;
        let all: std::collections::HashMap<String, String> = bounded(conn.hgetall(keys::NODES)).await?;
        let now = herald_common::now_ms();
        let stale = NODE_STALE.as_millis() as u64;
        let mut alive = Vec::new();
        let mut dead = Vec::new();
        for (id, json) in all {
            match serde_json::from_str::<NodeInfo>(&json) {
                Ok(node) if now.saturating_sub(node.last_seen) <= stale => alive.push(node),
                _ => dead.push(id),
            }
        }
        if !dead.is_empty() {
            bounded(conn.hdel::<_, _, ()>(keys::NODES, dead)).await?;
        }
        alive.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(alive)
    }
}

/// The event frame up to and including `data`; the script appends
/// `offset`, `epoch`, `ts` and the closing brace.
fn frame_head(req: &PublishRequest<'_>) -> String {
    format!(
        "{{\"op\":\"event\",\"room\":{},\"event\":{},\"data\":{}",
        json_string(req.room.as_str()),
        json_string(req.event),
        req.data.get()
    )
}

fn json_string(s: &str) -> String {
    // Serializing a &str cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redacted("redis://:secret@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn frame_head_matches_the_memory_engine_frame() {
        let room = RoomName::new("r").unwrap();
        let data = serde_json::value::RawValue::from_string("{\"a\":\"\\\"x\"}".into()).unwrap();
        let req = PublishRequest {
            room: &room,
            event: "e\"v",
            data: &data,
            retention: herald_common::policy::RoomPolicy::default().retention,
            notification: None,
        };
        let full = format!("{},\"offset\":3,\"epoch\":\"ep\",\"ts\":9}}", frame_head(&req));
        assert_eq!(full.as_bytes(), &crate::event_frame(&req, 3, "ep", 9)[..]);
    }
}
