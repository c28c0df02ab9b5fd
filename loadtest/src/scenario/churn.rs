//! `churn`: fan-out while connections drop and come back. At the given
//! rate a random live connection closes its socket and reconnects with
//! `hello` + `resume` from its last offset (Herald) or simply rejoins
//! (Socket.IO, which has nothing to resume from). Every event owed to every
//! connection is accounted for across its reconnects.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use super::{Ctx, finish_report, window};
use crate::cli::ChurnArgs;
use crate::flow::{Flow, lock};
use crate::publisher::PublishSpec;
use crate::report::{Churn, Report};

/// A small xorshift generator: which connection drops next.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Asks `rate` connections a second to reconnect until `stop` or `until`.
async fn drive(flows: Arc<Vec<Arc<Flow>>>, rate: f64, until: Duration, stop: CancellationToken) -> u64 {
    let requested = AtomicU64::new(0);
    let mut rng = Rng(crate::stats::now_us() | 1);
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut issued = 0u64;
    while start.elapsed() < until && !stop.is_cancelled() {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while issued < due {
            issued += 1;
            // A connection that is reconnecting already is skipped (a few tries).
            for _ in 0..4 {
                let flow = &flows[(rng.next() % flows.len() as u64) as usize];
                let live = {
                    let s = lock(&flow.state);
                    s.live && !s.dead
                };
                if live {
                    flow.reconnect.notify_one();
                    requested.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
    requested.load(Ordering::Relaxed)
}

pub async fn run(ctx: &Ctx<'_>, args: &ChurnArgs) -> Result<Report> {
    let mut report = Report::new("churn", ctx.target.kind, ctx.mode, serde_json::to_value(args)?);
    let rooms = args.rooms.clamp(1, args.conns.max(1));
    let (fleet, newest) = super::open_rooms(ctx, args.conns, rooms, &mut report).await?;

    let stop = CancellationToken::new();
    let driver = tokio::spawn(drive(
        Arc::new(fleet.flows.clone()),
        args.reconnects,
        Duration::from_secs(args.duration),
        stop.clone(),
    ));
    let spec = PublishSpec {
        rate: args.rate,
        duration: Duration::from_secs(args.duration),
        rooms,
        payload: args.publish.payload,
        conns: args.publish.http_conns,
    };
    let w = window(
        ctx,
        &fleet,
        &newest,
        &spec,
        Duration::from_secs(args.publish.drain),
    )
    .await;
    stop.cancel();
    let requested = driver.await.unwrap_or(0);
    let w = w?;
    report.churn = Some(Churn {
        target_reconnects_per_s: args.reconnects,
        requested,
        reconnects: w.delivery.totals.reconnects,
        unrecovered_resumes: w.delivery.totals.unrecovered_resumes,
        replayed_events: w.delivery.totals.replayed,
        reconnect_time: fleet.reconnect_times(),
    });
    report.publish = Some(w.publish);
    report.delivery = Some(w.delivery);
    report.latency = Some(w.latency);
    report.cpu = Some(w.cpu);
    report.resources = w.usage;
    if ctx.target.kind == crate::target::Kind::Socketio {
        report
            .notes
            .push("Socket.IO has no resume: events published while a client is away are lost to it".into());
    }
    report.notes.push(
        "latency excludes replayed events (they wait for the reconnect by design); \
         delivered counts live events only"
            .into(),
    );
    finish_report(&mut report, &fleet);
    ctx.progress.phase("closing connections", 0);
    fleet.close().await;
    Ok(report)
}
