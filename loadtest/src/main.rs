//! `loadtest`: Herald's load harness. See `loadtest --help` and
//! docs/benchmarks.md for what it measures and how.

mod cli;
mod client;
mod extract;
mod fleet;
mod flow;
mod limits;
mod progress;
mod publisher;
mod ramp;
mod report;
mod resources;
mod scenario;
mod seq;
mod spawn;
mod stats;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::cli::{Cli, Common, Scenario, TargetChoice};
use crate::limits::RESERVED_FDS;
use crate::progress::Progress;
use crate::report::Report;
use crate::resources::{Probe, Role, Watched};
use crate::scenario::Ctx;
use crate::spawn::{Cluster, SpawnSpec};
use crate::target::{Auth, Endpoint, Kind, Target, loopback_sources};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Every connection is a file descriptor; spawned servers inherit this.
    limits::raise_nofile(1 << 20);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        match cli.scenario {
            Scenario::Hold(args) => scenario::idle::hold(args).await.map(|()| ExitCode::SUCCESS),
            scenario => run(scenario).await,
        }
    });
    // Connection tasks still closing must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

impl Scenario {
    fn common(&self) -> &Common {
        match self {
            Scenario::Fanout(a) => &a.common,
            Scenario::Idle(a) => &a.common,
            Scenario::Connect(a) => &a.common,
            Scenario::Churn(a) => &a.common,
            Scenario::Chat(a) => &a.common,
            Scenario::Hold(_) => unreachable!("hold has no common options"),
        }
    }

    fn conns(&self) -> usize {
        match self {
            Scenario::Fanout(a) => a.conns,
            Scenario::Idle(a) => a.conns,
            Scenario::Connect(a) => a.conns,
            Scenario::Churn(a) => a.conns,
            Scenario::Chat(a) => a.conns,
            Scenario::Hold(a) => a.count,
        }
    }
}

