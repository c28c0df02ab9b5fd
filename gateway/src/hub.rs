//! The local room hub: which connections of this node are in which room,
//! and the fan-out of the broker's deliveries to them.
//!
//! Rooms are spread over shards, each behind its own short-held
//! `std::sync::Mutex` (never held across an await), so joins in one room
//! don't contend with fan-out in another. A delivery hands the *same* frame
//! bytes to every member's queue: serialization happens once, upstream.
//!
//! Joining is two-phase so a join with `since` can neither miss nor repeat
//! an event: the member is first added as *pending* (live events are
//! buffered for it), the session then reads history and replays it, and
//! [`Hub::activate`] flushes the buffered events that come after the
//! replayed position ([`Hub::drain_pending`]) and makes it live under the
//! shard lock once nothing is left.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use herald_broker::{Broker, EventRecord, Feed, FeedSink};
use herald_common::control::Command;
use herald_common::policy::{Policies, Retention};
use herald_common::protocol::{CloseCode, LeftReason};
use herald_common::protocol::{Position, ServerFrame};
use herald_common::rooms::RoomName;
use herald_common::rooms::RoomPattern;

use crate::metrics::GatewayMetrics;
use crate::outbound::{ConnHandle, Outbound, SessionCommand};

const SHARDS: usize = 64;

/// What a pending member missed while its join was in progress.
enum Buffered {
    Event {
        epoch: Arc<str>,
        offset: u64,
        ts: u64,
        frame: Bytes,
    },
    Frame(Bytes),
}

struct Member {
    conn: Arc<ConnHandle>,
    /// `Some` while the join is in progress; bounded by the queue size.
    pending: Option<Vec<Buffered>>,
    /// The position the member joined at (replay or `joined`) while the
    /// node's feed had not delivered that far yet: the feed's events up to
    /// it are skipped for this member (it already has them, or was told
    /// they are before its `joined`). Cleared by the first later event.
    skip_through: Option<(Arc<str>, u64)>,
}

/// The hub's view of one room.
#[derive(Default)]
struct LocalRoom {
    members: HashMap<u64, Member>,
    /// Epoch and offset of the last event delivered, to notice a lost
    /// history (new epoch) or a gap and resync instead of skipping.
    last: Option<(Arc<str>, u64)>,
}

/// The node's room membership and fan-out.
pub struct Hub {
    shards: Box<[Mutex<HashMap<RoomName, LocalRoom>>]>,
    feed: std::sync::OnceLock<Arc<dyn Feed>>,
    /// For replies to the server API's commands.
    broker: std::sync::OnceLock<Arc<dyn Broker>>,
    /// Cap on events buffered for one pending member.
    pending_cap: usize,
    rooms: AtomicI64,
    metrics: GatewayMetrics,
    /// Room policies, for the retention a gap fill must respect.
    policies: Arc<Policies>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Hub {
    pub fn new(pending_cap: usize, metrics: GatewayMetrics, policies: Arc<Policies>) -> Self {
        Self {
            policies,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            feed: std::sync::OnceLock::new(),
            broker: std::sync::OnceLock::new(),
            pending_cap,
            rooms: AtomicI64::new(0),
            metrics,
        }
    }

    /// Connects the hub to the broker and the feed it was attached with.
    pub fn connect(&self, broker: Arc<dyn Broker>, feed: Arc<dyn Feed>) {
        let _ = self.broker.set(broker);
        let _ = self.feed.set(feed);
    }

    /// Local connections in `room`.
    fn members_of(&self, room: &RoomName) -> Vec<Arc<ConnHandle>> {
        let shard = self.shard(room);
        shard
            .get(room)
            .map(|local| local.members.values().map(|m| m.conn.clone()).collect())
            .unwrap_or_default()
    }

    /// Carries out a server API command received on `room` (the user's or
    /// role's room); returns how many local connections it affected.
    fn apply(&self, room: &RoomName, command: Command) -> u64 {
        match command {
            Command::Disconnect { user } => {
                if room.strip_prefix("user:") != Some(user.as_str()) {
                    return 0;
                }
                let conns = self.members_of(room);
                for conn in &conns {
                    conn.close(CloseCode::Kicked, "disconnected by the server");
                }
                conns.len() as u64
            }
            Command::Unsubscribe { user, room: target } => {
                let Ok(target) = RoomName::new(&target) else {
                    return 0;
                };
                if room.strip_prefix("user:") != Some(user.as_str()) {
                    return 0;
                }
                let in_target: std::collections::HashSet<u64> =
                    self.members_of(&target).iter().map(|c| c.id).collect();
                let mut count = 0;
                for conn in self.members_of(room).iter().filter(|c| in_target.contains(&c.id)) {
                    conn.command(SessionCommand::Leave {
                        room: target.clone(),
                        reason: LeftReason::Unsubscribed,
                    });
                    count += 1;
                }
                count
            }
            Command::Revoke { subject, pattern } => {
                let Ok(pattern) = RoomPattern::parse(&pattern) else {
                    return 0;
                };
                if subject != room.as_str() {
                    return 0;
                }
                let conns = self.members_of(room);
                for conn in &conns {
                    conn.command(SessionCommand::Recheck {
                        pattern: pattern.clone(),
                    });
                }
                conns.len() as u64
            }
        }
    }

    fn shard(&self, room: &str) -> MutexGuard<'_, HashMap<RoomName, LocalRoom>> {
        let mut h = DefaultHasher::new();
        room.hash(&mut h);
        lock(&self.shards[h.finish() as usize % SHARDS])
    }

