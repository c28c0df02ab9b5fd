//! Property tests (proptest): the memory engine's offsets and history
//! recovery (PROTOCOL.md §1.5) over random publish counts, window sizes and
//! `since` values, and the GCRA buckets behind every rate limit (§1.7).
//! Run: `cargo test -p herald-broker --test behaviour properties`;
//! `PROPTEST_CASES=10000` runs more cases.

use std::time::{Duration, Instant};

use herald_broker::gcra::{Buckets, interval_ms};
use herald_broker::{Broker, MemoryBroker};
use herald_common::config::RateLimit;
use proptest::prelude::*;
use serde_json::Value;

use crate::util::{at, history, publish, retention, room};

/// Failures are reported with their minimal input; nothing is written
/// next to the sources.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Runs an async body on a fresh single-threaded runtime.
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(f)
}

fn offsets(range: &herald_broker::HistoryRange) -> Vec<u64> {
    range.events.iter().map(|e| e.offset).collect()
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn memory_offsets_are_contiguous_and_recovery_is_exact(
        published in 0u64..150,
        window in 1u32..40,
        sinces in proptest::collection::vec(0u64..170, 1..12),
        limits in proptest::collection::vec(prop_oneof![1usize..10, Just(1000usize)], 1..12),
    ) {
        block_on(async move {
            let broker = MemoryBroker::new();
            let r = retention(window);
            let name = room("prop:room");
            let other = room("prop:other");

            // Offsets: 1, 2, … in one epoch; another room is independent.
            let first = broker.position(&name, r).await.unwrap();
            assert_eq!(first.offset, 0);
            let epoch = first.epoch.clone();
            for n in 1..=published {
                let pos = publish(&broker, &name, r, n).await;
                assert_eq!((pos.offset, pos.epoch.as_str()), (n, epoch.as_str()), "publish {n}");
                if n % 7 == 0 {
                    assert_eq!(publish(&broker, &other, r, n).await.offset, n / 7);
                }
            }
            let newest = broker.position(&name, r).await.unwrap();
            assert_eq!(newest, at(published, &epoch));

            // The newest `limit` events, never beyond the window, oldest first.
            let kept = published.min(u64::from(window));
            for &limit in &limits {
                let tail = history(&broker, &name, r, None, limit).await;
                let count = kept.min(limit as u64);
                let expected: Vec<u64> = (published - count + 1..=published).collect();
                assert_eq!(offsets(&tail), expected, "newest {limit} of {published} (window {window})");
                assert_eq!((tail.recovered, &tail.position), (None, &newest));
            }

            // `since`: recovered exactly when every event after it is still in
            // the window; then the first `limit` events after it.
            for (i, &since) in sinces.iter().enumerate() {
                let limit = limits[i % limits.len()];
                let range = history(&broker, &name, r, Some(at(since, &epoch)), limit).await;
                let recoverable = since <= published && since >= published - kept;
                assert_eq!(
                    range.recovered,
                    Some(recoverable),
                    "since {since} of {published} (window {window})"
                );
                let expected: Vec<u64> = if recoverable {
                    (since + 1..=published).take(limit).collect()
                } else {
                    Vec::new()
                };
                assert_eq!(offsets(&range), expected, "since {since}, limit {limit}");
                assert_eq!(range.position, newest);
                for event in &range.events {
                    let frame: Value = serde_json::from_slice(&event.frame).unwrap();
                    assert_eq!(frame["offset"], event.offset);
                    assert_eq!(frame["epoch"], epoch.as_str());
                    assert_eq!(frame["data"]["n"], event.offset);
                }
                // Another epoch is never recovered.
                let stale = history(&broker, &name, r, Some(at(since, "not-the-epoch")), limit).await;
                assert_eq!((stale.recovered, stale.events.len()), (Some(false), 0));
            }
        });
    }

    #[test]
    fn concurrent_publishers_share_one_contiguous_sequence(
        publishers in 1usize..6,
        each in 1u64..30,
    ) {
        let offsets = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap()
            .block_on(async move {
                let broker = MemoryBroker::new();
                let name = room("prop:concurrent");
                let tasks: Vec<_> = (0..publishers)
                    .map(|_| {
                        let (broker, name) = (broker.clone(), name.clone());
                        tokio::spawn(async move {
                            let mut got = Vec::new();
                            for n in 0..each {
                                got.push(publish(&broker, &name, retention(10), n).await.offset);
                            }
                            got
                        })
                    })
                    .collect();
                let mut all = Vec::new();
                for task in tasks {
                    let got = task.await.unwrap();
                    // Each publisher sees its own offsets increase.
                    assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
                    all.extend(got);
                }
                all
            });
        let mut sorted = offsets;
        sorted.sort_unstable();
        let expected: Vec<u64> = (1..=publishers as u64 * each).collect();
        prop_assert_eq!(sorted, expected);
    }
}

// ---------------------------------------------------------------------------
// GCRA
// ---------------------------------------------------------------------------

