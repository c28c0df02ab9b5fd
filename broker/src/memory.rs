//! The memory engine: the embedded broker of `herald standalone`.
//!
//! Rooms live in a sharded map. A publish takes its room's shard lock,
//! assigns the next offset, appends to the bounded history and hands the
//! frame to every subscribed sink before releasing the lock, so every sink
//! sees a room's events in offset order with no gap. Sinks never block
//! (the gateway's fan-out only enqueues), so the lock is held briefly.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use herald_common::policy::Retention;
use herald_common::protocol::{Position, PresenceMember};
use herald_common::rooms::RoomName;

use crate::{
    Broker, BrokerError, EventRecord, Feed, FeedSink, HistoryQuery, HistoryRange, NodeInfo, PublishRequest,
    event_frame,
};

const SHARDS: usize = 32;
/// How often idle rooms are swept out of memory.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// One room's epoch, offsets and history.
struct RoomState {
    epoch: Arc<str>,
    /// The newest offset of this epoch (0 before the first event).
    newest: u64,
    history: VecDeque<(Instant, EventRecord)>,
    /// Metadata lives until this instant; a publish pushes it forward.
    meta_expires: Instant,
}

impl RoomState {
    fn new(retention: Retention, now: Instant) -> Self {
        Self {
            epoch: Arc::from(herald_common::random_hex(8)),
            newest: 0,
            history: VecDeque::new(),
            meta_expires: now + Duration::from_secs(retention.meta_ttl_s),
        }
    }

    fn position(&self) -> Position {
        Position {
            offset: self.newest,
            epoch: self.epoch.to_string(),
        }
    }

    /// Applies expiry: events older than the history TTL leave; a room
    /// whose metadata expired starts a new epoch. (Gateways notice the new
    /// epoch on its first event and resync their members.)
    fn expire(&mut self, retention: Retention, now: Instant) {
        if now >= self.meta_expires {
            *self = RoomState::new(retention, now);
        }
        let ttl = Duration::from_secs(retention.history_ttl_s);
        while let Some((at, _)) = self.history.front() {
            if now.duration_since(*at) >= ttl {
                self.history.pop_front();
            } else {
                break;
            }
        }
        while self.history.len() > retention.history_size as usize {
            self.history.pop_front();
        }
    }

    /// The oldest offset still in history, if any.
    fn oldest(&self) -> Option<u64> {
        self.history.front().map(|(_, r)| r.offset)
    }
}

type PresenceMap = HashMap<RoomName, HashMap<String, HashMap<String, ()>>>;

struct Inner {
    shards: Vec<Mutex<HashMap<RoomName, RoomState>>>,
    presence: Mutex<PresenceMap>,
    /// Every attached node's sink.
    sinks: RwLock<Vec<Arc<dyn FeedSink>>>,
    /// Heartbeats by node id.
    nodes: Mutex<HashMap<String, NodeInfo>>,
    /// Rate-limit buckets.
    buckets: Mutex<crate::gcra::Buckets>,
    /// Idempotency keys: (room, key) → first position and its expiry.
    published_once: Mutex<HashMap<(RoomName, String), (Position, Instant)>>,
    /// Requests awaiting replies: id → (replies still expected, sum).
    requests: Mutex<HashMap<String, (usize, u64)>>,
    replied: tokio::sync::Notify,
}

