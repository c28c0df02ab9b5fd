//! Shared measurement state: end-to-end latencies (HdrHistogram) and
//! delivery counts, sharded so that connection tasks on different threads
//! rarely meet on a lock.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Microseconds since the Unix epoch (the clock publishers stamp payloads with).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A histogram of microseconds, 1 µs to 10 min at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

const SHARDS: usize = 64;

#[derive(Debug)]
struct Shard {
    latency: Histogram<u64>,
    delivered: u64,
}

/// Latency and delivery counts for the events received by every connection.
#[derive(Debug)]
pub struct Recorder {
    shards: Box<[Mutex<Shard>]>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        latency: histogram(),
                        delivered: 0,
                    })
                })
                .collect(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Recorder {
    /// One event delivered to connection `conn`, stamped `sent_us` by its
    /// publisher (if it carried a stamp), received at `now_us`.
    pub fn delivered(&self, conn: usize, sent_us: Option<u64>, now_us: u64) {
        let mut shard = lock(&self.shards[conn % SHARDS]);
        shard.delivered += 1;
        if let Some(sent) = sent_us {
            shard
                .latency
                .saturating_record(now_us.saturating_sub(sent).max(1));
        }
    }

    /// Events delivered so far.
    pub fn count(&self) -> u64 {
        self.shards.iter().map(|s| lock(s).delivered).sum()
    }

    /// The merged latency histogram so far.
    #[cfg(test)]
    pub fn latency(&self) -> Histogram<u64> {
        let mut all = histogram();
        for shard in self.shards.iter() {
            let _ = all.add(&lock(shard).latency);
        }
        all
    }

    /// Starts a new measurement window (a ramp step): returns the count
    /// and histogram of the window that ends.
    pub fn take(&self) -> (u64, Histogram<u64>) {
        let mut all = histogram();
        let mut count = 0;
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let _ = all.add(&shard.latency);
            shard.latency.reset();
            count += std::mem::take(&mut shard.delivered);
        }
        (count, all)
    }
}

/// Percentiles of a histogram of microseconds, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            samples: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// The non-empty buckets of a histogram, to ship it between processes.
pub fn to_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Adds buckets shipped by [`to_pairs`] to `h`.
pub fn add_pairs(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(value, count) in pairs {
        let _ = h.record_n(value, count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_takes_windows() {
        let r = Recorder::default();
        r.delivered(0, Some(1_000), 3_000);
        r.delivered(1, Some(1_000), 11_000);
        r.delivered(2, None, 5);
        assert_eq!(r.count(), 3);
        let (count, h) = r.take();
        assert_eq!((count, h.len()), (3, 2));
        let p = Percentiles::of(&h);
        assert!(
            (p.p50_ms - 2.0).abs() < 0.01 && (p.max_ms - 10.0).abs() < 0.02,
            "{p:?}"
        );
        assert_eq!(r.count(), 0);
        assert!(r.latency().is_empty());
    }

    #[test]
    fn histograms_survive_shipping() {
        let mut h = histogram();
        for v in [5u64, 5, 900, 123_456] {
            h.record(v).unwrap();
        }
        let mut back = histogram();
        add_pairs(&mut back, &to_pairs(&h));
        assert_eq!(back.len(), 4);
        assert_eq!(back.value_at_quantile(1.0), h.value_at_quantile(1.0));
    }
}
