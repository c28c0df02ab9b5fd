//! Per-user rate limits (PROTOCOL.md §1.7) and the per-IP connect limit.
//!
//! A user's budget is shared by all of their connections on all nodes: the
//! authoritative bucket lives in the broker (one atomic script call on
//! Redis). A local bucket with the same limits answers first: if this
//! node alone has already used the user's budget, the cluster-wide bucket
//! is exhausted too, and the refusal costs no round trip. Nothing here is
//! on the fan-out path. When the broker cannot be asked, the limit fails
//! open (logged): a Redis outage must not lock every user out.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_broker::Broker;
use herald_broker::gcra::Buckets;
use herald_common::config::{LimitsConfig, RateLimit};

/// What a budget is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Publish,
    Join,
    Connect,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::Join => "join",
            Scope::Connect => "connect",
        }
    }
}

/// The node's limiter.
pub struct Limiter {
    broker: Arc<dyn Broker>,
    limits: LimitsConfig,
    local: Mutex<Buckets>,
}

impl Limiter {
    pub fn new(broker: Arc<dyn Broker>, limits: LimitsConfig) -> Self {
        Self {
            broker,
            limits,
            local: Mutex::new(Buckets::default()),
        }
    }

    fn local_take(&self, key: &str, limit: RateLimit) -> Option<Duration> {
        self.local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(key, limit, Instant::now())
    }

    fn rejected(scope: &'static str) {
        metrics::counter!("herald_rate_limited_total", "scope" => scope).increment(1);
    }

    /// Takes one unit of `user`'s `scope` budget; `Err(wait)` when over it.
    pub async fn check_user(&self, scope: Scope, user: &str) -> Result<(), Duration> {
        let limit = match scope {
            Scope::Publish => self.limits.per_user.publish,
            Scope::Join => self.limits.per_user.join,
            Scope::Connect => self.limits.per_user.connect,
        };
        let key = format!("{}:{user}", scope.name());
        if let Some(wait) = self.local_take(&key, limit) {
            Self::rejected(scope.name());
            return Err(wait);
        }
        match self.broker.rate_limit(&format!("user:{key}"), limit).await {
            Ok(None) => Ok(()),
            Ok(Some(wait)) => {
                Self::rejected(scope.name());
                Err(wait)
            }
            Err(e) => {
                tracing::warn!(error = %e, scope = scope.name(), "rate limit unavailable; allowing");
                Ok(())
            }
        }
    }

    /// Takes one new connection from `ip`'s budget (off unless configured;
    /// counted per node).
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        let Some(limit) = self.limits.per_ip.connect else {
            return Ok(());
        };
        match self.local_take(&format!("ip:{ip}"), limit) {
            None => Ok(()),
            Some(wait) => {
                Self::rejected("ip_connect");
                Err(wait)
            }
        }
    }
}

/// Counts a connection's `rate_limited` answers: the 10th within a minute
/// closes it with 4008 (PROTOCOL.md §1.3).
#[derive(Debug, Default)]
pub struct Strikes {
    times: std::collections::VecDeque<Instant>,
}

/// Strikes within [`STRIKE_WINDOW`] that close the connection.
pub const MAX_STRIKES: usize = 10;
const STRIKE_WINDOW: Duration = Duration::from_secs(60);

impl Strikes {
    /// Records one; true when this one is the limit.
    pub fn strike(&mut self) -> bool {
        let now = Instant::now();
        while self
            .times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= STRIKE_WINDOW)
        {
            self.times.pop_front();
        }
        self.times.push_back(now);
        self.times.len() >= MAX_STRIKES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenth_strike_in_a_minute_closes() {
        let mut s = Strikes::default();
        for _ in 0..MAX_STRIKES - 1 {
            assert!(!s.strike());
        }
        assert!(s.strike());
    }

    #[tokio::test]
    async fn user_budget_is_enforced_and_shared_across_limiters() {
        let broker: Arc<dyn Broker> = Arc::new(herald_broker::MemoryBroker::new());
        let mut limits = LimitsConfig::default();
        limits.per_user.publish = RateLimit {
            rate_per_s: 1.0,
            burst: 2,
        };
        // Two nodes' limiters share the broker's bucket.
        let a = Limiter::new(broker.clone(), limits.clone());
        let b = Limiter::new(broker, limits);
        assert!(a.check_user(Scope::Publish, "alice").await.is_ok());
        assert!(b.check_user(Scope::Publish, "alice").await.is_ok());
        let wait = b.check_user(Scope::Publish, "alice").await.unwrap_err();
        assert!(wait > Duration::from_millis(500), "{wait:?}");
        assert!(a.check_user(Scope::Publish, "bob").await.is_ok());
        assert!(
            a.check_user(Scope::Join, "alice").await.is_ok(),
            "scopes are separate"
        );
    }
}