    fn set_interest(&self, room: &RoomName, interested: bool) {
        if let Some(feed) = self.feed.get() {
            feed.set_interest(room, interested);
        }
        let rooms = if interested {
            self.rooms.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.rooms.fetch_sub(1, Ordering::Relaxed) - 1
        };
        self.metrics.rooms.set(rooms as f64);
    }

    /// Number of rooms with at least one local member.
    pub fn room_count(&self) -> usize {
        self.rooms.load(Ordering::Relaxed).max(0) as usize
    }

    /// Phase one of a join: the member is added as pending, so it buffers
    /// every event delivered from now on.
    pub fn add_pending(&self, room: &RoomName, conn: &Arc<ConnHandle>) {
        let mut shard = self.shard(room);
        let local = shard.entry(room.clone()).or_insert_with(|| {
            self.set_interest(room, true);
            LocalRoom::default()
        });
        local.members.insert(
            conn.id,
            Member {
                conn: conn.clone(),
                pending: Some(Vec::new()),
                skip_through: None,
            },
        );
    }

    /// Phase two, repeated until it returns `None`: takes what was
    /// buffered for a pending member after `position` (the replayed or
    /// `joined` position). When nothing is left, the member becomes live in
    /// the same critical section, so no event can slip between the flush
    /// and live delivery. The session sends the items it gets (waiting for
    /// room in the queue, outside the lock) and calls again.
    /// `Err(Gone)` when the member left or was cut meanwhile.
    pub fn drain_pending(
        &self,
        room: &RoomName,
        conn_id: u64,
        position: &Position,
    ) -> Result<Option<Vec<Outbound>>, crate::outbound::Gone> {
        let mut shard = self.shard(room);
        let local = shard.get_mut(room).ok_or(crate::outbound::Gone)?;
        // The first member's position is where the node's continuity
        // starts (and where a gap fill would resume).
        if local.last.is_none() {
            local.last = Some((Arc::from(position.epoch.as_str()), position.offset));
        }
        // History is read on another connection than the feed's, so it can
        // be ahead of what the feed has delivered here: those events will
        // still arrive through the feed, after this member is live.
        let feed_behind = match &local.last {
            Some((epoch, last)) => **epoch == *position.epoch && *last < position.offset,
            None => false,
        };
        let member = local.members.get_mut(&conn_id).ok_or(crate::outbound::Gone)?;
        let Some(buffer) = member.pending.as_mut() else {
            return Ok(None);
        };
        if buffer.is_empty() {
            member.pending = None;
            if feed_behind {
                member.skip_through = Some((Arc::from(position.epoch.as_str()), position.offset));
            }
            return Ok(None);
        }
        let items = std::mem::take(buffer)
            .into_iter()
            .filter_map(|item| match item {
                // Already covered by the replay or the `joined` position.
                Buffered::Event { epoch, offset, .. }
                    if *epoch == *position.epoch && offset <= position.offset =>
                {
                    None
                }
                Buffered::Event { ts, frame, .. } => Some(Outbound::Event { frame, ts }),
                Buffered::Frame(frame) => Some(Outbound::Frame(frame)),
            })
            .collect();
        Ok(Some(items))
    }

