//! The writer task of one connection: drains the outbound queue into as few
//! socket writes as possible, sends heartbeats, enforces the idle and token
//! deadlines, and performs the close handshake.
//!
//! A drained batch is encoded into one buffer and written with one
//! `write_all` (fastwebsockets' own writer issues one syscall per frame).
//! The buffer is sized for the batch and released after it, so an idle
//! connection holds no write buffer. Server frames are unmasked, so an
//! event's shared bytes are copied as they are.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::metrics::GatewayMetrics;
use crate::outbound::{ConnHandle, Outbound};
use herald_common::protocol::CloseCode;

/// Most frames taken from the queue per write.
const MAX_BATCH: usize = 512;
/// How long a close may wait for a stalled write and the close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Requests from the reader side that bypass the queue.
#[derive(Debug)]
pub enum Control {
    /// Answer a WebSocket ping.
    Pong(Bytes),
    /// The token now expires at this instant (after leeway).
    Expiry(Instant),
}

/// Timing of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat: Duration,
    /// Close when nothing was received for this long.
    pub idle_after: Duration,
}

/// When the client last sent anything: ms since `epoch`.
#[derive(Debug)]
pub struct LastSeen {
    epoch: Instant,
    ms: AtomicU64,
}

impl LastSeen {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            ms: AtomicU64::new(0),
        }
    }

    pub fn touch(&self) {
        self.ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        self.epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(self.ms.load(Ordering::Relaxed)))
    }
}

impl Default for LastSeen {
    fn default() -> Self {
        Self::new()
    }
}

/// The longest WebSocket frame head (2 + 8 bytes of length; server frames
/// carry no mask).
const MAX_HEAD: usize = 14;

/// The write half of a connection with the frames waiting to be written.
struct FrameWriter<W> {
    io: W,
    pending: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    fn new(io: W) -> Self {
        Self {
            io,
            pending: Vec::new(),
        }
    }

    /// Encodes one final frame after those already pending.
    fn push(&mut self, opcode: OpCode, payload: &[u8]) {
        let mut frame = Frame::new(true, opcode, None, Payload::Borrowed(payload));
        let mut head = [0u8; MAX_HEAD];
        let len = frame.fmt_head(&mut head);
        self.pending.extend_from_slice(&head[..len]);
        self.pending.extend_from_slice(payload);
    }

    /// Writes everything pending in one go and releases the buffer.
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            self.io.write_all(&self.pending).await?;
        }
        self.pending = Vec::new();
        self.io.flush().await
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        self.io.shutdown().await
    }
}

async fn write_frame<W: AsyncWrite + Unpin>(
    out: &mut FrameWriter<W>,
    opcode: OpCode,
    payload: &[u8],
) -> std::io::Result<()> {
    out.push(opcode, payload);
    out.flush().await
}

/// Writes one drained batch: one buffer of the batch's exact size, one
/// `write_all`.
async fn write_batch<W: AsyncWrite + Unpin>(
    out: &mut FrameWriter<W>,
    batch: &[Outbound],
) -> std::io::Result<()> {
    let frames = batch.iter().map(|item| {
        let (Outbound::Event { frame, .. } | Outbound::Frame(frame)) = item;
        frame
    });
    out.pending
        .reserve(frames.clone().map(|f| MAX_HEAD + f.len()).sum());
    for frame in frames {
        out.push(OpCode::Text, frame);
    }
    out.flush().await
}

fn record_batch(metrics: &GatewayMetrics, batch: &[Outbound]) {
    let mut events = 0u64;
    let mut oldest_ts = None;
    for item in batch {
        if let Outbound::Event { ts, .. } = item {
            events += 1;
            oldest_ts.get_or_insert(*ts);
        }
    }
    metrics.frames_out.increment(batch.len() as u64);
    metrics.write_batch.record(batch.len() as f64);
    if events > 0 {
        metrics.events_delivered.increment(events);
    }
    if let Some(ts) = oldest_ts {
        let now = herald_common::now_ms();
        metrics
            .delivery_latency
            .record(now.saturating_sub(ts) as f64 / 1000.0);
    }
}

/// Runs the writer until the connection closes; returns the close code sent.
pub async fn run<W: AsyncWrite + Unpin>(
    io: W,
    mut queue: mpsc::Receiver<Outbound>,
    mut control: mpsc::Receiver<Control>,
    conn: Arc<ConnHandle>,
    last_seen: Arc<LastSeen>,
    timing: Timing,
    metrics: GatewayMetrics,
) -> u16 {
    let mut out = FrameWriter::new(io);
    let close = conn.close_signal().clone();
    let mut batch = Vec::with_capacity(64);
    let mut heartbeat = tokio::time::interval_at(Instant::now() + timing.heartbeat, timing.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut expiry: Option<Instant> = None;

    let outcome: std::io::Result<()> = async {
        loop {
            tokio::select! {
                biased;
                _ = close.closed() => return Ok(()),
                Some(ctl) = control.recv() => match ctl {
                    Control::Pong(payload) => {
                        write_frame(&mut out, OpCode::Pong, &payload).await?;
                    }
                    Control::Expiry(at) => expiry = Some(at),
                },
                _ = heartbeat.tick() => {
                    if last_seen.silent_for() >= timing.idle_after {
                        conn.close(CloseCode::GoingAway, "idle timeout");
                    } else {
                        write_frame(&mut out, OpCode::Ping, b"").await?;
                    }
                }
                _ = tokio::time::sleep_until(expiry.unwrap_or_else(Instant::now)), if expiry.is_some() => {
                    conn.close(CloseCode::TokenExpired, "token expired");
                }
                n = queue.recv_many(&mut batch, MAX_BATCH) => {
                    if n == 0 {
                        return Ok(());
                    }
                    {
                        let write = write_batch(&mut out, &batch);
                        tokio::pin!(write);
                        tokio::select! {
                            res = &mut write => res?,
                            // A close (4009 most likely) while the client is
                            // not reading: give the write a bounded grace.
                            _ = close.closed() => match tokio::time::timeout(CLOSE_GRACE, write).await {
                                Ok(res) => res?,
                                Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
                            },
                        }
                    }
                    record_batch(&metrics, &batch);
                    batch.clear();
                }
            }
        }
    }
    .await;

    let reason = close.reason().unwrap_or(crate::outbound::CloseReason {
        code: CloseCode::Normal.code(),
        reason: "",
    });
    if outcome.is_err() {
        // The socket is broken or stalled: no close frame can get through.
        return reason.code;
    }
    let finish = async {
        // Deliver what was already queued (a reply or error that explains
        // the close), except to a consumer cut for being too slow.
        if reason.code != CloseCode::SlowConsumer.code() {
            while let Ok(item) = queue.try_recv() {
                batch.push(item);
            }
            write_batch(&mut out, &batch).await?;
        }
        let mut payload = Vec::with_capacity(2 + reason.reason.len());
        payload.extend_from_slice(&reason.code.to_be_bytes());
        payload.extend_from_slice(reason.reason.as_bytes());
        write_frame(&mut out, OpCode::Close, &payload).await?;
        out.shutdown().await
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, finish).await;
    reason.code
}
