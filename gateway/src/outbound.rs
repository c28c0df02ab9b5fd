//! One connection's outbound side as the rest of the node sees it: a
//! bounded queue of finished frames and a close signal.
//!
//! The fan-out path only ever calls [`ConnHandle::push_event`], which never
//! waits: a full queue means the client is too slow, and it is cut with 4009
//! instead of slowing its room down. Replies to the client's own requests
//! wait for room in the queue instead ([`ConnHandle::send`]), which pushes
//! back on that client alone.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use herald_common::protocol::CloseCode;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a writer task writes, in queue order.
#[derive(Debug)]
pub enum Outbound {
    /// A room event shared by every member; `ts` is its publish time (ms)
    /// for the delivery-latency histogram.
    Event { frame: Bytes, ts: u64 },
    /// Any other text frame (replies, `joined`, `resync`, member events).
    Frame(Bytes),
}

/// A command for a connection's session from elsewhere in the node (the
/// server API's commands, delivered through the hub).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    /// Leave `room`, telling the client why.
    Leave {
        room: herald_common::rooms::RoomName,
        reason: herald_common::protocol::LeftReason,
    },
    /// A grant matching `pattern` was removed: re-check those rooms.
    Recheck {
        pattern: herald_common::rooms::RoomPattern,
    },
}

/// Commands a session may have waiting before it is considered stuck.
const COMMAND_QUEUE: usize = 32;

/// Why and how a connection is being closed; the first reason wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

/// Fires once; both halves of the connection watch it.
#[derive(Debug, Default, Clone)]
pub struct CloseSignal {
    token: CancellationToken,
    reason: Arc<OnceLock<CloseReason>>,
}

impl CloseSignal {
    /// Requests a close; later requests keep the first reason.
    pub fn close(&self, code: u16, reason: &'static str) {
        let _ = self.reason.set(CloseReason { code, reason });
        self.token.cancel();
    }

    /// The reason, once closed.
    pub fn reason(&self) -> Option<CloseReason> {
        self.reason.get().copied()
    }

    pub fn is_closed(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when a close was requested. Cancel-safe.
    pub async fn closed(&self) {
        self.token.cancelled().await
    }
}

/// The queue has been closed: the connection is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

/// A handle on one connection, shared by its session, the hub and the
/// node's connection registry.
#[derive(Debug)]
pub struct ConnHandle {
    /// Local numeric id (hub keys).
    pub id: u64,
    /// Cluster-unique id, as sent in `welcome.conn`.
    pub conn_id: String,
    queue: mpsc::Sender<Outbound>,
    commands: mpsc::Sender<SessionCommand>,
    close: CloseSignal,
}

impl ConnHandle {
    /// Creates the handle, the receiving end for the writer task and the
    /// session's command receiver.
    pub fn new(
        id: u64,
        conn_id: String,
        capacity: usize,
    ) -> (
        Arc<Self>,
        mpsc::Receiver<Outbound>,
        mpsc::Receiver<SessionCommand>,
    ) {
        let (queue, rx) = mpsc::channel(capacity);
        let (commands, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let handle = Arc::new(Self {
            id,
            conn_id,
            queue,
            commands,
            close: CloseSignal::default(),
        });
        (handle, rx, commands_rx)
    }

    /// Hands a command to the session without waiting. A session with a
    /// backlog of commands is stuck; it is closed (1001: reconnect) rather
    /// than left holding rooms it should have left.
    pub fn command(&self, command: SessionCommand) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.commands.try_send(command) {
            self.close(CloseCode::GoingAway, "session overloaded");
        }
    }

    /// Enqueues a frame without waiting; on a full queue the connection is
    /// closed with 4009. Returns false when the frame was not queued.
    pub fn push(&self, item: Outbound) -> bool {
        match self.queue.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.close.is_closed() {
                    metrics::counter!("herald_slow_consumer_disconnects_total").increment(1);
                }
                self.close(CloseCode::SlowConsumer, "slow consumer");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Fan-out entry point: one shared event frame.
    pub fn push_event(&self, frame: &Bytes, ts: u64) -> bool {
        self.push(Outbound::Event {
            frame: frame.clone(),
            ts,
        })
    }

    /// Enqueues a reply, waiting for room in the queue.
    pub async fn send(&self, frame: Bytes) -> Result<(), Gone> {
        if self.close.is_closed() {
            return Err(Gone);
        }
        tokio::select! {
            res = self.queue.send(Outbound::Frame(frame)) => res.map_err(|_| Gone),
            _ = self.close.closed() => Err(Gone),
        }
    }

    /// Waits for room and enqueues a replayed event.
    pub async fn send_event(&self, frame: Bytes, ts: u64) -> Result<(), Gone> {
        self.send_outbound(Outbound::Event { frame, ts }).await
    }

    /// Waits for room and enqueues any item.
    pub async fn send_outbound(&self, item: Outbound) -> Result<(), Gone> {
        tokio::select! {
            res = self.queue.send(item) => res.map_err(|_| Gone),
            _ = self.close.closed() => Err(Gone),
        }
    }

    /// Requests that the connection be closed with `code`.
    pub fn close(&self, code: CloseCode, reason: &'static str) {
        self.close.close(code.code(), reason);
    }

    pub fn close_signal(&self) -> &CloseSignal {
        &self.close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_queue_closes_with_4009_and_keeps_first_reason() {
        let (conn, mut rx, _commands) = ConnHandle::new(1, "n.1".into(), 2);
        let frame = Bytes::from_static(b"{}");
        assert!(conn.push_event(&frame, 0));
        assert!(conn.push_event(&frame, 0));
        assert!(!conn.close_signal().is_closed());
        assert!(!conn.push_event(&frame, 0));
        assert_eq!(conn.close_signal().reason().map(|r| r.code), Some(4009));
        conn.close(CloseCode::GoingAway, "later");
        assert_eq!(conn.close_signal().reason().map(|r| r.code), Some(4009));
        assert!(rx.recv().await.is_some());
        assert_eq!(conn.send(frame).await, Err(Gone));
    }
}
