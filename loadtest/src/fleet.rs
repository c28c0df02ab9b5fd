//! A fleet of load connections: opened at a bounded concurrency, each
//! joined to one room, each read by its own task until the fleet stops.
//! A connection that is closed or breaks reconnects and resumes from its
//! last offset (as the browser SDK does); churn asks connections to do so.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Exit, Resume, Timing};
use crate::flow::{Flow, Shared, lock};
use crate::progress::Progress;
use crate::stats::{Percentiles, histogram};
use crate::target::Target;

/// How long one connection may take to connect and join.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Reconnect attempts after a connection is lost, before giving up.
const RECONNECT_ATTEMPTS: u32 = 6;

#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// The first connection's index (load user, gateway and room are
    /// chosen by index, so helper processes can each take a slice).
    pub first: usize,
    pub conns: usize,
    /// Connection `i` joins room `i % rooms`.
    pub rooms: usize,
    pub concurrency: usize,
    /// Give up on the setup after this long.
    pub setup_timeout: Duration,
}

/// How the connections were opened.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SetupReport {
    pub attempted: usize,
    pub established: usize,
    pub failed: usize,
    pub concurrency: usize,
    /// From the first connect to the last join.
    pub wall_s: f64,
    pub joined_per_s: f64,
    /// Per connection, from the TCP connect: TCP, the upgrade's 101, the
    /// authenticated welcome, and `joined`.
    pub tcp: Percentiles,
    pub upgrade: Percentiles,
    pub welcome: Percentiles,
    pub joined: Percentiles,
    pub first_errors: Vec<String>,
}

pub struct Fleet {
    pub flows: Vec<Arc<Flow>>,
    pub shared: Arc<Shared>,
    pub setup: SetupReport,
    /// Connect-to-joined times (µs), for merging across processes.
    pub joined_hist: Histogram<u64>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
    reconnect_times: Arc<std::sync::Mutex<Histogram<u64>>>,
}

type Ready = Result<Timing, String>;

impl Fleet {
    /// Opens the fleet and waits until every connection joined or failed.
    pub async fn open(target: Arc<Target>, spec: &FleetSpec, progress: &Progress) -> Result<Fleet> {
        let shared = Arc::new(Shared::default());
        let stop = CancellationToken::new();
        let rooms = spec.rooms.max(1);
        let flows: Vec<Arc<Flow>> = (spec.first..spec.first + spec.conns)
            .map(|i| Arc::new(Flow::new(i, i % rooms, target.room(i % rooms))))
            .collect();
        let permits = Arc::new(Semaphore::new(spec.concurrency.max(1)));
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Ready>();
        let reconnect_times = Arc::new(std::sync::Mutex::new(histogram()));
        let mut tasks = JoinSet::new();
        progress.phase(
            &format!("connecting {} to {}", spec.conns, target.kind.name()),
            spec.conns as u64,
        );
        let start = Instant::now();
        for flow in &flows {
            tasks.spawn(run_connection(
                target.clone(),
                flow.clone(),
                shared.clone(),
                stop.clone(),
                permits.clone(),
                ready_tx.clone(),
                reconnect_times.clone(),
            ));
        }
        drop(ready_tx);
        let mut setup = SetupReport {
            attempted: spec.conns,
            concurrency: spec.concurrency,
            ..SetupReport::default()
        };
        let mut hists = [histogram(), histogram(), histogram(), histogram()];
        let deadline = tokio::time::sleep(spec.setup_timeout);
        tokio::pin!(deadline);
        let mut last_joined = start.elapsed();
        while setup.established + setup.failed < spec.conns {
            tokio::select! {
                _ = &mut deadline => {
                    let missing = spec.conns - setup.established - setup.failed;
                    setup.failed += missing;
                    setup.first_errors.push(format!("{missing} connections not joined within the setup timeout"));
                    break;
                }
                ready = ready_rx.recv() => match ready {
                    Some(Ok(t)) => {
                        setup.established += 1;
                        last_joined = start.elapsed();
                        for (h, d) in hists.iter_mut().zip([t.tcp, t.upgrade, t.welcome, t.joined]) {
                            h.saturating_record(d.as_micros().max(1) as u64);
                        }
                        progress.inc(1);
                    }
                    Some(Err(e)) => {
                        setup.failed += 1;
                        if setup.first_errors.len() < 5 {
                            setup.first_errors.push(e);
                        }
                        progress.inc(1);
                    }
                    None => break,
                },
            }
        }
        setup.wall_s = last_joined.as_secs_f64();
        setup.joined_per_s = if setup.wall_s > 0.0 {
            setup.established as f64 / setup.wall_s
        } else {
            0.0
        };
        [setup.tcp, setup.upgrade, setup.welcome, setup.joined] = hists.each_ref().map(Percentiles::of);
        let [_, _, _, joined_hist] = hists;
        Ok(Fleet {
            flows,
            shared,
            setup,
            joined_hist,
            stop,
            tasks,
            reconnect_times,
        })
    }

