//! The gateway: accepts browsers' WebSocket connections on `/ws`, runs their
//! sessions, and fans the broker's deliveries out to them.
//!
//! - [`upgrade`]: the HTTP side of a new connection (auth on the upgrade
//!   request, refusals);
//! - [`connection`]: one connection's life after the upgrade;
//! - [`session`]: the client operations;
//! - [`hub`]: local room membership and fan-out;
//! - [`outbound`] and [`writer`]: the bounded queue and batched socket writes;
//! - [`reader`]: message reassembly under the size limit;
//! - [`metrics`]: the gateway's Prometheus metrics.
//!
//! [`Gateway`] ties them together and owns the drain.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_broker::{Broker, Feed};
use herald_common::auth::JwtVerifier;
use herald_common::config::GatewayConfig;
use herald_common::policy::Policies;
use herald_common::protocol::CloseCode;
use tokio::sync::mpsc;

mod connection;
mod grants;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod outbound;
mod reader;
mod session;
pub mod upgrade;
mod writer;

use crate::hub::Hub;
use crate::metrics::GatewayMetrics;
use crate::outbound::{ConnHandle, Outbound};

/// The peer address of an HTTP request, set by the listener as a request
/// extension (for per-IP limits).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Everything a gateway needs to know.
pub struct GatewaySettings {
    /// This node's id (`welcome.node`, connection ids).
    pub node_id: String,
    pub config: GatewayConfig,
    pub verifier: Arc<JwtVerifier>,
    pub policies: Arc<Policies>,
    /// Rate limits (`[limits]`).
    pub limits: herald_common::config::LimitsConfig,
    /// The store of grants (`join = "grant"` rooms); without one only the
    /// token's `rooms` claim admits to them.
    pub store: Option<herald_store::Store>,
}

/// State shared by every connection of the node.
pub(crate) struct Shared {
    settings: GatewaySettings,
    broker: Arc<dyn Broker>,
    feed: Arc<dyn Feed>,
    hub: Arc<Hub>,
    grants: grants::GrantCache,
    limiter: limits::Limiter,
    metrics: GatewayMetrics,
    /// Open connections, for the drain.
    conns: Mutex<HashMap<u64, Arc<ConnHandle>>>,
    /// Connections accepted and not yet finished (includes upgrades in
    /// flight), checked against `max_connections`.
    open: AtomicUsize,
    next_conn: AtomicU64,
    draining: AtomicBool,
}

impl Shared {
    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnHandle>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates and registers a connection's handle.
    fn register(
        &self,
    ) -> (
        Arc<ConnHandle>,
        mpsc::Receiver<Outbound>,
        mpsc::Receiver<outbound::SessionCommand>,
    ) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let conn_id = format!("{}.{id}", self.settings.node_id);
        let (conn, queue, commands) = ConnHandle::new(id, conn_id, self.settings.config.outbound_queue);
        self.conns().insert(id, conn.clone());
        if self.draining.load(Ordering::Relaxed) {
            // Upgraded while the drain began: it is not in the drain's
            // snapshot, so close it now.
            conn.close(CloseCode::GoingAway, "node draining");
        }
        self.metrics.connections_accepted.increment(1);
        (conn, queue, commands)
    }

    /// Verifies a token, timing it.
    fn verify(&self, token: &str) -> Result<herald_common::auth::Claims, herald_common::auth::AuthError> {
        let started = std::time::Instant::now();
        let verified = self.settings.verifier.verify(token);
        self.metrics.auth.record(started.elapsed().as_secs_f64());
        verified
    }

    fn unregister(&self, conn: &ConnHandle) {
        self.conns().remove(&conn.id);
        self.release_slot();
    }

    /// Reserves a connection slot; false when the node is full.
    fn take_slot(&self) -> bool {
        let max = self.settings.config.max_connections;
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if taken {
            self.metrics.connections_open.increment(1.0);
        }
        taken
    }

    fn release_slot(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.metrics.connections_open.decrement(1.0);
    }
}

/// How often the node reports itself to the node registry.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// Reports the node to the registry (`GET /v1/stats`) until it is dropped.
async fn heartbeat(shared: std::sync::Weak<Shared>) {
    let started_at = herald_common::now_ms();
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        let node = herald_broker::NodeInfo {
            id: shared.settings.node_id.clone(),
            connections: shared.open.load(Ordering::Relaxed) as u64,
            rooms: shared.hub.room_count() as u64,
            started_at,
            last_seen: herald_common::now_ms(),
        };
        if let Err(e) = shared.broker.heartbeat(&node).await {
            tracing::warn!(error = %e, "node heartbeat failed");
        }
    }
}

/// A gateway node. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// Creates the gateway and attaches its hub to the broker.
    pub fn new(settings: GatewaySettings, broker: Arc<dyn Broker>) -> Self {
        let metrics = GatewayMetrics::new();
        let hub = Arc::new(Hub::new(
            settings.config.outbound_queue,
            metrics.clone(),
            settings.policies.clone(),
        ));
        let feed = broker.attach(hub.clone());
        hub.connect(broker.clone(), feed.clone());
        let grants = grants::GrantCache::new(settings.store.clone());
        let limiter = limits::Limiter::new(broker.clone(), settings.limits.clone());
        let gateway = Self {
            shared: Arc::new(Shared {
                settings,
                broker,
                feed,
                hub,
                grants,
                limiter,
                metrics,
                conns: Mutex::new(HashMap::new()),
                open: AtomicUsize::new(0),
                next_conn: AtomicU64::new(1),
                draining: AtomicBool::new(false),
            }),
        };
        tokio::spawn(heartbeat(Arc::downgrade(&gateway.shared)));
        gateway
    }

    /// False while the node's broker subscription is down.
    pub fn broker_connected(&self) -> bool {
        self.shared.feed.is_healthy()
    }

    /// The node id.
    pub fn node_id(&self) -> &str {
        &self.shared.settings.node_id
    }

    /// Connections open now (including upgrades in flight).
    pub fn connection_count(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }

    /// Rooms with at least one local member.
    pub fn room_count(&self) -> usize {
        self.shared.hub.room_count()
    }

    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Relaxed)
    }

    /// Drains the node: refuse new upgrades, close every connection with
    /// 1001 spread evenly over `drain` (so clients don't reconnect in one
    /// stampede), then wait — boundedly — for them to finish.
    pub async fn drain(&self, drain: Duration) {
        self.shared.draining.store(true, Ordering::SeqCst);
        let conns: Vec<Arc<ConnHandle>> = self.shared.conns().values().cloned().collect();
        tracing::info!(
            connections = conns.len(),
            drain_ms = drain.as_millis() as u64,
            "draining"
        );
        let start = tokio::time::Instant::now();
        let total = conns.len().max(1) as u32;
        for (i, conn) in conns.iter().enumerate() {
            tokio::time::sleep_until(start + drain * i as u32 / total).await;
            conn.close(CloseCode::GoingAway, "node draining");
        }
        // Connections that were mid-upgrade when the snapshot was taken
        // close themselves on registration; give every writer time to send
        // its close frame.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
        while self.connection_count() > 0 && tokio::time::Instant::now() < deadline {
            for conn in self.shared.conns().values() {
                conn.close(CloseCode::GoingAway, "node draining");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
