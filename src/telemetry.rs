//! Logs (tracing: human or JSON, to stderr) and the Prometheus recorder
//! that `/metrics` renders.

use std::time::Duration;

use anyhow::Result;
use herald_common::config::LogFormat;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Installs the global log subscriber. `RUST_LOG` overrides the level.
pub fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Latency buckets from 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets for counts (members per fan-out, frames per write).
const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0,
];

/// Installs the global metrics recorder (every series labelled with the
/// node id) and starts its upkeep.
pub fn init_metrics(node_id: &str) -> Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .add_global_label("node", node_id)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("herald_fanout_members".into()), SIZE_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("herald_write_batch_frames".into()), SIZE_BUCKETS)?
        .install_recorder()?;
    // Histogram samples accumulate between renders; upkeep folds them so
    // memory stays bounded even if nobody scrapes.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Records the process's CPU time, memory and file descriptors (Linux
/// `/proc/self`), in the names Prometheus' process collectors use. Called
/// on each scrape; elsewhere it records nothing.
pub fn record_process_metrics() {
    if let Some(stat) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .as_deref()
        .and_then(proc_stat)
    {
        metrics::gauge!("process_cpu_seconds_total").set(stat.cpu_seconds);
        metrics::gauge!("process_resident_memory_bytes").set(stat.rss_bytes);
        metrics::gauge!("process_virtual_memory_bytes").set(stat.vsize_bytes);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!("process_open_fds").set(fds.count() as f64);
    }
    if let Some(max) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .as_deref()
        .and_then(max_open_files)
    {
        metrics::gauge!("process_max_fds").set(max);
    }
}

/// What `/proc/self/stat` tells.
#[derive(Debug, PartialEq)]
struct ProcStat {
    cpu_seconds: f64,
    vsize_bytes: f64,
    rss_bytes: f64,
}

/// Clock ticks per second and page size: the values of every Linux
/// platform Herald targets (`getconf CLK_TCK`, `getconf PAGESIZE`).
const TICKS_PER_SECOND: f64 = 100.0;
const PAGE_SIZE: f64 = 4096.0;

fn proc_stat(text: &str) -> Option<ProcStat> {
    // The command name (field 2) may contain spaces; fields are counted
    // after its closing parenthesis.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After `)`: state is field 3, so field N is at index N - 3.
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    Some(ProcStat {
        cpu_seconds: (field(14)? + field(15)?) / TICKS_PER_SECOND,
        vsize_bytes: field(23)?,
        rss_bytes: field(24)? * PAGE_SIZE,
    })
}

fn max_open_files(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_spaces_in_the_name() {
        let line = "1234 (herald (x) y) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 8 0 100 123456789 2000 0 0";
        let stat = proc_stat(line).unwrap();
        assert_eq!(stat.cpu_seconds, 3.0);
        assert_eq!(stat.vsize_bytes, 123_456_789.0);
        assert_eq!(stat.rss_bytes, 2000.0 * 4096.0);
    }

    #[test]
    fn parses_the_open_files_limit() {
        let limits = "Limit Soft Limit Hard Limit Units\nMax open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024.0));
    }

    #[test]
    fn reads_this_process() {
        let text = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(proc_stat(&text).unwrap().rss_bytes > 0.0);
    }
}
