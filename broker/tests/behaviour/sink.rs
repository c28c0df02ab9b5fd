//! A recording [`FeedSink`]: keeps everything the broker delivers, and
//! answers `last_position` the way the gateway's hub does (the position a
//! room was joined at, then the last event or resync delivered), so the
//! Redis feed's gap fill can be observed end to end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use herald_broker::{EventRecord, FeedSink};
use herald_common::policy::Retention;
use herald_common::protocol::Position;
use herald_common::rooms::RoomName;

/// One `on_event` call.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub epoch: String,
    pub offset: u64,
    pub ts: u64,
    pub frame: Bytes,
}

/// One `on_transient` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transient {
    pub room: String,
    pub frame: Bytes,
    pub exclude: Option<String>,
}

#[derive(Default)]
struct Recorded {
    events: HashMap<String, Vec<Delivered>>,
    transients: Vec<Transient>,
    resyncs: Vec<(String, Position)>,
    controls: Vec<(String, Bytes)>,
    last: HashMap<RoomName, Position>,
}

/// Records every delivery; every room shares one retention.
pub struct RecordingSink {
    retention: Retention,
    recorded: Mutex<Recorded>,
}

impl RecordingSink {
    pub fn new(retention: Retention) -> Arc<Self> {
        Arc::new(Self {
            retention,
            recorded: Mutex::new(Recorded::default()),
        })
    }

    /// The retention `last_position` reports for every room.
    pub fn retention(&self) -> Retention {
        self.retention
    }

    fn recorded(&self) -> MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a join records: the room's position at that moment.
    pub fn joined_at(&self, room: &RoomName, position: Position) {
        self.recorded().last.insert(room.clone(), position);
    }

    /// The events delivered in `room`, in delivery order.
    pub fn events(&self, room: &RoomName) -> Vec<Delivered> {
        self.recorded()
            .events
            .get(room.as_str())
            .cloned()
            .unwrap_or_default()
    }

    /// The offsets delivered in `room`, in delivery order.
    pub fn offsets(&self, room: &RoomName) -> Vec<u64> {
        self.recorded()
            .events
            .get(room.as_str())
            .map(|events| events.iter().map(|e| e.offset).collect())
            .unwrap_or_default()
    }

    pub fn event_count(&self, room: &RoomName) -> usize {
        self.recorded().events.get(room.as_str()).map_or(0, Vec::len)
    }

    pub fn transients(&self) -> Vec<Transient> {
        self.recorded().transients.clone()
    }

    pub fn resyncs(&self) -> Vec<(String, Position)> {
        self.recorded().resyncs.clone()
    }

    pub fn controls(&self) -> Vec<(String, Bytes)> {
        self.recorded().controls.clone()
    }
}

impl FeedSink for RecordingSink {
    fn on_event(&self, room: &RoomName, epoch: &str, record: &EventRecord) {
        let mut recorded = self.recorded();
        recorded
            .events
            .entry(room.to_string())
            .or_default()
            .push(Delivered {
                epoch: epoch.to_string(),
                offset: record.offset,
                ts: record.ts,
                frame: record.frame.clone(),
            });
        recorded.last.insert(
            room.clone(),
            Position {
                offset: record.offset,
                epoch: epoch.to_string(),
            },
        );
    }

    fn on_transient(&self, room: &RoomName, frame: &Bytes, exclude: Option<&str>) {
        self.recorded().transients.push(Transient {
            room: room.to_string(),
            frame: frame.clone(),
            exclude: exclude.map(str::to_string),
        });
    }

    fn on_resync(&self, room: &RoomName, position: &Position) {
        let mut recorded = self.recorded();
        recorded.resyncs.push((room.to_string(), position.clone()));
        recorded.last.insert(room.clone(), position.clone());
    }

    fn on_control(&self, room: &RoomName, payload: &Bytes) {
        self.recorded().controls.push((room.to_string(), payload.clone()));
    }

    fn last_position(&self, room: &RoomName) -> Option<(Position, Retention)> {
        let position = self.recorded().last.get(room).cloned()?;
        Some((position, self.retention))
    }
}