    /// Removes a member; the last member out ends the node's interest.
    /// Returns true if it was a member.
    pub fn remove(&self, room: &RoomName, conn_id: u64) -> bool {
        let mut shard = self.shard(room);
        let Some(local) = shard.get_mut(room) else {
            return false;
        };
        let removed = local.members.remove(&conn_id).is_some();
        if local.members.is_empty() {
            shard.remove(room);
            self.set_interest(room, false);
        }
        removed
    }

    /// Sends one frame to every member of `room` (pending ones buffer it).
    fn fan_out(&self, room: &RoomName, item: impl Fn() -> Buffered, exclude: Option<&str>) {
        let mut shard = self.shard(room);
        if let Some(local) = shard.get_mut(room) {
            self.fan_out_locked(local, item, exclude);
        }
    }

    fn fan_out_locked(&self, local: &mut LocalRoom, item: impl Fn() -> Buffered, exclude: Option<&str>) {
        let mut delivered = 0u64;
        for member in local.members.values_mut() {
            if exclude.is_some_and(|conn| conn == member.conn.conn_id) {
                continue;
            }
            match &mut member.pending {
                Some(buffer) => {
                    if buffer.len() >= self.pending_cap {
                        member.conn.close(CloseCode::SlowConsumer, "slow consumer (join)");
                    } else {
                        buffer.push(item());
                    }
                }
                None => {
                    let ok = match item() {
                        Buffered::Event {
                            epoch,
                            offset,
                            ts,
                            frame,
                        } => {
                            if let Some((through_epoch, through)) = &member.skip_through {
                                if *through_epoch == epoch && offset <= *through {
                                    continue;
                                }
                                member.skip_through = None;
                            }
                            member.conn.push_event(&frame, ts)
                        }
                        Buffered::Frame(frame) => member.conn.push(Outbound::Frame(frame)),
                    };
                    delivered += ok as u64;
                }
            }
        }
        self.metrics.fanout_batch.record(delivered as f64);
    }
}

fn resync_frame(room: &RoomName, position: &Position) -> Bytes {
    ServerFrame::Resync {
        room: room.as_str(),
        offset: position.offset,
        epoch: &position.epoch,
    }
    .to_bytes()
}

impl FeedSink for Hub {
    fn on_event(&self, room: &RoomName, epoch: &str, record: &EventRecord) {
        let mut shard = self.shard(room);
        let Some(local) = shard.get_mut(room) else { return };
        // Continuity check: a new epoch, or an offset that is not the next
        // one, means this node lost events; members must resync rather
        // than silently skip. An offset already delivered is a duplicate.
        let gap = match &local.last {
            Some((e, last)) if **e == *epoch => {
                if record.offset <= *last {
                    return;
                }
                record.offset != last + 1
            }
            Some(_) => true,
            None => false,
        };
        let epoch: Arc<str> = Arc::from(epoch);
        local.last = Some((epoch.clone(), record.offset));
        self.metrics.broker_events.increment(1);
        if gap {
            let frame = resync_frame(
                room,
                &Position {
                    offset: record.offset - 1,
                    epoch: epoch.to_string(),
                },
            );
            self.fan_out_locked(local, || Buffered::Frame(frame.clone()), None);
        }
        self.fan_out_locked(
            local,
            || Buffered::Event {
                epoch: epoch.clone(),
                offset: record.offset,
                ts: record.ts,
                frame: record.frame.clone(),
            },
            None,
        );
    }

    fn on_transient(&self, room: &RoomName, frame: &Bytes, exclude: Option<&str>) {
        self.fan_out(room, || Buffered::Frame(frame.clone()), exclude);
    }

