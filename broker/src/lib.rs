//! The broker: how an update travels from whoever publishes it to every
//! gateway node with members in its room, and where a room's history and
//! presence live.
//!
//! [`Broker`] is the contract both engines keep; [`memory`] is the embedded
//! single-node engine used by `herald standalone`. A gateway node
//! [`attach`](Broker::attach)es one [`FeedSink`] and receives, per room it
//! subscribed through the returned [`Feed`], every event in offset order
//! (or a `resync` when continuity was lost).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use herald_common::config::RateLimit;
use herald_common::policy::Retention;
use herald_common::protocol::{Position, PresenceMember};
use herald_common::rooms::RoomName;
use serde_json::value::RawValue;

pub mod gcra;
pub mod memory;
pub mod redis;

pub use memory::MemoryBroker;
pub use redis::{RedisBroker, RedisOptions};

/// Why a broker operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The backing service is unreachable; the caller may retry.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// One stored event: its offset, publish time and finished client frame.
#[derive(Debug, Clone)]
pub struct EventRecord {
    pub offset: u64,
    /// Publish time, milliseconds since the Unix epoch.
    pub ts: u64,
    /// The complete `event` frame as sent to clients, serialized once.
    pub frame: Bytes,
}

/// What to publish.
#[derive(Debug, Clone, Copy)]
pub struct PublishRequest<'a> {
    pub room: &'a RoomName,
    pub event: &'a str,
    pub data: &'a RawValue,
    pub retention: Retention,
    /// The notification id, for notification events.
    pub notification: Option<&'a str>,
}

/// A history read: from a client's position, or the newest events.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    /// Events after this position; `None` for the newest `limit` events.
    pub since: Option<Position>,
    pub limit: usize,
}

/// The answer to a history read.
#[derive(Debug, Clone)]
pub struct HistoryRange {
    /// Events, oldest first.
    pub events: Vec<EventRecord>,
    /// The room's newest position when the history was read.
    pub position: Position,
    /// Present when `since` was given: whether every event after it could
    /// be returned (PROTOCOL.md §1.5).
    pub recovered: Option<bool>,
}

/// Receives what the broker delivers to one gateway node. Called from the
/// broker's delivery context: implementations must not block or await.
pub trait FeedSink: Send + Sync + 'static {
    /// A room event, in offset order per room.
    fn on_event(&self, room: &RoomName, epoch: &str, record: &EventRecord);
    /// A message outside the offset sequence (member events); `exclude` is
    /// the connection it must not be sent to.
    fn on_transient(&self, room: &RoomName, frame: &Bytes, exclude: Option<&str>);
    /// Continuity in `room` was lost; clients must refetch and continue
    /// from `position`.
    fn on_resync(&self, room: &RoomName, position: &Position);
    /// A control message for the node's connections in `room` (sent on
    /// `user:` rooms, so it reaches only the nodes holding that user).
    fn on_control(&self, room: &RoomName, payload: &Bytes);
    /// The last position the node delivered in `room` and the room's
    /// retention: where a gap fill starts after the broker lost contact.
    fn last_position(&self, room: &RoomName) -> Option<(Position, Retention)>;
}

/// A gateway node's entry in the node registry (`GET /v1/stats`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub connections: u64,
    pub rooms: u64,
    /// Milliseconds since the Unix epoch.
    pub started_at: u64,
    /// Milliseconds since the Unix epoch.
    pub last_seen: u64,
}

/// A node's subscription to room channels.
///
/// Interest is declared synchronously (the gateway's hub calls
/// [`set_interest`](Feed::set_interest) under its own lock, so the order of
/// declarations is the order of joins and leaves); the engine reconciles its
/// real subscriptions in the background, and
/// [`wait_subscribed`](Feed::wait_subscribed) tells when a room is live.
#[async_trait]
pub trait Feed: Send + Sync {
    /// Declares whether this node wants `room`'s events. Must not block.
    fn set_interest(&self, room: &RoomName, interested: bool);
    /// Resolves once every event published from now on in `room` will be
    /// delivered to this feed's sink.
    async fn wait_subscribed(&self, room: &RoomName) -> Result<(), BrokerError>;
    /// False while the feed has lost its connection to the broker.
    fn is_healthy(&self) -> bool {
        true
    }
}

