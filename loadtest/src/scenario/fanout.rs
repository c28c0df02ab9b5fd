//! `fanout`: C connections in R rooms, the API publishing at an open-loop
//! rate; or a ramp searching the highest rate that meets the bound.

use std::time::Duration;

use anyhow::Result;

use super::{Ctx, Window, finish_report, window};
use crate::cli::FanoutArgs;
use crate::publisher::PublishSpec;
use crate::ramp::RampSearch;
use crate::report::{Ramp, RampStep, Report};

/// The fewest publishes a ramp step may carry: below it a step's rate and
/// percentiles describe a handful of events, not a sustained load.
const MIN_PUBLISHES_PER_STEP: f64 = 10.0;

/// Whether a ramp step met the bound, and why not.
fn judge(w: &Window, rate: f64, p99_bound_ms: f64) -> (bool, String) {
    let t = &w.delivery.totals;
    let mut why = Vec::new();
    if t.lost > 0 {
        why.push(format!("{} lost", t.lost));
    }
    if t.duplicates > 0 || t.reordered > 0 {
        why.push(format!("{} dup, {} reordered", t.duplicates, t.reordered));
    }
    if !w.delivery.drained {
        why.push(format!("{} conns behind", w.delivery.connections_behind));
    }
    if w.latency.p99_ms >= p99_bound_ms {
        why.push(format!("p99 {:.1} ms", w.latency.p99_ms));
    }
    if w.publish.failed > 0 {
        why.push(format!("{} publishes failed", w.publish.failed));
    }
    if w.publish.skipped > 0 || w.publish.achieved_rate < 0.95 * rate {
        why.push(format!("publisher reached {:.0}/s", w.publish.achieved_rate));
    }
    if w.closes > 0 {
        why.push(format!("{} connections closed", w.closes));
    }
    if w.latency.samples == 0 {
        why.push("nothing delivered".into());
    }
    (why.is_empty(), why.join(", "))
}

pub async fn run(ctx: &Ctx<'_>, args: &FanoutArgs) -> Result<Report> {
    let mut report = Report::new("fanout", ctx.target.kind, ctx.mode, serde_json::to_value(args)?);
    let rooms = args.rooms.clamp(1, args.conns.max(1));
    let (fleet, newest) = super::open_rooms(ctx, args.conns, rooms, &mut report).await?;
    let spec = |rate: f64, secs: u64| PublishSpec {
        rate,
        duration: Duration::from_secs(secs),
        rooms,
        payload: args.publish.payload,
        conns: args.publish.http_conns,
    };
    let drain = Duration::from_secs(args.publish.drain);

    if args.ramp {
        let mut search = RampSearch::new(
            args.ramp_start,
            args.ramp_factor,
            args.ramp_max,
            args.ramp_steps,
            args.ramp_precision,
        )
        .with_floor(MIN_PUBLISHES_PER_STEP / args.step_secs.max(1) as f64);
        let mut steps: Vec<RampStep> = Vec::new();
        while let Some(rate) = search.next_rate() {
            let w = window(ctx, &fleet, &newest, &spec(rate, args.step_secs), drain).await?;
            let (pass, why) = judge(&w, rate, args.p99_ms);
            ctx.progress.note(&format!(
                "ramp {rate:.1}/s: {:.0} deliveries/s, p99 {:.2} ms, lost {} → {}",
                w.delivery.delivered_per_s,
                w.latency.p99_ms,
                w.delivery.totals.lost,
                if pass {
                    "pass".to_string()
                } else {
                    format!("fail ({why})")
                }
            ));
            search.record(rate, pass);
            steps.push(RampStep {
                rate,
                pass,
                why,
                delivered_per_s: w.delivery.delivered_per_s,
                latency: w.latency,
                totals: w.delivery.totals,
                publish: w.publish,
                cpu: w.cpu,
            });
            if (fleet.live() as usize) < fleet.setup.established / 2 {
                report
                    .notes
                    .push("ramp stopped: most connections were lost".into());
                break;
            }
            // Let the servers settle between steps.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let best = steps
            .iter()
            .filter(|s| s.pass)
            .max_by(|a, b| a.rate.total_cmp(&b.rate))
            .cloned();
        report.ramp = Some(Ramp {
            p99_bound_ms: args.p99_ms,
            steps,
            best,
        });
        // The whole run's integrity, over every step.
        let totals = crate::flow::totals(&fleet.flows, &newest);
        report.delivery = Some(crate::report::Delivery {
            totals,
            drained: crate::flow::behind(&fleet.flows, &newest) == 0,
            ..Default::default()
        });
    } else {
        let w = window(ctx, &fleet, &newest, &spec(args.rate, args.duration), drain).await?;
        report.publish = Some(w.publish);
        report.delivery = Some(w.delivery);
        report.latency = Some(w.latency);
        report.cpu = Some(w.cpu);
        report.resources = w.usage;
    }
    finish_report(&mut report, &fleet);
    ctx.progress.phase("closing connections", 0);
    fleet.close().await;
    Ok(report)
}
