//! Behaviours only the memory engine has.

use herald_common::policy::Retention;

use crate::engines::{Engine, Memory};
use crate::util::{history, publish, room};

/// A zero metadata TTL: every use of the room starts a new epoch.
pub async fn zero_meta_ttl_gives_a_new_epoch(engine: Memory) {
    let broker = engine.broker().await;
    let zero = Retention {
        history_size: 10,
        history_ttl_s: 300,
        meta_ttl_s: 0,
    };
    let z = room("epoch:zero");
    let first = publish(&*broker, &z, zero, 1).await;
    let second = publish(&*broker, &z, zero, 2).await;
    assert_eq!((first.offset, second.offset), (1, 1));
    assert_ne!(first.epoch, second.epoch);
    let stale = history(&*broker, &z, zero, Some(first), 10).await;
    assert_eq!((stale.recovered, stale.events.len()), (Some(false), 0));
}