async fn run(scenario: Scenario) -> Result<ExitCode> {
    let common = scenario.common().clone();
    let kinds: &[Kind] = match common.target {
        TargetChoice::Herald => &[Kind::Herald],
        TargetChoice::Socketio => &[Kind::Socketio],
        TargetChoice::Both => &[Kind::Herald, Kind::Socketio],
    };
    if common.target == TargetChoice::Both && !common.spawn {
        bail!("--target both needs --spawn (in target mode, run each target with its own URLs)");
    }
    if !common.spawn && common.gateway_urls.is_empty() {
        bail!("give --spawn, or the deployment to target with --gateway-url (and --api-url)");
    }
    check_descriptors(&scenario, &common)?;
    let progress = Progress::new(common.quiet);
    let deadline = Instant::now() + Duration::from_secs(common.max_time);
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for &kind in kinds {
        match run_one(&scenario, &common, kind, &progress, deadline).await {
            Ok(report) => reports.push(report),
            Err(e) => {
                progress.note(&format!("{}: {e:#}", kind.name()));
                failures.push(format!("{}: {e:#}", kind.name()));
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    progress.finish();
    for r in &reports {
        println!("{}", report::human(r));
    }
    if let Some(text) = report::comparison(&reports) {
        println!("{text}");
    }
    if let Some(path) = &common.json {
        let json = serde_json::json!({ "runs": reports, "failures": failures });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("loadtest: report written to {}", path.display());
    }
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("loadtest: {f}");
        }
        return Ok(ExitCode::FAILURE);
    }
    let herald_unclean = reports.iter().any(|r| r.target == Kind::Herald && !r.clean());
    if herald_unclean && !common.allow_loss {
        eprintln!("loadtest: Herald lost, duplicated or reordered events (or connections failed)");
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

/// One process holds at most RLIMIT_NOFILE sockets: say so before starting
/// rather than failing half-way (idle spreads over helper processes).
fn check_descriptors(scenario: &Scenario, common: &Common) -> Result<()> {
    let (soft, hard) = limits::nofile();
    let conns = scenario.conns() as u64;
    if !matches!(scenario, Scenario::Idle(_)) && conns + RESERVED_FDS > soft {
        bail!(
            "{conns} connections need more file descriptors than this process may open ({soft}); \
             use fewer, or the idle scenario (which spreads over processes)"
        );
    }
    if common.spawn {
        let per_gateway = conns.div_ceil(common.gateways.max(1) as u64);
        if per_gateway + RESERVED_FDS > hard {
            bail!(
                "{per_gateway} connections per gateway exceed the open-files limit ({hard}) the \
                 spawned gateways inherit: use more --gateways"
            );
        }
    }
    Ok(())
}

fn random_id() -> String {
    let mut x = crate::stats::now_us() ^ (u64::from(std::process::id()) << 20);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    format!("{:06x}", x & 0xff_ffff)
}

fn default_herald_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("herald")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("herald"))
}

fn default_socketio_dir() -> PathBuf {
    let beside_source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/socketio");
    if beside_source.is_dir() {
        beside_source
    } else {
        PathBuf::from("loadtest/peers/socketio")
    }
}

async fn run_one(
    scenario: &Scenario,
    common: &Common,
    kind: Kind,
    progress: &Progress,
    deadline: Instant,
) -> Result<Report> {
    let mode = if common.spawn { "spawn" } else { "target" };
    let mut cluster = if common.spawn {
        progress.phase(
            &format!("starting {} ({} nodes)", kind.name(), common.gateways),
            0,
        );
        let spec = SpawnSpec {
            kind,
            gateways: common.gateways.max(1),
            herald_bin: common.herald_bin.clone().unwrap_or_else(default_herald_bin),
            redis_bin: common.redis_bin.clone(),
            node_bin: common.node_bin.clone(),
            socketio_dir: common.socketio_dir.clone().unwrap_or_else(default_socketio_dir),
            room_prefix: common.room_prefix.clone(),
            history_size: common.history_size,
            keep_logs: common.keep_logs,
        };
        Some(Cluster::start(&spec).await?)
    } else {
        None
    };
    let result = async {
        let target = Arc::new(build_target(kind, common, cluster.as_ref(), scenario.conns()).await?);
        let ctx = Ctx {
            target: target.clone(),
            common,
            progress,
            mode,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let work = async {
            match scenario {
                Scenario::Fanout(a) => scenario::fanout::run(&ctx, a).await,
                Scenario::Idle(a) => scenario::idle::run(&ctx, a).await,
                Scenario::Connect(a) => scenario::connect::run(&ctx, a).await,
                Scenario::Churn(a) => scenario::churn::run(&ctx, a).await,
                Scenario::Chat(a) => scenario::chat::run(&ctx, a).await,
                Scenario::Hold(_) => unreachable!(),
            }
        };
        let mut report = tokio::select! {
            r = tokio::time::timeout(left, work) => r.map_err(|_| anyhow::anyhow!("the run exceeded --max-time"))??,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        };
        report.notes.extend(target.notes.iter().cloned());
        Ok::<Report, anyhow::Error>(report)
    }
    .await;
    let exited = cluster.as_mut().map(|c| c.exited()).unwrap_or_default();
    if let Some(c) = cluster {
        progress.phase(&format!("stopping {}", kind.name()), 0);
        c.stop().await;
    }
    let mut report = result?;
    for e in exited {
        report.notes.push(format!("during the run, {e}"));
    }
    Ok(report)
}

async fn build_target(
    kind: Kind,
    common: &Common,
    cluster: Option<&Cluster>,
    conns: usize,
) -> Result<Target> {
    let (ws_path, publish_path) = match kind {
        Kind::Herald => ("/ws", "/v1/publish"),
        Kind::Socketio => ("/socket.io/", "/publish"),
    };
    let mut notes = Vec::new();
    let (gateways, publish, api_key, auth, secret, mut watched) = match cluster {
        Some(c) => (
            c.gateways
                .iter()
                .map(|a| Endpoint::from_addr(*a, ws_path))
                .collect::<Vec<_>>(),
            Some(Endpoint::from_addr(c.publish, publish_path)),
            c.api_key.clone(),
            Auth::secret(&c.secret),
            Some(c.secret.clone()),
            c.watched(),
        ),
        None => {
            let mut gateways = Vec::new();
            for url in &common.gateway_urls {
                gateways.push(Endpoint::parse(url, ws_path).await?);
            }
            let publish = match &common.api_url {
                Some(url) => {
                    let mut e = Endpoint::parse(url, "/").await?;
                    e.path = format!("{}{publish_path}", e.path.trim_end_matches('/'));
                    Some(e)
                }
                None => None,
            };
            let (auth, secret) = match (&common.jwt_secret, &common.token_file) {
                (Some(s), _) => (Auth::secret(s), Some(s.clone())),
                (None, Some(f)) => (Auth::token_file(f)?, None),
                (None, None) => bail!("target mode needs --jwt-secret (LOADTEST_JWT_SECRET) or --token-file"),
            };
            let mut watched = Vec::new();
            let mut metrics = Vec::new();
            for url in &common.metrics_urls {
                metrics.push((
                    url.clone(),
                    Role::Gateway,
                    Endpoint::parse(url, "/metrics").await?,
                ));
            }
            if metrics.is_empty() && kind == Kind::Herald {
                for g in &gateways {
                    metrics.push((
                        g.host.clone(),
                        Role::Gateway,
                        Endpoint {
                            path: "/metrics".into(),
                            ..g.clone()
                        },
                    ));
                }
                if let Some(p) = &publish {
                    metrics.push((
                        p.host.clone(),
                        Role::Api,
                        Endpoint {
                            path: "/metrics".into(),
                            ..p.clone()
                        },
                    ));
                }
            }
            for (name, role, mut endpoint) in metrics {
                endpoint.path = "/metrics".into();
                let probe = Watched {
                    name,
                    role,
                    probe: Probe::Metrics(endpoint),
                };
                let first = resources::sample(std::slice::from_ref(&probe)).await;
                if first[0].cpu_s.is_none() || first[0].rss_bytes.is_none() {
                    notes.push(format!(
                        "{}: /metrics gives no process_cpu_seconds_total / process_resident_memory_bytes: \
                         its CPU and memory are not measured",
                        probe.name
                    ));
                }
                watched.push(probe);
            }
            (
                gateways,
                publish,
                common.api_key.clone().unwrap_or_default(),
                auth,
                secret,
                watched,
            )
        }
    };
    if gateways.is_empty() {
        bail!("no gateway to connect to");
    }
    watched.push(Watched::this_process());
    let sources = loopback_sources(conns, &gateways, common.sources);
    if !sources.is_empty() {
        notes.push(format!(
            "client sockets spread over {} loopback source addresses",
            sources.len()
        ));
    }
    if cluster.is_some() {
        notes.push("CPU and RSS read from /proc/<pid> of the spawned processes".into());
    }
    Ok(Target {
        kind,
        gateways,
        publish,
        api_key,
        auth,
        secret,
        sources,
        watched,
        room_prefix: common.room_prefix.clone(),
        run_id: random_id(),
        notes,
    })
}