    fn on_resync(&self, room: &RoomName, position: &Position) {
        let frame = resync_frame(room, position);
        let mut shard = self.shard(room);
        let Some(local) = shard.get_mut(room) else { return };
        local.last = Some((Arc::from(position.epoch.as_str()), position.offset));
        self.fan_out_locked(local, || Buffered::Frame(frame.clone()), None);
    }

    fn on_control(&self, room: &RoomName, payload: &Bytes) {
        let Some((request_id, command)) = herald_broker::split_request(payload) else {
            tracing::warn!(room = %room, "malformed control message ignored");
            return;
        };
        let count = match Command::parse(command) {
            Some(command) => self.apply(room, command),
            None => {
                tracing::warn!(room = %room, "unknown control command ignored");
                0
            }
        };
        // Every node that received the request replies, so the requester
        // knows when it has heard from all of them.
        if let Some(broker) = self.broker.get() {
            let broker = broker.clone();
            let request_id = request_id.to_string();
            tokio::spawn(async move {
                if let Err(e) = broker.reply(&request_id, count).await {
                    tracing::warn!(error = %e, "control reply failed");
                }
            });
        }
    }

    fn last_position(&self, room: &RoomName) -> Option<(Position, Retention)> {
        let shard = self.shard(room);
        let (epoch, offset) = shard.get(room)?.last.clone()?;
        Some((
            Position {
                offset,
                epoch: epoch.to_string(),
            },
            self.policies.lookup(room).retention,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: u64) -> EventRecord {
        EventRecord {
            offset,
            ts: 0,
            frame: Bytes::from(format!("{{\"offset\":{offset}}}")),
        }
    }

    fn drain(rx: &mut tokio::sync::mpsc::Receiver<Outbound>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(item) = rx.try_recv() {
            let bytes = match item {
                Outbound::Event { frame, .. } | Outbound::Frame(frame) => frame,
            };
            out.push(String::from_utf8_lossy(&bytes).into_owned());
        }
        out
    }

    #[test]
    fn pending_member_gets_reply_then_only_newer_events() {
        let hub = Hub::new(16, GatewayMetrics::new(), Arc::default());
        let room = RoomName::new("r").unwrap();
        let (conn, mut rx, _) = ConnHandle::new(1, "n.1".into(), 64);
        hub.add_pending(&room, &conn);
        for offset in 1..=4 {
            hub.on_event(&room, "e", &record(offset));
        }
        assert!(drain(&mut rx).is_empty(), "pending members buffer");
        let position = Position {
            offset: 2,
            epoch: "e".into(),
        };
        let flushed = hub.drain_pending(&room, 1, &position).unwrap().unwrap();
        assert_eq!(flushed.len(), 2, "offsets 3 and 4 are after the position");
        hub.on_event(&room, "e", &record(5));
        assert!(
            drain(&mut rx).is_empty(),
            "still pending until the buffer is empty"
        );
        let flushed = hub.drain_pending(&room, 1, &position).unwrap().unwrap();
        assert_eq!(flushed.len(), 1, "offset 5 was buffered behind the flush");
        assert!(
            hub.drain_pending(&room, 1, &position).unwrap().is_none(),
            "now live"
        );
        hub.on_event(&room, "e", &record(6));
        hub.on_event(&room, "e", &record(6));
        assert_eq!(drain(&mut rx), vec!["{\"offset\":6}"], "duplicates are dropped");
    }

    #[test]
    fn member_whose_buffer_holds_only_old_events_still_goes_live() {
        let hub = Hub::new(16, GatewayMetrics::new(), Arc::default());
        let room = RoomName::new("r").unwrap();
        let (conn, mut rx, _) = ConnHandle::new(1, "n.1".into(), 64);
        hub.add_pending(&room, &conn);
        hub.on_event(&room, "e", &record(1));
        let position = Position {
            offset: 1,
            epoch: "e".into(),
        };
        assert_eq!(
            hub.drain_pending(&room, 1, &position).unwrap().map(|v| v.len()),
            Some(0)
        );
        assert!(hub.drain_pending(&room, 1, &position).unwrap().is_none());
        hub.on_event(&room, "e", &record(2));
        assert_eq!(drain(&mut rx), vec!["{\"offset\":2}"]);
    }

    #[test]
    fn member_joining_ahead_of_the_feed_gets_no_duplicate() {
        let hub = Hub::new(16, GatewayMetrics::new(), Arc::default());
        let room = RoomName::new("r").unwrap();
        let at = |offset| Position {
            offset,
            epoch: "e".into(),
        };
        let (old, mut rx_old, _) = ConnHandle::new(1, "n.1".into(), 64);
        hub.add_pending(&room, &old);
        assert!(hub.drain_pending(&room, 1, &at(0)).unwrap().is_none());
        hub.on_event(&room, "e", &record(1));
        // A second member's history read already saw offsets 2 and 3, which
        // the feed has not delivered to this node yet.
        let (new, mut rx_new, _) = ConnHandle::new(2, "n.2".into(), 64);
        hub.add_pending(&room, &new);
        assert!(hub.drain_pending(&room, 2, &at(3)).unwrap().is_none());
        for offset in 2..=4 {
            hub.on_event(&room, "e", &record(offset));
        }
        assert_eq!(drain(&mut rx_old).len(), 4);
        assert_eq!(
            drain(&mut rx_new),
            vec!["{\"offset\":4}"],
            "2 and 3 were replayed"
        );
    }

    #[test]
    fn gap_or_new_epoch_sends_resync_first() {
        let hub = Hub::new(16, GatewayMetrics::new(), Arc::default());
        let room = RoomName::new("r").unwrap();
        let (conn, mut rx, _) = ConnHandle::new(1, "n.1".into(), 64);
        hub.add_pending(&room, &conn);
        hub.drain_pending(
            &room,
            1,
            &Position {
                offset: 0,
                epoch: "e".into(),
            },
        )
        .unwrap();
        hub.on_event(&room, "e", &record(1));
        hub.on_event(&room, "f", &record(1));
        let got = drain(&mut rx);
        assert_eq!(got.len(), 3);
        assert!(
            got[1].contains("\"op\":\"resync\"") && got[1].contains("\"epoch\":\"f\""),
            "{got:?}"
        );
    }

    #[test]
    fn transient_frames_skip_the_excluded_connection() {
        let hub = Hub::new(16, GatewayMetrics::new(), Arc::default());
        let room = RoomName::new("r").unwrap();
        let (a, mut rx_a, _) = ConnHandle::new(1, "n.1".into(), 8);
        let (b, mut rx_b, _) = ConnHandle::new(2, "n.2".into(), 8);
        for c in [&a, &b] {
            hub.add_pending(&room, c);
            hub.drain_pending(
                &room,
                c.id,
                &Position {
                    offset: 0,
                    epoch: "e".into(),
                },
            )
            .unwrap();
        }
        hub.on_transient(&room, &Bytes::from_static(b"member"), Some("n.1"));
        assert!(drain(&mut rx_a).is_empty());
        assert_eq!(drain(&mut rx_b), vec!["member"]);
        assert!(hub.remove(&room, 1));
        assert!(hub.remove(&room, 2));
        assert_eq!(hub.room_count(), 0);
    }

    #[test]
    fn slow_member_is_cut_and_others_still_receive() {
        let hub = Hub::new(16, GatewayMetrics::new(), Arc::default());
        let room = RoomName::new("r").unwrap();
        let (slow, _rx_slow, _) = ConnHandle::new(1, "n.1".into(), 2);
        let (fast, mut rx_fast, _) = ConnHandle::new(2, "n.2".into(), 64);
        for c in [&slow, &fast] {
            hub.add_pending(&room, c);
            hub.drain_pending(
                &room,
                c.id,
                &Position {
                    offset: 0,
                    epoch: "e".into(),
                },
            )
            .unwrap();
        }
        for offset in 1..=5 {
            hub.on_event(&room, "e", &record(offset));
        }
        assert_eq!(slow.close_signal().reason().map(|r| r.code), Some(4009));
        assert_eq!(drain(&mut rx_fast).len(), 5);
    }
}
