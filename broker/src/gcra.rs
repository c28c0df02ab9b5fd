//! The generic cell rate algorithm (a token bucket kept as one timestamp
//! per key): the memory engine's rate limits, and the gateway's local
//! pre-check in front of the cluster-wide limit. The Redis engine runs the
//! same algorithm in Lua on Redis's clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use herald_common::config::RateLimit;

/// Milliseconds between units at `limit.rate_per_s`.
pub fn interval_ms(limit: RateLimit) -> f64 {
    1000.0 / limit.rate_per_s.max(f64::MIN_POSITIVE)
}

/// Buckets by key: each holds its "theoretical arrival time".
#[derive(Debug, Default)]
pub struct Buckets {
    tat: HashMap<String, Instant>,
    /// Takes since the last sweep of idle buckets.
    since_sweep: usize,
}

/// Buckets kept before idle ones are swept.
const SWEEP_EVERY: usize = 4096;

impl Buckets {
    /// Takes one unit from `key`'s bucket: `None` if allowed, else how long
    /// to wait before the next unit is available.
    pub fn take(&mut self, key: &str, limit: RateLimit, now: Instant) -> Option<Duration> {
        let interval = Duration::from_secs_f64(interval_ms(limit) / 1000.0);
        let burst = limit.burst.max(1);
        let tat = self.tat.get(key).copied().unwrap_or(now).max(now);
        let allow_at = tat.checked_sub(interval * (burst - 1)).unwrap_or(now);
        if now < allow_at {
            return Some(allow_at - now);
        }
        self.tat.insert(key.to_string(), tat + interval);
        self.since_sweep += 1;
        if self.since_sweep >= SWEEP_EVERY {
            // A bucket whose time has passed is full again: forget it.
            self.tat.retain(|_, tat| *tat > now);
            self.since_sweep = 0;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let mut b = Buckets::default();
        let limit = RateLimit {
            rate_per_s: 10.0,
            burst: 3,
        };
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(b.take("u", limit, t0), None);
        }
        let wait = b.take("u", limit, t0).unwrap();
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert_eq!(b.take("u", limit, t0 + Duration::from_millis(100)), None);
        assert!(b.take("u", limit, t0 + Duration::from_millis(100)).is_some());
        assert_eq!(b.take("other", limit, t0), None, "keys are independent");
        // After a long pause the whole burst is available again.
        let later = t0 + Duration::from_secs(10);
        for _ in 0..3 {
            assert_eq!(b.take("u", limit, later), None);
        }
    }
}
