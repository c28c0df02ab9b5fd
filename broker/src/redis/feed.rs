//! A gateway node's subscription on the Redis engine: one dedicated pub/sub
//! connection, reconciled against the rooms the node's hub wants.
//!
//! - Interest changes are recorded synchronously (under the hub's lock) and
//!   a driver task turns the difference between *wanted* and *subscribed*
//!   into batched `SUBSCRIBE`/`UNSUBSCRIBE` commands: a storm of joins costs
//!   a few round trips, not one each.
//! - When the connection drops, the driver reconnects with exponential
//!   backoff and full jitter, resubscribes every wanted room, then fills
//!   each room's gap from history, starting after the last position the
//!   node's hub delivered, *before* it reads any message of the new
//!   connection; rooms whose gap cannot be filled get a `resync`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use herald_common::rooms::RoomName;
use tokio::sync::{Notify, oneshot};

use super::wire::{self, ChannelMessage};
use super::{OP_TIMEOUT, RedisBroker, keys};
use crate::{BrokerError, EventRecord, Feed, FeedSink};

/// Channels per SUBSCRIBE/UNSUBSCRIBE command.
const BATCH: usize = 1000;
/// How long a join waits for its room to be subscribed.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);
/// Liveness check of an idle subscriber connection.
const PING_EVERY: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Default)]
struct State {
    wanted: HashSet<RoomName>,
    /// Confirmed on the current connection.
    subscribed: HashSet<RoomName>,
    waiters: HashMap<RoomName, Vec<oneshot::Sender<()>>>,
}

/// The node's Redis subscription.
pub(crate) struct RedisFeed {
    state: Mutex<State>,
    wake: Notify,
    connected: AtomicBool,
}

