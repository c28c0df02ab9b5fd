//! One behavioural suite, two engines.
//!
//! Every behaviour of the broker contract is written once in [`suite`],
//! generic over an [`engines::Engine`] factory, and expanded by
//! [`behaviours!`] into `memory::<name>` and `redis::<name>` tests. The
//! Redis tests run against a real `redis-server` (from `PATH`) that each
//! test starts on a free port and kills when it ends; nextest runs every
//! test in its own process. Engine-specific behaviours live in
//! [`memory_only`] and [`redis_only`] and are expanded the same way.

mod engines;
mod memory_only;
mod properties;
mod proxy;
mod redis_only;
mod redis_server;
mod sink;
mod suite;
mod util;

/// Expands each behaviour into one `#[tokio::test]` per engine.
macro_rules! behaviours {
    (
        shared: [$($shared:ident),* $(,)?],
        memory_only: [$($memory:ident),* $(,)?],
        redis_only: [$($redis:ident),* $(,)?] $(,)?
    ) => {
        mod memory {
            use crate::engines::{Engine, Memory};
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $shared() {
                    crate::suite::$shared(Memory::start().await).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $memory() {
                    crate::memory_only::$memory(Memory::start().await).await;
                }
            )*
        }

        mod redis {
            use crate::engines::{Engine, Redis};
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $shared() {
                    crate::suite::$shared(Redis::start().await).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $redis() {
                    crate::redis_only::$redis(Redis::start().await).await;
                }
            )*
        }
    };
}

behaviours! {
    shared: [
        offsets_are_contiguous_per_room,
        sink_receives_exact_frames_once_in_order,
        concurrent_publishers_get_contiguous_offsets,
        history_recovers_exactly_the_window,
        history_ttl_expires_events_but_keeps_the_epoch,
        expired_metadata_starts_a_new_epoch,
        presence_tracks_first_join_and_last_leave,
        transient_frames_reach_interested_sinks,
        control_messages_reach_only_interested_feeds,
        node_registry_lists_heartbeats,
    ],
    memory_only: [
        zero_meta_ttl_gives_a_new_epoch,
    ],
    redis_only: [
        flushall_starts_a_new_epoch,
        presence_of_a_crashed_node_expires,
        stale_node_entries_are_dropped,
        reconnect_fills_the_gap,
        unfillable_gap_resyncs,
        restarted_redis_resyncs_subscribed_rooms,
        unavailable_while_redis_is_down,
        feed_health_follows_the_connection,
        idle_feed_keeps_its_connection,
        silent_connection_is_detected_and_gap_filled,
    ],
}
