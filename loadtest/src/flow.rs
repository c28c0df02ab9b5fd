//! The per-connection accounting shared between a connection's task and
//! the scenario driver, and the totals over all connections.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio::sync::Notify;

use crate::seq::SeqTracker;
use crate::stats::Recorder;

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One load connection and the room it follows.
#[derive(Debug)]
pub struct Flow {
    pub id: usize,
    pub room_idx: usize,
    pub room: String,
    pub state: Mutex<FlowState>,
    /// Asks the connection to drop its socket and resume (churn).
    pub reconnect: Notify,
}

#[derive(Debug, Default)]
pub struct FlowState {
    pub tracker: SeqTracker,
    pub epoch: String,
    /// Joined and reading events.
    pub live: bool,
    /// Gave up: it will not read again.
    pub dead: bool,
    pub reconnects: u64,
    /// Resumes answered `recovered:false`.
    pub unrecovered: u64,
    pub resyncs: u64,
    /// Events replayed on resume (not in the latency histogram).
    pub replayed: u64,
    pub epoch_changes: u64,
}

impl Flow {
    pub fn new(id: usize, room_idx: usize, room: String) -> Self {
        Self {
            id,
            room_idx,
            room,
            state: Mutex::new(FlowState::default()),
            reconnect: Notify::new(),
        }
    }
}

/// State shared by every connection of a run.
#[derive(Debug, Default)]
pub struct Shared {
    pub recorder: Recorder,
    /// Close codes the servers sent (1006: the socket broke without one).
    pub closes: Mutex<BTreeMap<u16, u64>>,
    /// Errors by kind (first words of the message).
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// Frames for rooms other than the followed one (auto-joined rooms).
    pub other_frames: AtomicU64,
    pub live: AtomicU64,
}

impl Shared {
    pub fn close(&self, code: u16) {
        *lock(&self.closes).entry(code).or_default() += 1;
    }

    pub fn error(&self, what: impl Into<String>) {
        let mut what: String = what.into();
        what.truncate(120);
        *lock(&self.errors).entry(what).or_default() += 1;
    }
}

/// The newest sequence number published per room (from publish answers).
#[derive(Debug)]
pub struct Newest(pub Vec<AtomicU64>);

impl Newest {
    pub fn new(rooms: usize) -> Arc<Self> {
        Arc::new(Self((0..rooms).map(|_| AtomicU64::new(0)).collect()))
    }

    pub fn saw(&self, room: usize, seq: u64) {
        self.0[room].fetch_max(seq, Ordering::Relaxed);
    }

    pub fn get(&self, room: usize) -> u64 {
        self.0[room].load(Ordering::Relaxed)
    }

    /// Sets every room's newest to the position connections joined at
    /// (rooms with history before the run).
    pub fn seed(&self, flows: &[Arc<Flow>]) {
        for f in flows {
            let last = lock(&f.state).tracker.last();
            self.saw(f.room_idx, last);
        }
    }
}

/// Delivery accounting over all connections against the published rooms.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    /// Events owed to live connections (published after their join).
    pub owed: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    /// Connections that gave up and stopped reading.
    pub dead_connections: u64,
    pub reconnects: u64,
    pub unrecovered_resumes: u64,
    pub resyncs: u64,
    pub replayed: u64,
    pub epoch_changes: u64,
}

impl Totals {
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.reordered == 0
    }

    /// What happened between an earlier total and this one.
    pub fn since(&self, earlier: &Totals) -> Totals {
        Totals {
            owed: self.owed.saturating_sub(earlier.owed),
            received: self.received.saturating_sub(earlier.received),
            lost: self.lost.saturating_sub(earlier.lost),
            duplicates: self.duplicates.saturating_sub(earlier.duplicates),
            reordered: self.reordered.saturating_sub(earlier.reordered),
            dead_connections: self.dead_connections.saturating_sub(earlier.dead_connections),
            reconnects: self.reconnects.saturating_sub(earlier.reconnects),
            unrecovered_resumes: self
                .unrecovered_resumes
                .saturating_sub(earlier.unrecovered_resumes),
            resyncs: self.resyncs.saturating_sub(earlier.resyncs),
            replayed: self.replayed.saturating_sub(earlier.replayed),
            epoch_changes: self.epoch_changes.saturating_sub(earlier.epoch_changes),
        }
    }
}

pub fn totals(flows: &[Arc<Flow>], newest: &Newest) -> Totals {
    let mut t = Totals::default();
    for f in flows {
        let s = lock(&f.state);
        let top = newest.get(f.room_idx);
        t.owed += s.tracker.owed(top);
        t.received += s.tracker.received;
        t.lost += s.tracker.lost(top);
        t.duplicates += s.tracker.duplicates;
        t.reordered += s.tracker.reordered;
        t.dead_connections += s.dead as u64;
        t.reconnects += s.reconnects;
        t.unrecovered_resumes += s.unrecovered;
        t.resyncs += s.resyncs;
        t.replayed += s.replayed;
        t.epoch_changes += s.epoch_changes;
    }
    t
}

/// Connections that still miss events at the end of their room.
pub fn behind(flows: &[Arc<Flow>], newest: &Newest) -> usize {
    flows
        .iter()
        .filter(|f| {
            let s = lock(&f.state);
            !s.dead && s.tracker.last() < newest.get(f.room_idx)
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_count_the_undelivered_tail_as_lost() {
        let flows: Vec<Arc<Flow>> = (0..3)
            .map(|i| Arc::new(Flow::new(i, i % 2, String::new())))
            .collect();
        for f in &flows {
            lock(&f.state).tracker = SeqTracker::new(0);
        }
        let newest = Newest::new(2);
        newest.saw(0, 3);
        newest.saw(1, 2);
        for seq in 1..=3 {
            lock(&flows[0].state).tracker.observe(seq);
        }
        lock(&flows[1].state).tracker.observe(2);
        lock(&flows[2].state).tracker.observe(1);
        let t = totals(&flows, &newest);
        assert_eq!((t.owed, t.received, t.lost), (3 + 2 + 3, 5, 1 + 2));
        assert_eq!(behind(&flows, &newest), 1);
        assert!(!t.clean());
        assert_eq!(t.since(&t), Totals::default());
    }
}
