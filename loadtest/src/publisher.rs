//! The open-loop publisher: publishes at a fixed rate through the HTTP API
//! (Herald's `POST /v1/publish`, or the Socket.IO peer's `POST /publish`)
//! over several keep-alive connections with one request in flight each.
//!
//! Open loop: publish `n` is due at `start + n / rate` whether or not the
//! earlier ones were answered, and its payload carries that due time, so a
//! server that falls behind shows as latency rather than as a slower
//! publisher (no coordinated omission). When every connection is busy and
//! the backlog is full, a due publish is skipped and counted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::extract::{answer_offset, payload};
use crate::flow::Newest;
use crate::stats::{Percentiles, histogram, now_us};
use crate::target::{Endpoint, Target};

/// How long one publish may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct PublishSpec {
    /// Publishes per second, over all rooms (round robin).
    pub rate: f64,
    pub duration: Duration,
    pub rooms: usize,
    /// Bytes of `data` per publish.
    pub payload: usize,
    /// Keep-alive connections (= publishes in flight).
    pub conns: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PublishReport {
    pub target_rate: f64,
    pub due: u64,
    pub ok: u64,
    pub failed: u64,
    /// Due publishes dropped because every connection was busy and the
    /// backlog was full (the publisher could not keep the rate).
    pub skipped: u64,
    pub duration_s: f64,
    /// Successful publishes per second over the publishing window.
    pub achieved_rate: f64,
    /// Request round trip as the publisher saw it.
    pub api_latency: Percentiles,
    pub failures: BTreeMap<String, u64>,
}

struct Ticket {
    room: usize,
    due_us: u64,
}

#[derive(Default)]
struct WorkerStats {
    ok: u64,
    failed: u64,
    failures: BTreeMap<String, u64>,
    latency: Option<Histogram<u64>>,
}

async fn connect(endpoint: &Endpoint) -> Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(endpoint.addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn publish_once(
    sender: &mut SendRequest<Full<Bytes>>,
    endpoint: &Endpoint,
    auth: &str,
    body: String,
) -> Result<(u16, Bytes)> {
    sender.ready().await?;
    let req = http::Request::post(&endpoint.path)
        .header(http::header::HOST, &endpoint.host)
        .header(http::header::AUTHORIZATION, auth)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let res = sender.send_request(req).await?;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    endpoint: Endpoint,
    auth: Arc<str>,
    rooms: Arc<Vec<String>>,
    tickets: Arc<tokio::sync::Mutex<mpsc::Receiver<Ticket>>>,
    newest: Arc<Newest>,
    payload_bytes: usize,
) -> WorkerStats {
    let mut stats = WorkerStats::default();
    let mut latency = histogram();
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    loop {
        let ticket = { tickets.lock().await.recv().await };
        let Some(ticket) = ticket else { break };
        let fail = |stats: &mut WorkerStats, why: String| {
            stats.failed += 1;
            *stats.failures.entry(why).or_default() += 1;
        };
        if sender.is_none() {
            match connect(&endpoint).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    fail(&mut stats, format!("connect: {e}"));
                    continue;
                }
            }
        }
        let Some(conn) = sender.as_mut() else { continue };
        let room = &rooms[ticket.room];
        let body = format!(
            r#"{{"room":"{room}","event":"m","data":{}}}"#,
            payload(ticket.due_us, payload_bytes)
        );
        let started = Instant::now();
        match tokio::time::timeout(REQUEST_TIMEOUT, publish_once(conn, &endpoint, &auth, body)).await {
            Ok(Ok((200, body))) => {
                latency.saturating_record(started.elapsed().as_micros().max(1) as u64);
                stats.ok += 1;
                if let Some(offset) = answer_offset(&body) {
                    newest.saw(ticket.room, offset);
                }
            }
            Ok(Ok((status, _))) => {
                latency.saturating_record(started.elapsed().as_micros().max(1) as u64);
                fail(&mut stats, format!("HTTP {status}"));
            }
            Ok(Err(e)) => {
                fail(&mut stats, format!("{e}"));
                sender = None;
            }
            Err(_) => {
                fail(&mut stats, "timeout".into());
                sender = None;
            }
        }
    }
    stats.latency = Some(latency);
    stats
}

/// Publishes at `spec.rate` for `spec.duration`, recording each room's
/// newest offset in `newest`. `tick` is called about every 250 ms.
pub async fn run(
    target: &Target,
    spec: &PublishSpec,
    newest: &Arc<Newest>,
    mut tick: impl FnMut(u64),
) -> Result<PublishReport> {
    let endpoint = target
        .publish
        .clone()
        .context("no publish endpoint (--api-url)")?;
    let auth: Arc<str> = format!("Bearer {}", target.api_key).into();
    let rooms: Arc<Vec<String>> = Arc::new((0..spec.rooms.max(1)).map(|k| target.room(k)).collect());
    let backlog = (spec.rate as usize).clamp(64, 100_000);
    let (tx, rx) = mpsc::channel::<Ticket>(backlog);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let workers: Vec<_> = (0..spec.conns.max(1))
        .map(|_| {
            tokio::spawn(worker(
                endpoint.clone(),
                auth.clone(),
                rooms.clone(),
                rx.clone(),
                newest.clone(),
                spec.payload,
            ))
        })
        .collect();

    let total = (spec.rate * spec.duration.as_secs_f64()).round().max(1.0) as u64;
    let interval_us = 1e6 / spec.rate.max(1e-6);
    let start = Instant::now();
    let start_us = now_us();
    let mut report = PublishReport {
        target_rate: spec.rate,
        ..PublishReport::default()
    };
    let mut issued = 0u64;
    let mut clock = tokio::time::interval(Duration::from_millis(1));
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_tick = Instant::now();
    while issued < total {
        clock.tick().await;
        let due = ((start.elapsed().as_secs_f64() * spec.rate) as u64 + 1).min(total);
        while issued < due {
            let ticket = Ticket {
                room: (issued % rooms.len() as u64) as usize,
                due_us: start_us + (issued as f64 * interval_us) as u64,
            };
            match tx.try_send(ticket) {
                Ok(()) => report.due += 1,
                Err(_) => report.skipped += 1,
            }
            issued += 1;
        }
        if last_tick.elapsed() >= Duration::from_millis(250) {
            last_tick = Instant::now();
            tick(issued);
        }
    }
    drop(tx);
    let mut api_latency = histogram();
    for w in workers {
        let grace = REQUEST_TIMEOUT + Duration::from_secs(5);
        let Ok(Ok(stats)) = tokio::time::timeout(grace, w).await else {
            report.failures.insert("worker did not finish".into(), 1);
            continue;
        };
        report.ok += stats.ok;
        report.failed += stats.failed;
        for (k, v) in stats.failures {
            *report.failures.entry(k).or_default() += v;
        }
        if let Some(h) = stats.latency {
            let _ = api_latency.add(&h);
        }
    }
    report.api_latency = Percentiles::of(&api_latency);
    report.duration_s = start.elapsed().as_secs_f64();
    report.achieved_rate = report.ok as f64 / report.duration_s.max(1e-9);
    Ok(report)
}
