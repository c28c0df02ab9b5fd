//! `chat`: clients publishing to each other through the gateway. C clients
//! in rooms of M members; each publishes at the given rate with the
//! WebSocket `publish` op, and every member — the publisher included —
//! receives every message. Loss and order are counted by offset, the room's
//! newest offset known from the publishers' `ack`s.
//!
//! Each connection is split: a writer task publishes on a timer (and
//! answers pings), the reader accounts for events and acks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Ctx, drain};
use crate::cli::ChatArgs;
use crate::client::{self, Reply};
use crate::extract::payload;
use crate::flow::{Flow, Newest, Shared, lock, totals};
use crate::publisher::PublishReport;
use crate::report::{Cpu, Delivery, Report};
use crate::resources::{sample, usage};
use crate::stats::{Percentiles, histogram, now_us};
use crate::target::{Kind, Target};

struct Chat {
    target: Arc<Target>,
    shared: Arc<Shared>,
    newest: Arc<Newest>,
    stop: CancellationToken,
    /// Publishing starts for everyone at once, after every client joined.
    go: CancellationToken,
    period: Duration,
    chat_for: Duration,
    payload: usize,
    sent: AtomicU64,
}

pub async fn run(ctx: &Ctx<'_>, args: &ChatArgs) -> Result<Report> {
    if ctx.target.kind != Kind::Herald {
        bail!(
            "chat runs against Herald only: the Socket.IO peer has no per-room sequence \
             to count loss by when many clients publish"
        );
    }
    let mut report = Report::new("chat", ctx.target.kind, ctx.mode, serde_json::to_value(args)?);
    let room_size = args.room_size.max(1);
    let rooms = args.conns.div_ceil(room_size).max(1);
    let chat = Arc::new(Chat {
        target: ctx.target.clone(),
        shared: Arc::new(Shared::default()),
        newest: Newest::new(rooms),
        stop: CancellationToken::new(),
        go: CancellationToken::new(),
        period: Duration::from_secs_f64(1.0 / args.rate.max(0.001)),
        chat_for: Duration::from_secs(args.duration),
        payload: args.payload,
        sent: AtomicU64::new(0),
    });
    // Connection i joins room i / room_size: neighbours chat together.
    let flows: Vec<Arc<Flow>> = (0..args.conns)
        .map(|i| Arc::new(Flow::new(i, i / room_size, ctx.target.room(i / room_size))))
        .collect();
    let permits = Arc::new(Semaphore::new(ctx.common.connect_concurrency.max(1)));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let mut tasks = JoinSet::new();
    ctx.progress.phase(
        &format!("connecting {} chat clients", args.conns),
        args.conns as u64,
    );
    let setup_start = Instant::now();
    for flow in &flows {
        tasks.spawn(client_task(
            chat.clone(),
            flow.clone(),
            permits.clone(),
            ready_tx.clone(),
        ));
    }
    drop(ready_tx);
    let (mut established, mut failed, mut errors) = (0usize, 0usize, Vec::new());
    let setup_deadline = tokio::time::sleep(Duration::from_secs(ctx.common.setup_timeout));
    tokio::pin!(setup_deadline);
    while established + failed < args.conns {
        tokio::select! {
            _ = &mut setup_deadline => {
                failed = args.conns - established;
                errors.push("not all clients joined within the setup timeout".to_string());
                break;
            }
            r = ready_rx.recv() => match r {
                Some(Ok(())) => established += 1,
                Some(Err(e)) => {
                    failed += 1;
                    if errors.len() < 5 {
                        errors.push(e);
                    }
                }
                None => break,
            },
        }
        ctx.progress.inc(1);
    }
    report.setup = Some(crate::fleet::SetupReport {
        attempted: args.conns,
        established,
        failed,
        concurrency: ctx.common.connect_concurrency,
        wall_s: setup_start.elapsed().as_secs_f64(),
        joined_per_s: established as f64 / setup_start.elapsed().as_secs_f64().max(1e-9),
        first_errors: errors,
        ..Default::default()
    });
    chat.newest.seed(&flows);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let before = totals(&flows, &chat.newest);
    let s0 = sample(&ctx.target.watched).await;
    let start = Instant::now();
    chat.go.cancel();
    ctx.progress
        .phase(&format!("chatting for {} s", args.duration), 0);
    while start.elapsed() < chat.chat_for {
        tokio::time::sleep(Duration::from_millis(250)).await;
        ctx.progress.message(format!(
            "{} sent, {} delivered",
            chat.sent.load(Ordering::Relaxed),
            chat.shared.recorder.count()
        ));
    }
    let chat_s = start.elapsed().as_secs_f64();
    ctx.progress.phase("waiting for deliveries", 0);
    // Let the last acks arrive, then wait for the deliveries they promise.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (drained, behind) = drain(&flows, &chat.newest, Duration::from_secs(args.drain)).await;
    let s1 = sample(&ctx.target.watched).await;
    let wall = start.elapsed().as_secs_f64();
    let (delivered, hist) = chat.shared.recorder.take();
    let used = usage(&s0, &s1);
    let sent = chat.sent.load(Ordering::Relaxed);
    report.publish = Some(PublishReport {
        target_rate: args.rate * established as f64,
        due: sent,
        ok: sent,
        duration_s: chat_s,
        achieved_rate: sent as f64 / chat_s,
        api_latency: Percentiles::of(&histogram()),
        ..Default::default()
    });
    report.delivery = Some(Delivery {
        totals: totals(&flows, &chat.newest).since(&before),
        delivered,
        window_s: chat_s,
        delivered_per_s: delivered as f64 / chat_s,
        drained,
        connections_behind: behind,
    });
    report.latency = Some(Percentiles::of(&hist));
    report.cpu = Some(Cpu::of(&used, wall, delivered));
    report.resources = used;
    report.closes = lock(&chat.shared.closes).clone();
    report.errors = lock(&chat.shared.errors).clone();
    report.notes.push(format!(
        "{rooms} rooms of {room_size}; each message reaches every member, its publisher included"
    ));
    ctx.progress.phase("closing connections", 0);
    chat.stop.cancel();
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(20), all).await.is_err() {
        tasks.abort_all();
    }
    Ok(report)
}

