//! `connect`: a connect storm — C connections, each TCP, WebSocket upgrade,
//! authentication and join, with a given number in progress at once. The
//! figure is the wall time from the first TCP connect to the last
//! `joined`, and the per-connection percentiles of each step.

use std::time::Duration;

use anyhow::Result;

use super::{Ctx, finish_report};
use crate::cli::ConnectArgs;
use crate::fleet::Fleet;
use crate::report::{Cpu, Report};
use crate::resources::{sample, usage};

pub async fn run(ctx: &Ctx<'_>, args: &ConnectArgs) -> Result<Report> {
    let mut report = Report::new("connect", ctx.target.kind, ctx.mode, serde_json::to_value(args)?);
    let concurrency = args.concurrency.unwrap_or(args.conns).max(1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s0 = sample(&ctx.target.watched).await;
    let start = std::time::Instant::now();
    let fleet = Fleet::open(
        ctx.target.clone(),
        &ctx.fleet_spec(args.conns, args.rooms.max(1), concurrency),
        ctx.progress,
    )
    .await?;
    let s1 = sample(&ctx.target.watched).await;
    let wall = start.elapsed().as_secs_f64();
    let used = usage(&s0, &s1);
    // CPU "per delivery" here is CPU per joined connection.
    let cpu = Cpu::of(&used, wall, fleet.setup.established as u64);
    report.notes.push(format!(
        "server CPU per joined connection: {} µs (gateways + API), {} µs with Redis",
        cpu.server_us_per_delivery
            .map_or("n/a".into(), |v| format!("{v:.0}")),
        cpu.with_redis_us_per_delivery
            .map_or("n/a".into(), |v| format!("{v:.0}")),
    ));
    report.cpu = Some(cpu);
    report.resources = used;
    report.setup = Some(fleet.setup.clone());
    // Hold a moment: joined connections must stay up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let live = fleet.live();
    if live < fleet.setup.established as u64 {
        report.notes.push(format!(
            "{} joined connections were lost within a second",
            fleet.setup.established as u64 - live
        ));
    }
    finish_report(&mut report, &fleet);
    ctx.progress.phase("closing connections", 0);
    fleet.close().await;
    Ok(report)
}
