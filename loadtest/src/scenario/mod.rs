//! The scenarios, and the measurement window they share: reset the
//! counters, read the servers' CPU, publish, wait for every connection to
//! catch up, read the CPU again, and account for every event.

pub mod chat;
pub mod churn;
pub mod connect;
pub mod fanout;
pub mod idle;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::cli::Common;
use crate::fleet::{Fleet, FleetSpec};
use crate::flow::{Flow, Newest, behind, lock, totals};
use crate::progress::Progress;
use crate::publisher::{self, PublishReport, PublishSpec};
use crate::report::{Cpu, Delivery};
use crate::resources::{Usage, sample, usage};
use crate::stats::Percentiles;
use crate::target::Target;

/// What every scenario gets.
pub struct Ctx<'a> {
    pub target: Arc<Target>,
    pub common: &'a Common,
    pub progress: &'a Progress,
    pub mode: &'static str,
}

impl Ctx<'_> {
    pub fn fleet_spec(&self, conns: usize, rooms: usize, concurrency: usize) -> FleetSpec {
        FleetSpec {
            first: 0,
            conns,
            rooms,
            concurrency,
            setup_timeout: Duration::from_secs(self.common.setup_timeout),
        }
    }
}

/// Opens `conns` connections over `rooms` rooms for a publishing scenario,
/// records the setup in `report`, learns each room's newest offset, and
/// lets the servers settle for a second.
pub async fn open_rooms(
    ctx: &Ctx<'_>,
    conns: usize,
    rooms: usize,
    report: &mut crate::report::Report,
) -> Result<(Fleet, Arc<Newest>)> {
    let fleet = Fleet::open(
        ctx.target.clone(),
        &ctx.fleet_spec(conns, rooms, ctx.common.connect_concurrency),
        ctx.progress,
    )
    .await?;
    report.setup = Some(fleet.setup.clone());
    let newest = Newest::new(rooms);
    newest.seed(&fleet.flows);
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok((fleet, newest))
}

/// One measured stretch of publishing.
pub struct Window {
    pub publish: PublishReport,
    pub delivery: Delivery,
    pub latency: Percentiles,
    pub usage: Vec<Usage>,
    pub cpu: Cpu,
    /// Close frames received during the window.
    pub closes: u64,
}

/// Waits until every live connection has the newest event of its room.
pub async fn drain(flows: &[Arc<Flow>], newest: &Newest, limit: Duration) -> (bool, usize) {
    let start = Instant::now();
    loop {
        let n = behind(flows, newest);
        if n == 0 {
            return (true, 0);
        }
        if start.elapsed() >= limit {
            return (false, n);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn closes(fleet: &Fleet) -> u64 {
    lock(&fleet.shared.closes).values().sum()
}

/// Publishes per `spec` to the fleet's rooms and measures the deliveries.
pub async fn window(
    ctx: &Ctx<'_>,
    fleet: &Fleet,
    newest: &Arc<Newest>,
    spec: &PublishSpec,
    drain_limit: Duration,
) -> Result<Window> {
    let before = totals(&fleet.flows, newest);
    let closes_before = closes(fleet);
    let recorder = &fleet.shared.recorder;
    let _ = recorder.take();
    let s0 = sample(&ctx.target.watched).await;
    let start = Instant::now();
    let total = (spec.rate * spec.duration.as_secs_f64()).round() as u64;
    ctx.progress.phase(
        &format!("publishing {}/s for {} s", spec.rate, spec.duration.as_secs()),
        total.max(1),
    );
    let mut shown = 0;
    let publish = publisher::run(&ctx.target, spec, newest, |issued| {
        ctx.progress.inc(issued - shown);
        shown = issued;
        ctx.progress
            .message(format!("{} delivered, {} live", recorder.count(), fleet.live()));
    })
    .await?;
    ctx.progress.phase("waiting for deliveries", 0);
    let (drained, connections_behind) = drain(&fleet.flows, newest, drain_limit).await;
    let s1 = sample(&ctx.target.watched).await;
    let wall = start.elapsed().as_secs_f64();
    let (delivered, hist) = recorder.take();
    let after = totals(&fleet.flows, newest);
    let usage = usage(&s0, &s1);
    let cpu = Cpu::of(&usage, wall, delivered);
    let window_s = publish.duration_s.max(1e-9);
    Ok(Window {
        delivery: Delivery {
            totals: after.since(&before),
            delivered,
            window_s,
            delivered_per_s: delivered as f64 / window_s,
            drained,
            connections_behind,
        },
        publish,
        latency: Percentiles::of(&hist),
        usage,
        cpu,
        closes: closes(fleet).saturating_sub(closes_before),
    })
}

/// Copies what the connections saw into the report.
pub fn finish_report(report: &mut crate::report::Report, fleet: &Fleet) {
    report.closes = lock(&fleet.shared.closes).clone();
    report.errors = lock(&fleet.shared.errors).clone();
    let other = fleet
        .shared
        .other_frames
        .load(std::sync::atomic::Ordering::Relaxed);
    if other > 0 {
        report
            .notes
            .push(format!("{other} frames outside the followed rooms (ignored)"));
    }
}
