//! Smoke runs of every `loadtest` scenario at small scale against a cluster
//! it spawns itself (a fresh `redis-server`, two `herald gateway` nodes and
//! an API node on loopback).
//!
//! These check integrity, never speed: each run must deliver what it owes
//! with no loss, duplicate or reordering (the harness exits non-zero on
//! any), and its JSON report must show real traffic. Figures are for
//! `docs/benchmarks.md`, measured with a release build on a quiet machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Connections per smoke run.
const CONNS: &str = "200";
/// Hard bound on one run (the harness also bounds itself with --max-time).
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// The `herald` binary the harness spawns: next to `loadtest` in the same
/// target directory, built first if this test runs without the rest of
/// the workspace.
fn herald_bin() -> PathBuf {
    let loadtest = PathBuf::from(env!("CARGO_BIN_EXE_loadtest"));
    let dir = loadtest.parent().expect("loadtest has a directory");
    let herald = dir.join("herald");
    if !herald.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--locked", "-p", "herald", "--bin", "herald"]);
        if dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build for herald");
        assert!(status.success(), "cargo build -p herald failed: {status}");
    }
    assert!(herald.exists(), "no herald binary at {}", herald.display());
    herald
}

/// Runs `loadtest <args> --spawn …` and returns its JSON report; panics with
/// the harness's output when it fails or overruns.
fn run(name: &str, args: &[&str]) -> Value {
    let dir = std::env::temp_dir().join(format!("herald-loadtest-smoke-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the run directory");
    let json = dir.join("report.json");
    let out = dir.join("output.txt");
    let out_file = std::fs::File::create(&out).expect("create the output file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .args(["--spawn", "--quiet", "--max-time", "90"])
        .arg("--herald-bin")
        .arg(herald_bin())
        .arg("--json")
        .arg(&json)
        .stdin(Stdio::null())
        .stdout(out_file.try_clone().expect("clone the output file"))
        .stderr(out_file)
        .spawn()
        .expect("start loadtest");
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for loadtest") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("loadtest {name} overran {RUN_LIMIT:?}:\n{}", output(&out));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "loadtest {name} failed ({status}):\n{}",
        output(&out)
    );
    let report = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("loadtest {name} wrote no report ({e}):\n{}", output(&out)));
    let _ = std::fs::remove_dir_all(&dir);
    let report: Value = serde_json::from_str(&report).expect("the report is JSON");
    // One target measured: one run, and no failure recorded.
    assert_eq!(report["failures"], Value::Array(vec![]), "{name}: {report}");
    match report["runs"].as_array().map(Vec::as_slice) {
        Some([run]) => run.clone(),
        _ => panic!("{name}: expected one run: {report}"),
    }
}

fn output(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn count(report: &Value, pointer: &str) -> u64 {
    report
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("report has no {pointer}: {report}"))
}

/// The delivery totals of a report: something was owed and received, and
/// nothing was lost, duplicated or reordered.
fn assert_clean_delivery(name: &str, report: &Value) {
    let owed = count(report, "/delivery/totals/owed");
    let received = count(report, "/delivery/totals/received");
    assert!(owed > 0, "{name}: nothing was owed: {report}");
    assert_eq!(received, owed, "{name}: received vs owed: {report}");
    for field in ["lost", "duplicates", "reordered", "dead_connections"] {
        assert_eq!(
            count(report, &format!("/delivery/totals/{field}")),
            0,
            "{name}: {field}: {}",
            report["delivery"]
        );
    }
}

#[test]
fn fanout_smoke_delivers_everything_once_in_order() {
    let report = run(
        "fanout",
        &["fanout", "--conns", CONNS, "--rate", "50", "--duration", "5"],
    );
    assert_clean_delivery("fanout", &report);
    // 200 connections × about 250 publishes.
    assert!(
        count(&report, "/delivery/delivered") >= 200 * 200,
        "{}",
        report["delivery"]
    );
}

#[test]
fn fanout_over_many_rooms_smoke() {
    let report = run(
        "rooms",
        &[
            "fanout",
            "--conns",
            CONNS,
            "--rooms",
            "20",
            "--rate",
            "100",
            "--duration",
            "5",
        ],
    );
    assert_clean_delivery("rooms", &report);
}

#[test]
fn churn_smoke_resumes_without_loss_or_duplicates() {
    let report = run(
        "churn",
        &[
            "churn",
            "--conns",
            CONNS,
            "--rate",
            "50",
            "--reconnects",
            "20",
            "--duration",
            "5",
        ],
    );
    assert_clean_delivery("churn", &report);
    assert!(
        count(&report, "/churn/reconnects") > 0,
        "no reconnect happened: {}",
        report["churn"]
    );
}

#[test]
fn chat_smoke_delivers_every_message() {
    let report = run(
        "chat",
        &[
            "chat",
            "--conns",
            CONNS,
            "--room-size",
            "10",
            "--rate",
            "1",
            "--duration",
            "5",
        ],
    );
    assert_clean_delivery("chat", &report);
}

#[test]
fn connect_smoke_joins_every_connection() {
    let report = run("connect", &["connect", "--conns", CONNS]);
    assert_eq!(count(&report, "/setup/established"), 200, "{}", report["setup"]);
}

#[test]
fn idle_smoke_reads_gateway_memory() {
    let report = run(
        "idle",
        &["idle", "--conns", CONNS, "--settle", "1", "--hold", "2"],
    );
    assert_eq!(count(&report, "/memory/connections"), 200, "{}", report["memory"]);
    let rss = report
        .pointer("/memory/gateway_rss_after")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    assert!(rss > 0, "no gateway RSS was read: {}", report["memory"]);
}