fn rate_limit() -> impl Strategy<Value = RateLimit> {
    (
        prop_oneof![0.05f64..1.0, 1.0f64..100.0, 100.0f64..5000.0],
        prop_oneof![Just(1u32), 1u32..10, 10u32..200],
    )
        .prop_map(|(rate_per_s, burst)| RateLimit { rate_per_s, burst })
}

/// Gaps between attempts, in microseconds: bursts (0), bunched, and spread.
fn gaps() -> impl Strategy<Value = Vec<u64>> {
    proptest::collection::vec(
        prop_oneof![3 => Just(0u64), 3 => 0u64..2_000, 2 => 0u64..200_000, 1 => 0u64..5_000_000],
        1..400,
    )
}

proptest! {
    #![proptest_config(config(256))]

    /// In every window of time, the allowed units are at most
    /// burst + rate × the window's length.
    #[test]
    fn gcra_never_allows_more_than_burst_plus_rate_times_elapsed(limit in rate_limit(), gaps in gaps()) {
        let mut buckets = Buckets::default();
        let t0 = Instant::now();
        let mut now = t0;
        let mut allowed: Vec<Duration> = Vec::new();
        for gap in gaps {
            now += Duration::from_micros(gap);
            if buckets.take("k", limit, now).is_none() {
                allowed.push(now - t0);
            }
        }
        // Allowed times are in order: the window [allowed[i], allowed[j]]
        // holds j - i + 1 of them.
        for i in 0..allowed.len() {
            for j in i..allowed.len() {
                let elapsed = (allowed[j] - allowed[i]).as_secs_f64();
                let count = (j - i + 1) as f64;
                // The interval is rounded to whole nanoseconds: allow for it.
                let bound = f64::from(limit.burst) + limit.rate_per_s * elapsed * (1.0 + 1e-6) + 1e-9;
                prop_assert!(
                    count <= bound,
                    "{} allowed within {:?} (limit {:?}): bound {}",
                    count, allowed[j] - allowed[i], limit, bound
                );
            }
        }
    }

    /// A fresh bucket gives exactly its burst at once; a refusal's wait is
    /// exact: one nanosecond earlier is still refused, at the wait it is
    /// allowed.
    #[test]
    fn gcra_burst_is_available_and_the_wait_is_exact(limit in rate_limit(), gaps in gaps()) {
        let mut buckets = Buckets::default();
        let t0 = Instant::now();
        for n in 0..limit.burst {
            prop_assert_eq!(buckets.take("k", limit, t0), None, "unit {} of the burst", n);
        }
        let wait = buckets.take("k", limit, t0).expect("over the burst");
        let interval = Duration::from_secs_f64(interval_ms(limit) / 1000.0);
        prop_assert!(wait > Duration::ZERO && wait <= interval, "wait {:?}, interval {:?}", wait, interval);

        let mut now = t0;
        for gap in gaps {
            now += Duration::from_micros(gap);
            if let Some(wait) = buckets.take("k", limit, now) {
                prop_assert!(wait <= interval, "wait {:?} beyond one interval {:?}", wait, interval);
                if wait > Duration::from_nanos(1) {
                    prop_assert!(buckets.take("k", limit, now + wait - Duration::from_nanos(1)).is_some());
                }
                prop_assert_eq!(buckets.take("k", limit, now + wait), None);
                now += wait;
            }
        }
        // Keys are independent.
        prop_assert_eq!(buckets.take("other", limit, now), None);
    }

}

proptest! {
    #![proptest_config(config(32))]

    /// At full demand the allowed count keeps up with burst + rate ×
    /// elapsed: the limiter is not stricter than configured either.
    #[test]
    fn gcra_allows_the_configured_rate(limit in rate_limit(), seconds in 1u64..60) {
        let mut buckets = Buckets::default();
        let t0 = Instant::now();
        let step = Duration::from_secs_f64(interval_ms(limit) / 1000.0 / 4.0).max(Duration::from_micros(1));
        let end = t0 + Duration::from_secs(seconds);
        let (mut now, mut last) = (t0, t0);
        let (mut allowed, mut attempts) = (0u64, 0u64);
        // Full demand: at each instant, take until refused.
        while now <= end && attempts < 50_000 {
            attempts += 1;
            last = now;
            if buckets.take("k", limit, now).is_none() {
                allowed += 1;
                continue;
            }
            now += step;
        }
        let elapsed = (last - t0).as_secs_f64();
        let expected = f64::from(limit.burst) + limit.rate_per_s * elapsed;
        // With a burst of 1 nothing is banked: each unit is taken at the
        // first attempt at or after its due time, up to one `step` late, and
        // the next is due one interval after that. Larger bursts bank the
        // lateness, so they keep the full rate.
        let interval = interval_ms(limit) / 1000.0;
        let slip = if limit.burst == 1 { step.as_secs_f64() } else { 0.0 };
        let at_least = f64::from(limit.burst) + elapsed / (interval + slip) - 2.0;
        prop_assert!(
            allowed as f64 >= at_least && allowed as f64 <= expected + 1.0,
            "{} allowed in {:?} at full demand; expected about {:.1}, at least {:.1} ({:?})",
            allowed, last - t0, expected, at_least, limit
        );
    }
}
