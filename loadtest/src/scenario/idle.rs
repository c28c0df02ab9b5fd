//! `idle`: hold C idle authenticated connections (each in its user room and
//! one shared room) and read what they cost the gateways: resident memory
//! per connection, and CPU while nothing happens but heartbeats.
//!
//! One process can hold only as many sockets as RLIMIT_NOFILE allows; past
//! that the connections are spread over helper processes (`loadtest hold`,
//! this binary), each holding a slice until its stdin closes.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{Ctx, finish_report};
use crate::cli::{HoldArgs, IdleArgs};
use crate::fleet::{Fleet, FleetSpec, SetupReport};
use crate::limits::{RESERVED_FDS, nofile};
use crate::progress::Progress;
use crate::report::{Memory, Report};
use crate::resources::{Probe, Role, Sample, Watched, sample, usage};
use crate::stats::{Percentiles, add_pairs, histogram, to_pairs};
use crate::target::{Auth, Endpoint, Kind, Target, loopback_sources};

/// What a helper reports once its slice is connected.
#[derive(Debug, Serialize, Deserialize)]
struct HoldReady {
    established: usize,
    failed: usize,
    joined_us: Vec<(u64, u64)>,
    errors: Vec<String>,
}

fn rss_of(samples: &[Sample], role: Role) -> Option<u64> {
    let selected: Vec<&Sample> = samples.iter().filter(|s| s.role == role).collect();
    if selected.is_empty() {
        return None;
    }
    selected.iter().map(|s| s.rss_bytes).sum()
}

fn cpu_of(samples: &[Sample], role: Role) -> Option<f64> {
    samples.iter().filter(|s| s.role == role).map(|s| s.cpu_s).sum()
}