/// The broker contract, kept by every engine.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Appends the event to the room's history and delivers it to every
    /// subscribed node; returns the event's position.
    async fn publish(&self, req: PublishRequest<'_>) -> Result<Position, BrokerError>;

    /// [`publish`](Broker::publish), at most once per `key` and room within
    /// [`IDEMPOTENCY_TTL`]: a repeat returns the first position and
    /// publishes nothing, also when repeats race on several API nodes (the
    /// check and the publish are one atomic step).
    async fn publish_once(&self, req: PublishRequest<'_>, key: &str) -> Result<Position, BrokerError>;

    /// The room's newest position (creating its epoch at first use).
    async fn position(&self, room: &RoomName, retention: Retention) -> Result<Position, BrokerError>;

    /// Reads history (PROTOCOL.md §1.5): never beyond the newest
    /// `retention.history_size` events.
    async fn history(
        &self,
        room: &RoomName,
        retention: Retention,
        query: HistoryQuery,
    ) -> Result<HistoryRange, BrokerError>;

    /// Delivers a frame outside the offset sequence to the room's members.
    async fn publish_transient(
        &self,
        room: &RoomName,
        frame: Bytes,
        exclude: Option<&str>,
    ) -> Result<(), BrokerError>;

    /// Sends a control message to the nodes that have members in `room`.
    async fn publish_control(&self, room: &RoomName, payload: Bytes) -> Result<(), BrokerError>;

    /// Sends `command` to the nodes that have members in `room` as a
    /// request (its payload is `<request id>\n<command>`, see
    /// [`split_request`]), waits — boundedly — for each of them to
    /// [`reply`](Broker::reply), and returns the sum of their counts.
    async fn request(&self, room: &RoomName, command: &[u8]) -> Result<u64, BrokerError>;

    /// Answers a request received through [`FeedSink::on_control`].
    async fn reply(&self, request_id: &str, count: u64) -> Result<(), BrokerError>;

    /// Records that connection `conn` of `user` is in `room`; true when it is
    /// the user's first connection there.
    async fn presence_join(&self, room: &RoomName, user: &str, conn: &str) -> Result<bool, BrokerError>;

    /// Forgets connection `conn` of `user` in `room`; true when it was the
    /// user's last connection there.
    async fn presence_leave(&self, room: &RoomName, user: &str, conn: &str) -> Result<bool, BrokerError>;

    /// The room's members, with their connection counts.
    async fn presence(&self, room: &RoomName) -> Result<Vec<PresenceMember>, BrokerError>;

    /// Attaches a node: its sink receives what its feed subscribes to.
    fn attach(&self, sink: Arc<dyn FeedSink>) -> Arc<dyn Feed>;

    /// Succeeds when the broker is reachable (readiness).
    async fn ping(&self) -> Result<(), BrokerError>;

    /// Takes one unit from the token bucket `key` (shared by every node),
    /// GCRA-style: `Ok(None)` when allowed, `Ok(Some(retry_after))` when
    /// over the limit.
    async fn rate_limit(
        &self,
        key: &str,
        limit: RateLimit,
    ) -> Result<Option<std::time::Duration>, BrokerError>;

    /// Records a gateway node's heartbeat in the node registry.
    async fn heartbeat(&self, node: &NodeInfo) -> Result<(), BrokerError>;

    /// Gateway nodes that sent a heartbeat recently.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError>;
}

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// How long a [`Broker::request`] waits for the nodes' replies.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Builds a request payload: `<request id>\n<command>`.
pub fn request_payload(request_id: &str, command: &[u8]) -> Bytes {
    let mut payload = Vec::with_capacity(request_id.len() + 1 + command.len());
    payload.extend_from_slice(request_id.as_bytes());
    payload.push(b'\n');
    payload.extend_from_slice(command);
    Bytes::from(payload)
}

/// Splits a request payload into its id and command.
pub fn split_request(payload: &[u8]) -> Option<(&str, &[u8])> {
    let newline = payload.iter().position(|b| *b == b'\n')?;
    let id = std::str::from_utf8(&payload[..newline]).ok()?;
    Some((id, &payload[newline + 1..]))
}

/// Serializes an event frame once; engines store and deliver these bytes.
pub fn event_frame(req: &PublishRequest<'_>, offset: u64, epoch: &str, ts: u64) -> Bytes {
    herald_common::protocol::ServerFrame::Event {
        room: req.room.as_str(),
        event: req.event,
        data: req.data,
        offset,
        epoch,
        ts,
        notification: req.notification,
    }
    .to_bytes()
}
