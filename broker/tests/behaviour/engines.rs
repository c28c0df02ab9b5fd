//! The engine factories the suite is instantiated for. A factory starts
//! whatever backs its engine (nothing for memory, a real `redis-server` for
//! Redis) and hands out brokers that share that backend, the way several
//! gateway and API nodes share one Redis.

use std::sync::Arc;
use std::time::Duration;

use herald_broker::{Broker, MemoryBroker, RedisBroker, RedisOptions};
use herald_common::rooms::RoomName;

use crate::redis_server::RedisServer;

/// What a behaviour test needs from an engine.
pub trait Engine: Sized {
    /// Whether a feed receives only the rooms it declared interest in
    /// (Redis). The memory feed hands every room to every sink by design:
    /// the gateway's hub drops rooms it has no member in.
    const FILTERS_BY_INTEREST: bool;

    /// Starts the engine's backend.
    async fn start() -> Self;

    /// A new broker on the shared backend (another node of the cluster).
    async fn broker(&self) -> Arc<dyn Broker>;

    /// How many events the backend actually stores for `room`, when it can
    /// tell (it may keep more than the room's `history_size`).
    async fn stored_history_len(&self, room: &RoomName) -> Option<usize>;
}

/// The embedded engine: every "node" is a handle on one `MemoryBroker`.
pub struct Memory {
    broker: MemoryBroker,
}

impl Engine for Memory {
    const FILTERS_BY_INTEREST: bool = false;

    async fn start() -> Self {
        Self {
            broker: MemoryBroker::new(),
        }
    }

    async fn broker(&self) -> Arc<dyn Broker> {
        Arc::new(self.broker.clone())
    }

    async fn stored_history_len(&self, _room: &RoomName) -> Option<usize> {
        None
    }
}

/// The cluster engine on a real `redis-server` of its own.
pub struct Redis {
    pub server: RedisServer,
}

impl Redis {
    /// A broker on `url` (the server, or a proxy in front of it).
    pub async fn broker_at(url: &str, options: RedisOptions) -> RedisBroker {
        RedisBroker::connect_with(url, options)
            .await
            .expect("connect the Redis broker")
    }

    /// A broker with a short presence TTL.
    pub async fn broker_with_presence_ttl(&self, ttl: Duration) -> RedisBroker {
        Self::broker_at(&self.server.url(), RedisOptions { presence_ttl: ttl }).await
    }

    /// A plain connection for inspecting or sabotaging the server.
    pub async fn admin(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.server.url())
            .expect("Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("admin connection")
    }
}

impl Engine for Redis {
    const FILTERS_BY_INTEREST: bool = true;

    async fn start() -> Self {
        Self {
            server: RedisServer::start(),
        }
    }

    async fn broker(&self) -> Arc<dyn Broker> {
        Arc::new(Self::broker_at(&self.server.url(), RedisOptions::default()).await)
    }

    async fn stored_history_len(&self, room: &RoomName) -> Option<usize> {
        let mut admin = self.admin().await;
        let len: usize = redis::cmd("XLEN")
            .arg(herald_broker::redis::keys::history(room))
            .query_async(&mut admin)
            .await
            .expect("XLEN");
        Some(len)
    }
}
