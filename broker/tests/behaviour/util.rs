//! Small helpers shared by the behaviour tests: room names, retentions,
//! publishing, and bounded waiting.

use std::time::{Duration, Instant};

use herald_broker::{Broker, HistoryQuery, HistoryRange, PublishRequest};
use herald_common::policy::Retention;
use herald_common::protocol::Position;
use herald_common::rooms::RoomName;
use serde_json::value::RawValue;

/// The longest any single wait in this suite may take.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn room(name: &str) -> RoomName {
    RoomName::new(name).expect("a valid room name")
}

/// `history_size` events kept for five minutes; metadata for a day.
pub fn retention(history_size: u32) -> Retention {
    Retention {
        history_size,
        history_ttl_s: 300,
        meta_ttl_s: 86_400,
    }
}

/// Publishes `{"n":<n>}` as event `e`.
pub async fn publish(broker: &dyn Broker, room: &RoomName, retention: Retention, n: u64) -> Position {
    let data = RawValue::from_string(format!("{{\"n\":{n}}}")).expect("valid JSON");
    broker
        .publish(PublishRequest {
            room,
            event: "e",
            data: &data,
            retention,
            notification: None,
        })
        .await
        .expect("publish")
}

/// Reads history after `since`, or the newest `limit` events.
pub async fn history(
    broker: &dyn Broker,
    room: &RoomName,
    retention: Retention,
    since: Option<Position>,
    limit: usize,
) -> HistoryRange {
    broker
        .history(room, retention, HistoryQuery { since, limit })
        .await
        .expect("history")
}

pub fn at(offset: u64, epoch: &str) -> Position {
    Position {
        offset,
        epoch: epoch.to_string(),
    }
}

/// Polls `condition` until it holds; panics after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The offsets of a history answer, in order.
pub fn offsets(range: &HistoryRange) -> Vec<u64> {
    range.events.iter().map(|e| e.offset).collect()
}