    pub fn live(&self) -> u64 {
        self.shared.live.load(Ordering::Relaxed)
    }

    /// Time from a churn request to `joined` on the new connection.
    pub fn reconnect_times(&self) -> Percentiles {
        Percentiles::of(&lock(&self.reconnect_times))
    }

    /// Stops every connection (each sends a close frame) and waits, bounded.
    pub async fn close(mut self) {
        self.stop.cancel();
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(20), all).await.is_err() {
            self.tasks.abort_all();
        }
    }
}

async fn run_connection(
    target: Arc<Target>,
    flow: Arc<Flow>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    permits: Arc<Semaphore>,
    ready: mpsc::UnboundedSender<Ready>,
    reconnect_times: Arc<std::sync::Mutex<Histogram<u64>>>,
) {
    let first = {
        let Ok(_permit) = permits.acquire().await else {
            return;
        };
        let mut ignore_replay = |_: &crate::extract::Event<'_>| {};
        let attempt = tokio::time::timeout(
            JOIN_TIMEOUT,
            client::join(&target, flow.id, &flow.room, None, &mut ignore_replay),
        );
        tokio::select! {
            _ = stop.cancelled() => return,
            res = attempt => res.unwrap_or_else(|_| Err(anyhow::anyhow!("join timed out"))),
        }
    };
    let mut ws = match first {
        Ok((ws, joined, timing)) => {
            client::apply_joined(&flow, &joined, false);
            shared.live.fetch_add(1, Ordering::Relaxed);
            let _ = ready.send(Ok(timing));
            ws
        }
        Err(e) => {
            lock(&flow.state).dead = true;
            let _ = ready.send(Err(format!("{e:#}")));
            return;
        }
    };
    drop(ready);
    loop {
        let exit = client::pump(&mut ws, target.kind, &flow, &shared, &stop).await;
        let requested = Instant::now();
        match exit {
            Exit::Stopped => {
                client::close(&mut ws).await;
                break;
            }
            Exit::Reconnect => client::close(&mut ws).await,
            Exit::Closed(code) => shared.close(code),
            Exit::Failed(e) => {
                shared.close(1006);
                shared.error(e);
            }
        }
        drop(ws);
        lock(&flow.state).live = false;
        shared.live.fetch_sub(1, Ordering::Relaxed);
        match resume(&target, &flow, &stop).await {
            Some(new) => {
                ws = new;
                shared.live.fetch_add(1, Ordering::Relaxed);
                lock(&reconnect_times).saturating_record(requested.elapsed().as_micros().max(1) as u64);
            }
            None => {
                lock(&flow.state).dead = true;
                break;
            }
        }
    }
}

/// Reconnects and resumes the flow's room from its last position, with
/// backoff; `None` when stopped or every attempt failed.
async fn resume(target: &Target, flow: &Flow, stop: &CancellationToken) -> Option<client::Ws> {
    let mut backoff = Duration::from_millis(50);
    for attempt in 0..RECONNECT_ATTEMPTS {
        if stop.is_cancelled() {
            return None;
        }
        let position = {
            let s = lock(&flow.state);
            Resume {
                offset: s.tracker.last(),
                epoch: s.epoch.clone(),
            }
        };
        let mut on_replayed = |event: &crate::extract::Event<'_>| client::on_replayed(flow, event);
        let joined = tokio::time::timeout(
            JOIN_TIMEOUT,
            client::join(target, flow.id, &flow.room, Some(&position), &mut on_replayed),
        );
        let res = tokio::select! {
            _ = stop.cancelled() => return None,
            res = joined => res,
        };
        match res {
            Ok(Ok((ws, joined, _))) => {
                client::apply_joined(flow, &joined, true);
                lock(&flow.state).reconnects += 1;
                return Some(ws);
            }
            Ok(Err(_)) | Err(_) if attempt + 1 < RECONNECT_ATTEMPTS => {
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            _ => {}
        }
    }
    None
}
