//! The writer task of one connection: drains the outbound queue into as few
//! socket writes as possible, sends heartbeats, enforces the idle and token
//! deadlines, and performs the close handshake.
//!
//! A drained batch is encoded into one buffer and written with one
//! `write_all` (fastwebsockets' own writer issues one syscall per frame);
//! past [`FLUSH_AT`] bytes the buffer is written and refilled, and a frame
//! larger than that is written from its shared bytes without a copy, so a
//! batch of big events costs a bounded buffer. The buffer is released after
//! each batch, so an idle connection holds no write buffer. Server frames
//! are unmasked, so an event's shared bytes go out as they are.

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
/// Most bytes a connection's write buffer holds before it is written.
const FLUSH_AT: usize = 64 * 1024;

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

    /// Encodes the head of one final frame carrying `payload`.
    fn push_head(&mut self, opcode: OpCode, payload: &[u8]) {
        let mut frame = Frame::new(true, opcode, None, Payload::Borrowed(payload));
        let mut head = [0u8; MAX_HEAD];
        let len = frame.fmt_head(&mut head);
        self.pending.extend_from_slice(&head[..len]);
    }

    /// Queues one final frame after those already pending, writing first
    /// when the buffer would pass [`FLUSH_AT`]; a payload larger than that
    /// is written from where it is.
    async fn send(&mut self, opcode: OpCode, payload: &[u8]) -> std::io::Result<()> {
        if self.pending.len() + MAX_HEAD + payload.len() > FLUSH_AT {
            self.write_pending().await?;
        }
        self.push_head(opcode, payload);
        if payload.len() > FLUSH_AT {
            self.write_pending().await?;
            self.io.write_all(payload).await
        } else {
            self.pending.extend_from_slice(payload);
            Ok(())
        }
    }

    async fn write_pending(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            self.io.write_all(&self.pending).await?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Writes everything pending and releases the buffer.
    async fn flush(&mut self) -> std::io::Result<()> {
        self.write_pending().await?;
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
    out.send(opcode, payload).await?;
    out.flush().await
}

/// Writes one drained batch: one `write_all` unless it passes
/// [`FLUSH_AT`] bytes.
async fn write_batch<W: AsyncWrite + Unpin>(
    out: &mut FrameWriter<W>,
    batch: &[Outbound],
) -> std::io::Result<()> {
    let frames = batch.iter().map(|item| {
        let (Outbound::Event { frame, .. } | Outbound::Frame(frame)) = item;
        frame
    });
    let size: usize = frames.clone().map(|f| MAX_HEAD + f.len()).sum();
    out.pending.reserve(size.min(FLUSH_AT));
    for frame in frames {
        out.send(OpCode::Text, frame).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Records each write it is given.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.writes.push(buf.to_vec());
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// The frames of `bytes`, as (payload length, first payload byte).
    fn frames(mut bytes: &[u8]) -> Vec<(usize, u8)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            assert_eq!(bytes[0], 0x81, "a final, unmasked text frame");
            let (len, head) = match bytes[1] {
                126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
                127 => (u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize, 10),
                n => (n as usize, 2),
            };
            out.push((len, bytes[head]));
            bytes = &bytes[head + len..];
        }
        out
    }

    fn event(len: usize, fill: u8) -> Outbound {
        Outbound::Frame(Bytes::from(vec![fill; len]))
    }

    #[tokio::test]
    async fn small_batch_is_one_write_and_the_buffer_is_released() {
        let mut out = FrameWriter::new(Recorder::default());
        let batch: Vec<Outbound> = (0..100).map(|i| event(150, i as u8)).collect();
        write_batch(&mut out, &batch).await.unwrap();
        assert_eq!(out.io.writes.len(), 1);
        let expected: Vec<(usize, u8)> = (0..100).map(|i| (150, i as u8)).collect();
        assert_eq!(frames(&out.io.writes[0]), expected);
        assert_eq!(out.pending.capacity(), 0, "no buffer kept between batches");
    }

    #[tokio::test]
    async fn big_batches_use_a_bounded_buffer_and_keep_the_order() {
        let mut out = FrameWriter::new(Recorder::default());
        // 40 × 10 KiB, then one event bigger than the buffer, then small ones.
        let mut batch: Vec<Outbound> = (0..40).map(|i| event(10 * 1024, i)).collect();
        batch.push(event(300 * 1024, 200));
        batch.extend((0..3).map(|i| event(10, 210 + i)));
        write_batch(&mut out, &batch).await.unwrap();
        let writes = &out.io.writes;
        assert!(writes.len() > 2, "written in parts: {}", writes.len());
        let big = 300 * 1024;
        for w in writes {
            assert!(
                w.len() <= FLUSH_AT || w.len() == big,
                "a write of {} bytes",
                w.len()
            );
        }
        // The big payload went out as it was, right after its head.
        let all: Vec<u8> = writes.concat();
        let expected: Vec<(usize, u8)> = (0..40)
            .map(|i| (10 * 1024, i))
            .chain([(big, 200)])
            .chain((0..3).map(|i| (10, 210 + i)))
            .collect();
        assert_eq!(frames(&all), expected);
        assert_eq!(out.pending.capacity(), 0);
    }
}