/// The embedded single-process broker.
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a broker lock leaves plain data behind that is
    // still consistent enough to serve; do not cascade the panic.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryBroker {
    /// Creates the broker; inside a tokio runtime it also starts a sweeper
    /// that drops rooms whose metadata expired and that nobody subscribes.
    pub fn new() -> Self {
        let inner = Arc::new(Inner {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            presence: Mutex::new(HashMap::new()),
            sinks: RwLock::new(Vec::new()),
            nodes: Mutex::new(HashMap::new()),
            buckets: Mutex::new(crate::gcra::Buckets::default()),
            published_once: Mutex::new(HashMap::new()),
            requests: Mutex::new(HashMap::new()),
            replied: tokio::sync::Notify::new(),
        });
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(sweep(Arc::downgrade(&inner)));
        }
        Self { inner }
    }

    fn shard(&self, room: &RoomName) -> MutexGuard<'_, HashMap<RoomName, RoomState>> {
        let mut h = DefaultHasher::new();
        room.hash(&mut h);
        lock(&self.inner.shards[h.finish() as usize % SHARDS])
    }

    /// Publishes synchronously: offset, history, delivery, all under the
    /// room's lock.
    fn publish_now(&self, req: PublishRequest<'_>) -> Position {
        let ts = herald_common::now_ms();
        self.with_room(req.room, req.retention, |state| {
            let now = Instant::now();
            state.newest += 1;
            state.meta_expires = now + Duration::from_secs(req.retention.meta_ttl_s);
            let record = EventRecord {
                offset: state.newest,
                ts,
                frame: event_frame(&req, state.newest, &state.epoch, ts),
            };
            for sink in self.sinks().iter() {
                sink.on_event(req.room, &state.epoch, &record);
            }
            state.history.push_back((now, record));
            if state.history.len() > req.retention.history_size as usize {
                state.history.pop_front();
            }
            state.position()
        })
    }

    fn sinks(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<dyn FeedSink>>> {
        self.inner.sinks.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the room's state, created and expired as needed.
    fn with_room<T>(&self, room: &RoomName, retention: Retention, f: impl FnOnce(&mut RoomState) -> T) -> T {
        let now = Instant::now();
        let mut shard = self.shard(room);
        let state = shard
            .entry(room.clone())
            .or_insert_with(|| RoomState::new(retention, now));
        state.expire(retention, now);
        f(state)
    }
}

async fn sweep(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        for shard in &inner.shards {
            lock(shard).retain(|_, s| now < s.meta_expires);
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, req: PublishRequest<'_>) -> Result<Position, BrokerError> {
        Ok(self.publish_now(req))
    }

    async fn publish_once(&self, req: PublishRequest<'_>, key: &str) -> Result<Position, BrokerError> {
        // Held across the check and the (synchronous) publish, so racing
        // repeats are serialized and the second finds the first's position.
        let mut once = lock(&self.inner.published_once);
        let now = Instant::now();
        let id = (req.room.clone(), key.to_string());
        if let Some((position, expires)) = once.get(&id)
            && now < *expires
        {
            return Ok(position.clone());
        }
        let position = self.publish_now(req);
        if once.len() % 1024 == 1023 {
            once.retain(|_, (_, expires)| now < *expires);
        }
        once.insert(id, (position.clone(), now + crate::IDEMPOTENCY_TTL));
        Ok(position)
    }

    async fn position(&self, room: &RoomName, retention: Retention) -> Result<Position, BrokerError> {
        Ok(self.with_room(room, retention, |state| state.position()))
    }

    async fn history(
        &self,
        room: &RoomName,
        retention: Retention,
        query: HistoryQuery,
    ) -> Result<HistoryRange, BrokerError> {
        Ok(self.with_room(room, retention, |state| {
            let position = state.position();
            let records = |from_offset: u64, limit: usize| -> Vec<EventRecord> {
                state
                    .history
                    .iter()
                    .map(|(_, r)| r)
                    .filter(|r| r.offset > from_offset)
                    .take(limit)
                    .cloned()
                    .collect()
            };
            match query.since {
                None => {
                    let skip = state.history.len().saturating_sub(query.limit);
                    HistoryRange {
                        events: state.history.iter().skip(skip).map(|(_, r)| r.clone()).collect(),
                        position,
                        recovered: None,
                    }
                }
                Some(since) => {
                    let recoverable = since.epoch == *state.epoch
                        && since.offset <= state.newest
                        && (since.offset == state.newest
                            || state.oldest().is_some_and(|oldest| oldest <= since.offset + 1));
                    HistoryRange {
                        events: if recoverable {
                            records(since.offset, query.limit)
                        } else {
                            Vec::new()
                        },
                        position,
                        recovered: Some(recoverable),
                    }
                }
            }
        }))
    }

    async fn publish_transient(
        &self,
        room: &RoomName,
        frame: Bytes,
        exclude: Option<&str>,
    ) -> Result<(), BrokerError> {
        // Taken under the room's lock so a member event is ordered with the
        // room's events the same way for every sink.
        let _room = self.shard(room);
        for sink in self.sinks().iter() {
            sink.on_transient(room, &frame, exclude);
        }
        Ok(())
    }

    async fn publish_control(&self, room: &RoomName, payload: Bytes) -> Result<(), BrokerError> {
        for sink in self.sinks().iter() {
            sink.on_control(room, &payload);
        }
        Ok(())
    }

    async fn request(&self, room: &RoomName, command: &[u8]) -> Result<u64, BrokerError> {
        let id = herald_common::random_hex(8);
        let payload = crate::request_payload(&id, command);
        // Every attached node hears every room on this engine, so every
        // node replies (with 0 when it holds nobody there).
        let sinks: Vec<Arc<dyn FeedSink>> = self.sinks().iter().cloned().collect();
        lock(&self.inner.requests).insert(id.clone(), (sinks.len(), 0));
        for sink in &sinks {
            sink.on_control(room, &payload);
        }
        let deadline = tokio::time::Instant::now() + crate::REQUEST_TIMEOUT;
        loop {
            let replied = self.inner.replied.notified();
            if let Some((0, _)) = lock(&self.inner.requests).get(&id) {
                break;
            }
            if tokio::time::timeout_at(deadline, replied).await.is_err() {
                break;
            }
        }
        let sum = lock(&self.inner.requests).remove(&id).map_or(0, |(_, sum)| sum);
        Ok(sum)
    }

    async fn reply(&self, request_id: &str, count: u64) -> Result<(), BrokerError> {
        if let Some((remaining, sum)) = lock(&self.inner.requests).get_mut(request_id) {
            *remaining = remaining.saturating_sub(1);
            *sum += count;
        }
        self.inner.replied.notify_waiters();
        Ok(())
    }

    async fn presence_join(&self, room: &RoomName, user: &str, conn: &str) -> Result<bool, BrokerError> {
        let mut presence = lock(&self.inner.presence);
        let users = presence.entry(room.clone()).or_default();
        let conns = users.entry(user.to_string()).or_default();
        let first = conns.is_empty();
        conns.insert(conn.to_string(), ());
        Ok(first)
    }

    async fn presence_leave(&self, room: &RoomName, user: &str, conn: &str) -> Result<bool, BrokerError> {
        let mut presence = lock(&self.inner.presence);
        let Some(users) = presence.get_mut(room) else {
            return Ok(false);
        };
        let Some(conns) = users.get_mut(user) else {
            return Ok(false);
        };
        let removed = conns.remove(conn).is_some();
        let last = removed && conns.is_empty();
        if conns.is_empty() {
            users.remove(user);
        }
        if users.is_empty() {
            presence.remove(room);
        }
        Ok(last)
    }

    async fn presence(&self, room: &RoomName) -> Result<Vec<PresenceMember>, BrokerError> {
        let presence = lock(&self.inner.presence);
        let mut members: Vec<PresenceMember> = presence
            .get(room)
            .map(|users| {
                users
                    .iter()
                    .map(|(user, conns)| PresenceMember {
                        user: user.clone(),
                        conns: conns.len() as u32,
                    })
                    .collect()
            })
            .unwrap_or_default();
        members.sort_by(|a, b| a.user.cmp(&b.user));
        Ok(members)
    }

    fn attach(&self, sink: Arc<dyn FeedSink>) -> Arc<dyn Feed> {
        self.inner
            .sinks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(sink);
        Arc::new(MemoryFeed)
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn rate_limit(
        &self,
        key: &str,
        limit: herald_common::config::RateLimit,
    ) -> Result<Option<Duration>, BrokerError> {
        Ok(lock(&self.inner.buckets).take(key, limit, Instant::now()))
    }

    async fn heartbeat(&self, node: &NodeInfo) -> Result<(), BrokerError> {
        lock(&self.inner.nodes).insert(node.id.clone(), node.clone());
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError> {
        let mut nodes: Vec<NodeInfo> = lock(&self.inner.nodes).values().cloned().collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }
}

/// A node's subscription on the memory engine.
///
/// Every attached sink receives every room's events: the gateway's hub
/// ignores rooms it has no members in with one map lookup, which is cheaper
/// than keeping a second subscription table here, and it keeps the broker's
/// lock (held while delivering) from ever being taken under the hub's.
struct MemoryFeed;

#[async_trait]
impl Feed for MemoryFeed {
    fn set_interest(&self, _room: &RoomName, _interested: bool) {}

    async fn wait_subscribed(&self, _room: &RoomName) -> Result<(), BrokerError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn retention(size: u32) -> Retention {
        Retention {
            history_size: size,
            history_ttl_s: 300,
            meta_ttl_s: 86_400,
        }
    }

    fn room(name: &str) -> RoomName {
        RoomName::new(name).unwrap()
    }

    async fn publish(b: &MemoryBroker, r: &RoomName, size: u32, n: u64) -> Position {
        let data = RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap();
        b.publish(PublishRequest {
            room: r,
            event: "e",
            data: &data,
            retention: retention(size),
            notification: None,
        })
        .await
        .unwrap()
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, u64)>>);
    impl FeedSink for Recorder {
        fn on_event(&self, room: &RoomName, _epoch: &str, record: &EventRecord) {
            lock(&self.0).push((room.to_string(), record.offset));
        }
        fn on_transient(&self, _room: &RoomName, _frame: &Bytes, _exclude: Option<&str>) {}
        fn on_resync(&self, _room: &RoomName, _position: &Position) {}
        fn on_control(&self, _room: &RoomName, _payload: &Bytes) {}
        fn last_position(&self, _room: &RoomName) -> Option<(Position, Retention)> {
            None
        }
    }

    #[tokio::test]
    async fn offsets_are_contiguous_and_delivered_in_order() {
        let b = MemoryBroker::new();
        let r = room("r");
        let rec = Arc::new(Recorder::default());
        let feed = b.attach(rec.clone());
        feed.set_interest(&r, true);
        feed.wait_subscribed(&r).await.unwrap();
        let first = publish(&b, &r, 10, 1).await;
        for n in 2..=5 {
            publish(&b, &r, 10, n).await;
        }
        assert_eq!(first.offset, 1);
        let got: Vec<u64> = lock(&rec.0).iter().map(|(_, o)| *o).collect();
        assert_eq!(got, vec![1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn history_since_recovers_only_within_the_window() {
        let b = MemoryBroker::new();
        let r = room("h");
        for n in 1..=10 {
            publish(&b, &r, 4, n).await;
        }
        let pos = b.position(&r, retention(4)).await.unwrap();
        assert_eq!(pos.offset, 10);
        let since = |offset| HistoryQuery {
            since: Some(Position {
                offset,
                epoch: pos.epoch.clone(),
            }),
            limit: usize::MAX,
        };
        let ok = b.history(&r, retention(4), since(6)).await.unwrap();
        assert_eq!(ok.recovered, Some(true));
        assert_eq!(
            ok.events.iter().map(|e| e.offset).collect::<Vec<_>>(),
            vec![7, 8, 9, 10]
        );
        let too_old = b.history(&r, retention(4), since(5)).await.unwrap();
        assert_eq!(too_old.recovered, Some(false));
        assert!(too_old.events.is_empty());
        let up_to_date = b.history(&r, retention(4), since(10)).await.unwrap();
        assert_eq!((up_to_date.recovered, up_to_date.events.len()), (Some(true), 0));
        let future = b.history(&r, retention(4), since(11)).await.unwrap();
        assert_eq!(future.recovered, Some(false));
        let other_epoch = HistoryQuery {
            since: Some(Position {
                offset: 8,
                epoch: "other".into(),
            }),
            limit: 10,
        };
        assert_eq!(
            b.history(&r, retention(4), other_epoch).await.unwrap().recovered,
            Some(false)
        );
        let newest = b
            .history(
                &r,
                retention(4),
                HistoryQuery {
                    since: None,
                    limit: 2,
                },
            )
            .await
            .unwrap();
        assert_eq!(
            newest.events.iter().map(|e| e.offset).collect::<Vec<_>>(),
            vec![9, 10]
        );
    }

    #[tokio::test]
    async fn smaller_window_applies_even_if_more_is_stored() {
        let b = MemoryBroker::new();
        let r = room("w");
        for n in 1..=10 {
            publish(&b, &r, 10, n).await;
        }
        let epoch = b.position(&r, retention(10)).await.unwrap().epoch;
        let q = HistoryQuery {
            since: Some(Position { offset: 2, epoch }),
            limit: usize::MAX,
        };
        assert_eq!(
            b.history(&r, retention(3), q).await.unwrap().recovered,
            Some(false)
        );
    }

    #[tokio::test]
    async fn presence_counts_connections_per_user() {
        let b = MemoryBroker::new();
        let r = room("p");
        assert!(b.presence_join(&r, "alice", "c1").await.unwrap());
        assert!(!b.presence_join(&r, "alice", "c2").await.unwrap());
        assert!(b.presence_join(&r, "bob", "c3").await.unwrap());
        let list = b.presence(&r).await.unwrap();
        assert_eq!(
            list,
            vec![
                PresenceMember {
                    user: "alice".into(),
                    conns: 2
                },
                PresenceMember {
                    user: "bob".into(),
                    conns: 1
                },
            ]
        );
        assert!(!b.presence_leave(&r, "alice", "c1").await.unwrap());
        assert!(b.presence_leave(&r, "alice", "c2").await.unwrap());
        assert!(!b.presence_leave(&r, "alice", "c2").await.unwrap());
        assert_eq!(b.presence(&r).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn expired_metadata_starts_a_new_epoch() {
        let b = MemoryBroker::new();
        let r = room("x");
        let short = Retention {
            history_size: 5,
            history_ttl_s: 0,
            meta_ttl_s: 0,
        };
        let data = RawValue::from_string("1".into()).unwrap();
        let req = PublishRequest {
            room: &r,
            event: "e",
            data: &data,
            retention: short,
            notification: None,
        };
        let a = b.publish(req).await.unwrap();
        let c = b.publish(req).await.unwrap();
        assert_eq!((a.offset, c.offset), (1, 1));
        assert_ne!(a.epoch, c.epoch);
    }
}