async fn client_task(
    chat: Arc<Chat>,
    flow: Arc<Flow>,
    permits: Arc<Semaphore>,
    ready: mpsc::UnboundedSender<Result<(), String>>,
) {
    let joined = {
        let Ok(_permit) = permits.acquire().await else {
            return;
        };
        tokio::time::timeout(
            Duration::from_secs(30),
            client::join(&chat.target, flow.id, &flow.room, None, &mut |_| {}),
        )
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("join timed out")))
    };
    let ws = match joined {
        Ok((ws, joined, _)) => {
            client::apply_joined(&flow, &joined, false);
            let _ = ready.send(Ok(()));
            ws
        }
        Err(e) => {
            lock(&flow.state).dead = true;
            let _ = ready.send(Err(format!("{e:#}")));
            return;
        }
    };
    drop(ready);
    let (mut rd, mut wr) = ws.split(tokio::io::split);
    rd.set_auto_pong(false);
    rd.set_auto_close(false);
    let (pongs_tx, mut pongs) = mpsc::channel::<Vec<u8>>(8);

    let writer_chat = chat.clone();
    let room = flow.room.clone();
    let id = flow.id;
    let writer = tokio::spawn(async move {
        let chat = writer_chat;
        tokio::select! {
            _ = chat.stop.cancelled() => return,
            _ = chat.go.cancelled() => {}
        }
        let start = tokio::time::Instant::now();
        // Spread the clients' first messages over one period.
        let phase = chat.period.mul_f64((id as f64 * 0.618_034).fract());
        let mut next = start + phase;
        let mut seq = 0u64;
        loop {
            let publishing = next.duration_since(start) < chat.chat_for;
            tokio::select! {
                _ = chat.stop.cancelled() => break,
                Some(p) = pongs.recv() => {
                    if wr.write_frame(Frame::pong(Payload::Owned(p))).await.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(next), if publishing => {
                    seq += 1;
                    let text = format!(
                        r#"{{"op":"publish","id":{seq},"room":"{room}","event":"m","data":{}}}"#,
                        payload(now_us(), chat.payload)
                    );
                    if wr.write_frame(Frame::text(Payload::Owned(text.into_bytes()))).await.is_err() {
                        return;
                    }
                    chat.sent.fetch_add(1, Ordering::Relaxed);
                    next += chat.period;
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), wr.write_frame(Frame::close(1000, b""))).await;
    });

    let mut no_obligations = |_: Frame<'_>| async { Ok::<(), WebSocketError>(()) };
    loop {
        let frame = tokio::select! {
            _ = chat.stop.cancelled() => break,
            f = rd.read_frame(&mut no_obligations) => f,
        };
        match frame {
            Ok(frame) => match frame.opcode {
                OpCode::Text => {
                    let reply = client::on_text(
                        Kind::Herald,
                        &frame.payload,
                        &flow,
                        &chat.shared,
                        Some(&chat.newest),
                    );
                    debug_assert_eq!(reply, Reply::Nothing);
                }
                OpCode::Ping => {
                    let _ = pongs_tx.try_send(frame.payload.to_vec());
                }
                OpCode::Close => {
                    chat.shared.close(client::close_code(&frame.payload));
                    lock(&flow.state).dead = true;
                    break;
                }
                _ => {}
            },
            Err(e) => {
                chat.shared.close(1006);
                chat.shared.error(e.to_string());
                lock(&flow.state).dead = true;
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), writer).await;
}