pub async fn run(ctx: &Ctx<'_>, args: &IdleArgs) -> Result<Report> {
    let mut report = Report::new("idle", ctx.target.kind, ctx.mode, serde_json::to_value(args)?);
    let rooms = args.rooms.max(1);
    let per_process = args
        .per_process
        .unwrap_or_else(|| nofile().0.saturating_sub(RESERVED_FDS) as usize)
        .max(1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = sample(&ctx.target.watched).await;

    let mut helpers: Vec<Child> = Vec::new();
    let mut watched = ctx.target.watched.clone();
    let (fleet, setup) = if args.conns <= per_process {
        let fleet = Fleet::open(
            ctx.target.clone(),
            &ctx.fleet_spec(args.conns, rooms, ctx.common.connect_concurrency),
            ctx.progress,
        )
        .await?;
        let setup = fleet.setup.clone();
        (Some(fleet), setup)
    } else {
        let slices = args.conns.div_ceil(per_process);
        report.notes.push(format!(
            "{} connections over {slices} load processes (RLIMIT_NOFILE allows {per_process} per process)",
            args.conns
        ));
        let setup = start_helpers(ctx, args, rooms, per_process, &mut helpers).await;
        for (k, h) in helpers.iter().enumerate() {
            if let Some(pid) = h.id() {
                watched.push(Watched {
                    name: format!("loadtest-hold-{k}"),
                    role: Role::Client,
                    probe: Probe::Pid(pid),
                });
            }
        }
        (None, setup?)
    };
    // The base sample has no helpers: give them a zero baseline.
    let base: Vec<Sample> = watched
        .iter()
        .map(|w| {
            base.iter().find(|s| s.name == w.name).cloned().unwrap_or(Sample {
                name: w.name.clone(),
                role: w.role,
                cpu_s: Some(0.0),
                rss_bytes: Some(0),
            })
        })
        .collect();
    let established = setup.established as u64;
    report.setup = Some(setup);

    ctx.progress.phase(&format!("settling {} s", args.settle), 0);
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let settled = sample(&watched).await;
    ctx.progress.phase(
        &format!("holding {established} idle connections for {} s", args.hold),
        0,
    );
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let held = sample(&watched).await;

    let per_conn = |role: Role| -> Option<f64> {
        let (a, b) = (rss_of(&base, role)?, rss_of(&settled, role)?);
        (established > 0).then(|| (b as f64 - a as f64) / established as f64)
    };
    report.memory = Some(Memory {
        connections: established,
        gateway_bytes_per_conn: per_conn(Role::Gateway),
        gateway_rss_before: rss_of(&base, Role::Gateway),
        gateway_rss_after: rss_of(&settled, Role::Gateway),
        redis_bytes_per_conn: per_conn(Role::Redis),
        client_bytes_per_conn: per_conn(Role::Client),
        idle_gateway_cpu_per_s: match (cpu_of(&settled, Role::Gateway), cpu_of(&held, Role::Gateway)) {
            (Some(a), Some(b)) => Some((b - a) / args.hold.max(1) as f64),
            _ => None,
        },
    });
    report.resources = usage(&base, &settled);
    if let Some(fleet) = fleet {
        finish_report(&mut report, &fleet);
        ctx.progress.phase("closing connections", 0);
        fleet.close().await;
    }
    for mut h in helpers {
        drop(h.stdin.take());
        if tokio::time::timeout(Duration::from_secs(30), h.wait())
            .await
            .is_err()
        {
            let _ = h.kill().await;
        }
    }
    Ok(report)
}

/// Starts helper processes for slices of the connections and waits until
/// each has connected its slice.
async fn start_helpers(
    ctx: &Ctx<'_>,
    args: &IdleArgs,
    rooms: usize,
    per_process: usize,
    helpers: &mut Vec<Child>,
) -> Result<SetupReport> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let target = &ctx.target;
    let started = std::time::Instant::now();
    let mut first = 0;
    while first < args.conns {
        let count = per_process.min(args.conns - first);
        let mut cmd = Command::new(&exe);
        cmd.arg("hold")
            .args(["--kind", target.kind.name()])
            .args(["--room-prefix", &target.room_prefix, "--run-id", &target.run_id])
            .args(["--rooms", &rooms.to_string(), "--first", &first.to_string()])
            .args(["--count", &count.to_string(), "--total", &args.conns.to_string()])
            .args(["--concurrency", &ctx.common.connect_concurrency.to_string()])
            .args(["--setup-timeout", &ctx.common.setup_timeout.to_string()])
            .args(["--max-time", &ctx.common.max_time.to_string()]);
        for g in &target.gateways {
            cmd.arg("--gateway-url").arg(format!("ws://{}{}", g.addr, g.path));
        }
        if let Some(n) = ctx.common.sources {
            cmd.args(["--sources", &n.to_string()]);
        }
        match (&target.secret, &ctx.common.token_file) {
            (Some(secret), _) => {
                cmd.env("LOADTEST_JWT_SECRET", secret);
            }
            (None, Some(file)) => {
                cmd.arg("--token-file").arg(file);
            }
            (None, None) => bail!("helpers need a JWT secret or a token file"),
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        helpers.push(cmd.spawn().context("cannot start a helper process")?);
        first += count;
    }
    ctx.progress.phase(
        &format!("connecting {} over {} processes", args.conns, helpers.len()),
        helpers.len() as u64,
    );
    let mut setup = SetupReport {
        attempted: args.conns,
        concurrency: ctx.common.connect_concurrency * helpers.len(),
        ..SetupReport::default()
    };
    let mut joined = histogram();
    for h in helpers.iter_mut() {
        let stdout = h.stdout.take().context("helper without stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(
            Duration::from_secs(ctx.common.setup_timeout + 30),
            lines.next_line(),
        )
        .await
        .context("a helper did not report")??
        .context("a helper exited before reporting")?;
        let ready: HoldReady = serde_json::from_str(&line).context("a helper's report does not parse")?;
        setup.established += ready.established;
        setup.failed += ready.failed;
        setup.first_errors.extend(ready.errors.into_iter().take(2));
        add_pairs(&mut joined, &ready.joined_us);
        ctx.progress.inc(1);
    }
    setup.wall_s = started.elapsed().as_secs_f64();
    setup.joined_per_s = setup.established as f64 / setup.wall_s.max(1e-9);
    setup.joined = Percentiles::of(&joined);
    Ok(setup)
}

/// `loadtest hold`: connects a slice of the idle connections, reports, and
/// holds them until stdin closes (or --max-time passes).
pub async fn hold(args: HoldArgs) -> Result<()> {
    let kind = match args.kind.as_str() {
        "herald" => Kind::Herald,
        "socketio" => Kind::Socketio,
        other => bail!("unknown kind {other}"),
    };
    let mut gateways = Vec::new();
    for url in &args.gateway_urls {
        gateways.push(Endpoint::parse(url, "/ws").await?);
    }
    let (auth, secret) = match (std::env::var("LOADTEST_JWT_SECRET").ok(), &args.token_file) {
        (Some(s), _) => (Auth::secret(&s), Some(s)),
        (None, Some(file)) => (Auth::token_file(file)?, None),
        (None, None) => bail!("hold needs LOADTEST_JWT_SECRET or --token-file"),
    };
    let sources = loopback_sources(args.total, &gateways, args.sources);
    let target = Arc::new(Target {
        kind,
        gateways,
        publish: None,
        api_key: String::new(),
        auth,
        secret,
        sources,
        watched: Vec::new(),
        room_prefix: args.room_prefix.clone(),
        run_id: args.run_id.clone(),
        notes: Vec::new(),
    });
    let spec = FleetSpec {
        first: args.first,
        conns: args.count,
        rooms: args.rooms,
        concurrency: args.concurrency,
        setup_timeout: Duration::from_secs(args.setup_timeout),
    };
    let fleet = Fleet::open(target, &spec, &Progress::new(true)).await?;
    let ready = HoldReady {
        established: fleet.setup.established,
        failed: fleet.setup.failed,
        joined_us: to_pairs(&fleet.joined_hist),
        errors: fleet.setup.first_errors.clone(),
    };
    println!("{}", serde_json::to_string(&ready)?);
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    let wait = async {
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(args.max_time), wait).await;
    fleet.close().await;
    Ok(())
}