impl RedisFeed {
    /// Creates the feed and starts its driver task.
    pub(crate) fn start(broker: RedisBroker, sink: Arc<dyn FeedSink>) -> Arc<Self> {
        let feed = Arc::new(Self {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            connected: AtomicBool::new(false),
        });
        tokio::spawn(drive(Arc::downgrade(&feed), broker, sink));
        feed
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Feed for RedisFeed {
    fn set_interest(&self, room: &RoomName, interested: bool) {
        let mut state = self.state();
        if interested {
            state.wanted.insert(room.clone());
        } else {
            state.wanted.remove(room);
            state.waiters.remove(room);
        }
        drop(state);
        self.wake.notify_one();
    }

    async fn wait_subscribed(&self, room: &RoomName) -> Result<(), BrokerError> {
        let rx = {
            let mut state = self.state();
            if state.subscribed.contains(room) {
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            state.waiters.entry(room.clone()).or_default().push(tx);
            rx
        };
        match tokio::time::timeout(SUBSCRIBE_WAIT, rx).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(BrokerError::Unavailable(format!("could not subscribe to {room}"))),
        }
    }

    fn is_healthy(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// Exponential backoff with full jitter.
fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_MIN
        .saturating_mul(1u32 << attempt.min(10))
        .min(BACKOFF_MAX);
    let mut random = [0u8; 4];
    let _ = getrandom::fill(&mut random);
    ceiling.mul_f64(u32::from_le_bytes(random) as f64 / u32::MAX as f64)
}

/// Why a connection's session ended.
enum Ended {
    /// The feed was dropped: stop for good.
    FeedGone,
    /// The connection failed: reconnect.
    Lost(String),
}

async fn drive(feed: std::sync::Weak<RedisFeed>, broker: RedisBroker, sink: Arc<dyn FeedSink>) {
    let mut attempt = 0u32;
    let mut first = true;
    loop {
        let connected = tokio::time::timeout(OP_TIMEOUT, broker.inner.client.get_async_pubsub()).await;
        let pubsub = match connected {
            Ok(Ok(pubsub)) => pubsub,
            failure => {
                let reason = match failure {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                };
                if feed.upgrade().is_none() {
                    return;
                }
                let delay = backoff(attempt);
                attempt = attempt.saturating_add(1);
                tracing::warn!(error = %reason, retry_in_ms = delay.as_millis() as u64, "Redis subscriber cannot connect");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        if !first {
            metrics::counter!("herald_redis_reconnects_total").increment(1);
            tracing::info!("Redis subscriber reconnected");
        }
        match session(&feed, &broker, &sink, pubsub, !first).await {
            Ended::FeedGone => return,
            Ended::Lost(reason) => {
                tracing::warn!(error = %reason, "Redis subscriber connection lost");
                if let Some(feed) = feed.upgrade() {
                    feed.connected.store(false, Ordering::Relaxed);
                    feed.state().subscribed.clear();
                }
                first = false;
                attempt = 0;
                tokio::time::sleep(backoff(0)).await;
            }
        }
    }
}

/// Runs one subscriber connection until it fails or the feed is dropped.
async fn session(
    feed: &std::sync::Weak<RedisFeed>,
    broker: &RedisBroker,
    sink: &Arc<dyn FeedSink>,
    pubsub: redis::aio::PubSub,
    after_loss: bool,
) -> Ended {
    let (mut commands, mut messages) = pubsub.split();
    // Resubscribe everything wanted (batched), then fill gaps, all before
    // the first message of this connection is read: messages wait in the
    // connection's buffer, so history replay and live events stay ordered.
    if let Err(reason) = reconcile(feed, &mut commands).await {
        return reason;
    }
    let Some(strong) = feed.upgrade() else {
        return Ended::FeedGone;
    };
    strong.connected.store(true, Ordering::Relaxed);
    if after_loss {
        let rooms: Vec<RoomName> = strong.state().subscribed.iter().cloned().collect();
        drop(strong);
        fill_gaps(broker, sink, &rooms).await;
    } else {
        drop(strong);
    }

    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        // Held for one wait only, so dropping the feed ends this task soon.
        let Some(strong) = feed.upgrade() else {
            return Ended::FeedGone;
        };
        let wake = strong.wake.notified();
        tokio::select! {
            message = messages.next() => match message {
                Some(message) => dispatch(sink, &message),
                None => return Ended::Lost("subscriber stream ended".into()),
            },
            _ = wake => {
                if let Err(reason) = reconcile(feed, &mut commands).await {
                    return reason;
                }
            }
            _ = ping.tick() => {
                // On a subscribed RESP2 connection PING answers
                // `["pong", ""]`, not `PONG`: any reply proves liveness.
                let pong = tokio::time::timeout(OP_TIMEOUT, commands.ping::<redis::Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    return Ended::Lost("subscriber ping failed".into());
                }
            }
        }
    }
}

/// Brings the connection's subscriptions in line with what is wanted.
async fn reconcile(
    feed: &std::sync::Weak<RedisFeed>,
    commands: &mut redis::aio::PubSubSink,
) -> Result<(), Ended> {
    loop {
        let (subscribe, unsubscribe) = {
            let Some(strong) = feed.upgrade() else {
                return Err(Ended::FeedGone);
            };
            let mut state = strong.state();
            let subscribe: Vec<RoomName> = state
                .wanted
                .difference(&state.subscribed)
                .take(BATCH)
                .cloned()
                .collect();
            let unsubscribe: Vec<RoomName> = state
                .subscribed
                .difference(&state.wanted)
                .take(BATCH)
                .cloned()
                .collect();
            // No longer "subscribed" from this moment: a join that arrives
            // while the UNSUBSCRIBE is in flight waits for the next round.
            for room in &unsubscribe {
                state.subscribed.remove(room);
            }
            (subscribe, unsubscribe)
        };
        if subscribe.is_empty() && unsubscribe.is_empty() {
            return Ok(());
        }
        if !subscribe.is_empty() {
            let channels: Vec<String> = subscribe.iter().map(keys::channel).collect();
            let done = tokio::time::timeout(OP_TIMEOUT, commands.subscribe(&channels)).await;
            if !matches!(done, Ok(Ok(()))) {
                return Err(Ended::Lost("SUBSCRIBE failed".into()));
            }
            metrics::counter!("herald_redis_subscribes_total").increment(subscribe.len() as u64);
        }
        if !unsubscribe.is_empty() {
            let channels: Vec<String> = unsubscribe.iter().map(keys::channel).collect();
            let done = tokio::time::timeout(OP_TIMEOUT, commands.unsubscribe(&channels)).await;
            if !matches!(done, Ok(Ok(()))) {
                return Err(Ended::Lost("UNSUBSCRIBE failed".into()));
            }
        }
        let Some(strong) = feed.upgrade() else {
            return Err(Ended::FeedGone);
        };
        let mut state = strong.state();
        metrics::gauge!("herald_redis_subscribed_channels")
            .set((state.subscribed.len() + subscribe.len()) as f64);
        for room in subscribe {
            // Interest may have been withdrawn meanwhile; the next round
            // unsubscribes it.
            if let Some(waiters) = state.waiters.remove(&room) {
                for waiter in waiters {
                    let _ = waiter.send(());
                }
            }
            state.subscribed.insert(room);
        }
    }
}

/// After a reconnect: deliver what each room missed, or resync it.
async fn fill_gaps(broker: &RedisBroker, sink: &Arc<dyn FeedSink>, rooms: &[RoomName]) {
    for room in rooms {
        let Some((last, retention)) = sink.last_position(room) else {
            continue;
        };
        match broker
            .read_history(room, retention, Some(&last), usize::MAX)
            .await
        {
            Ok(range) if range.recovered == Some(true) => {
                metrics::counter!("herald_redis_gap_fill_events_total").increment(range.events.len() as u64);
                for event in &range.events {
                    sink.on_event(room, &range.position.epoch, event);
                }
            }
            Ok(range) => {
                metrics::counter!("herald_redis_resyncs_total").increment(1);
                sink.on_resync(room, &range.position);
            }
            Err(e) => {
                // Redis answered SUBSCRIBE but not this read: the node
                // cannot tell what was missed, so members must resync.
                tracing::warn!(room = %room, error = %e, "gap fill failed");
                if let Ok(position) = broker.read_history(room, retention, None, 0).await {
                    sink.on_resync(room, &position.position);
                }
            }
        }
    }
}

/// Hands one channel message to the sink.
fn dispatch(sink: &Arc<dyn FeedSink>, message: &redis::Msg) {
    let Some(room) = keys::room_of_channel(message.get_channel_name().as_bytes()) else {
        return;
    };
    let Some(decoded) = wire::decode(message.get_payload_bytes()) else {
        tracing::warn!(room = %room, "malformed channel message ignored");
        return;
    };
    match decoded {
        ChannelMessage::Event {
            offset,
            epoch,
            ts,
            frame,
        } => sink.on_event(&room, &epoch, &EventRecord { offset, ts, frame }),
        ChannelMessage::Transient { exclude, frame } => sink.on_transient(&room, &frame, exclude.as_deref()),
        ChannelMessage::Control { payload } => sink.on_control(&room, &payload),
    }
}
