//! The results of a run: a serializable report (`--json`), a human summary,
//! and a side-by-side comparison when several targets ran.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::fleet::SetupReport;
use crate::flow::Totals;
use crate::publisher::PublishReport;
use crate::resources::{Role, Usage, cpu_of};
use crate::stats::Percentiles;
use crate::target::Kind;

/// The machine the run happened on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub mem_gib: f64,
    pub kernel: String,
    /// 1-minute load average when the run started (others share the machine).
    pub loadavg_at_start: String,
    pub nofile_limit: u64,
}

impl Machine {
    pub fn read() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let mem_kb: f64 = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
                .unwrap_or_default(),
            mem_gib: (mem_kb / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            loadavg_at_start: read("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            nofile_limit: crate::limits::nofile().0,
        }
    }
}

/// Deliveries over a measurement window.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Delivery {
    pub totals: Totals,
    /// Events received (live, replays excluded) in the window.
    pub delivered: u64,
    /// The publishing window (deliveries per second are over it).
    pub window_s: f64,
    pub delivered_per_s: f64,
    /// Whether every live connection caught up within the drain time.
    pub drained: bool,
    pub connections_behind: usize,
}

/// Server CPU over a window, per role, and per delivery.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Cpu {
    pub window_s: f64,
    pub gateways_s: Option<f64>,
    pub api_s: Option<f64>,
    pub redis_s: Option<f64>,
    pub client_s: Option<f64>,
    /// Gateways + API (the Socket.IO nodes + publisher) CPU µs per delivery
    /// — equal to CPU seconds per million deliveries.
    pub server_us_per_delivery: Option<f64>,
    /// The same with Redis included.
    pub with_redis_us_per_delivery: Option<f64>,
    /// The load client's own CPU µs per delivery.
    pub client_us_per_delivery: Option<f64>,
}

impl Cpu {
    pub fn of(usage: &[Usage], window_s: f64, deliveries: u64) -> Self {
        let per = |cpu: Option<f64>| {
            cpu.filter(|_| deliveries > 0)
                .map(|c| c * 1e6 / deliveries as f64)
        };
        let server = cpu_of(usage, &[Role::Gateway, Role::Api]);
        let with_redis = cpu_of(usage, &[Role::Gateway, Role::Api, Role::Redis]);
        let client = cpu_of(usage, &[Role::Client]);
        Self {
            window_s,
            gateways_s: cpu_of(usage, &[Role::Gateway]),
            api_s: cpu_of(usage, &[Role::Api]),
            redis_s: cpu_of(usage, &[Role::Redis]),
            client_s: client,
            server_us_per_delivery: per(server),
            with_redis_us_per_delivery: per(with_redis),
            client_us_per_delivery: per(client),
        }
    }
}

/// Memory per connection.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Memory {
    pub connections: u64,
    /// Gateway RSS growth over all gateways, per connection.
    pub gateway_bytes_per_conn: Option<f64>,
    pub gateway_rss_before: Option<u64>,
    pub gateway_rss_after: Option<u64>,
    /// Redis RSS growth per connection (presence and subscriptions).
    pub redis_bytes_per_conn: Option<f64>,
    /// The load client's own RSS growth per connection.
    pub client_bytes_per_conn: Option<f64>,
    /// Idle CPU of the gateways while holding, per second of wall time.
    pub idle_gateway_cpu_per_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RampStep {
    pub rate: f64,
    pub pass: bool,
    pub why: String,
    pub delivered_per_s: f64,
    pub latency: Percentiles,
    pub totals: Totals,
    pub publish: PublishReport,
    pub cpu: Cpu,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ramp {
    pub p99_bound_ms: f64,
    pub steps: Vec<RampStep>,
    /// The highest passing step.
    pub best: Option<RampStep>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Churn {
    pub target_reconnects_per_s: f64,
    pub requested: u64,
    pub reconnects: u64,
    pub unrecovered_resumes: u64,
    pub replayed_events: u64,
    /// From the request to drop to `joined` on the new connection.
    pub reconnect_time: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub target: Kind,
    pub mode: &'static str,
    pub params: serde_json::Value,
    pub machine: Machine,
    pub setup: Option<SetupReport>,
    pub publish: Option<PublishReport>,
    pub delivery: Option<Delivery>,
    pub latency: Option<Percentiles>,
    pub cpu: Option<Cpu>,
    pub memory: Option<Memory>,
    pub ramp: Option<Ramp>,
    pub churn: Option<Churn>,
    pub resources: Vec<Usage>,
    pub closes: BTreeMap<u16, u64>,
    pub errors: BTreeMap<String, u64>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(scenario: &'static str, target: Kind, mode: &'static str, params: serde_json::Value) -> Self {
        Self {
            scenario,
            target,
            mode,
            params,
            machine: Machine::read(),
            setup: None,
            publish: None,
            delivery: None,
            latency: None,
            cpu: None,
            memory: None,
            ramp: None,
            churn: None,
            resources: Vec::new(),
            closes: BTreeMap::new(),
            errors: BTreeMap::new(),
            notes: Vec::new(),
        }
    }

    /// Whether delivery kept Herald's promises (no loss, duplicate or
    /// reordering, every connection set up).
    pub fn clean(&self) -> bool {
        let delivery = self
            .delivery
            .as_ref()
            .is_none_or(|d| d.totals.clean() && d.drained);
        let setup = self.setup.as_ref().is_none_or(|s| s.failed == 0);
        delivery && setup
    }
}

fn ms(p: &Percentiles) -> String {
    if p.samples == 0 {
        return "-".into();
    }
    format!(
        "p50 {:.2} · p90 {:.2} · p99 {:.2} · p999 {:.2} · max {:.2} ms  (n={})",
        p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms, p.samples
    )
}

fn opt(v: Option<f64>, digits: usize, unit: &str) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.digits$}{unit}"))
}

fn mib(v: Option<u64>) -> String {
    v.map_or("n/a".into(), |v| format!("{:.1} MiB", v as f64 / 1048576.0))
}

fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The human summary of one report.
pub fn human(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "== {} · {} · {} ==", r.scenario, r.target.name(), r.mode);
    let m = &r.machine;
    let _ = writeln!(
        o,
        "machine        {} CPUs ({}), {} GiB, Linux {}, load {}",
        m.cpus, m.cpu_model, m.mem_gib, m.kernel, m.loadavg_at_start
    );
    if let Some(s) = &r.setup {
        let _ = writeln!(
            o,
            "connections    {} of {} joined, {} failed, in {:.2} s ({} /s, {} at once)",
            s.established,
            s.attempted,
            s.failed,
            s.wall_s,
            thousands(s.joined_per_s),
            s.concurrency
        );
        let _ = writeln!(o, "  tcp          {}", ms(&s.tcp));
        let _ = writeln!(o, "  upgrade      {}", ms(&s.upgrade));
        let _ = writeln!(o, "  auth         {}", ms(&s.welcome));
        let _ = writeln!(o, "  joined       {}", ms(&s.joined));
        for e in &s.first_errors {
            let _ = writeln!(o, "  error        {e}");
        }
    }
    if let Some(p) = &r.publish {
        let _ = writeln!(
            o,
            "publish        {} ok, {} failed, {} skipped of target {}/s → {:.1}/s over {:.1} s; API {}",
            p.ok,
            p.failed,
            p.skipped,
            p.target_rate,
            p.achieved_rate,
            p.duration_s,
            ms(&p.api_latency)
        );
        for (k, v) in &p.failures {
            let _ = writeln!(o, "  failure      {v} × {k}");
        }
    }
    if let Some(d) = &r.delivery {
        let t = &d.totals;
        let _ = writeln!(
            o,
            "delivered      {} events, {} /s over {:.1} s{}",
            thousands(d.delivered as f64),
            thousands(d.delivered_per_s),
            d.window_s,
            if d.drained {
                String::new()
            } else {
                format!(
                    "; {} connections still behind after the drain",
                    d.connections_behind
                )
            }
        );
        let _ = writeln!(
            o,
            "integrity      owed {} · received {} · lost {} · duplicates {} · reordered {} · dead conns {}",
            t.owed, t.received, t.lost, t.duplicates, t.reordered, t.dead_connections
        );
    }
    if let Some(l) = &r.latency {
        let _ = writeln!(o, "latency        {}", ms(l));
    }
    if let Some(c) = &r.churn {
        let _ = writeln!(
            o,
            "churn          {} requested at {}/s, {} reconnects, {} unrecovered, {} replayed; reconnect {}",
            c.requested,
            c.target_reconnects_per_s,
            c.reconnects,
            c.unrecovered_resumes,
            c.replayed_events,
            ms(&c.reconnect_time)
        );
    }
    if let Some(c) = &r.cpu {
        let _ = writeln!(
            o,
            "cpu            gateways {} · api {} · redis {} · client {} over {:.1} s",
            opt(c.gateways_s, 2, " s"),
            opt(c.api_s, 2, " s"),
            opt(c.redis_s, 2, " s"),
            opt(c.client_s, 2, " s"),
            c.window_s
        );
        let _ = writeln!(
            o,
            "cpu/delivery   server {} (= s per million) · with redis {} · client {}",
            opt(c.server_us_per_delivery, 2, " µs"),
            opt(c.with_redis_us_per_delivery, 2, " µs"),
            opt(c.client_us_per_delivery, 2, " µs")
        );
    }
    if let Some(m) = &r.memory {
        let _ = writeln!(
            o,
            "memory         gateways {} → {}: {} per connection · redis {} · client {} per connection",
            mib(m.gateway_rss_before),
            mib(m.gateway_rss_after),
            opt(m.gateway_bytes_per_conn.map(|b| b / 1024.0), 2, " KiB"),
            opt(m.redis_bytes_per_conn.map(|b| b / 1024.0), 2, " KiB"),
            opt(m.client_bytes_per_conn.map(|b| b / 1024.0), 2, " KiB"),
        );
        let _ = writeln!(
            o,
            "idle cpu       gateways {} CPU-s per s while holding {} connections",
            opt(m.idle_gateway_cpu_per_s, 4, ""),
            m.connections
        );
    }
    if let Some(ramp) = &r.ramp {
        let _ = writeln!(
            o,
            "ramp (bound: zero loss, p99 < {} ms, publisher keeps the rate)",
            ramp.p99_bound_ms
        );
        let _ = writeln!(
            o,
            "  {:>9} {:>12} {:>9} {:>9} {:>9} {:>6} {:>10}  verdict",
            "pub/s", "deliv/s", "p50 ms", "p99 ms", "p999 ms", "lost", "srv µs/d"
        );
        for s in &ramp.steps {
            let _ = writeln!(
                o,
                "  {:>9.1} {:>12} {:>9.2} {:>9.2} {:>9.2} {:>6} {:>10}  {}",
                s.rate,
                thousands(s.delivered_per_s),
                s.latency.p50_ms,
                s.latency.p99_ms,
                s.latency.p999_ms,
                s.totals.lost,
                opt(s.cpu.server_us_per_delivery, 2, ""),
                if s.pass {
                    "pass".to_string()
                } else {
                    format!("fail: {}", s.why)
                }
            );
        }
        match &ramp.best {
            Some(b) => {
                let _ = writeln!(
                    o,
                    "  best: {:.1} publishes/s = {} deliveries/s at p99 {:.2} ms",
                    b.rate,
                    thousands(b.delivered_per_s),
                    b.latency.p99_ms
                );
            }
            None => {
                let _ = writeln!(o, "  best: no rate met the bound");
            }
        }
    }
    for u in &r.resources {
        let _ = writeln!(
            o,
            "  {:<20} {:<8} cpu {:>9}  rss {} → {}",
            u.name,
            u.role.name(),
            opt(u.cpu_s, 2, " s"),
            mib(u.rss_before),
            mib(u.rss_after)
        );
    }
    if !r.closes.is_empty() {
        let closes: Vec<String> = r.closes.iter().map(|(c, n)| format!("{c}×{n}")).collect();
        let _ = writeln!(o, "closes         {}", closes.join(", "));
    }
    for (e, n) in &r.errors {
        let _ = writeln!(o, "error          {n} × {e}");
    }
    for n in &r.notes {
        let _ = writeln!(o, "note           {n}");
    }
    let _ = writeln!(
        o,
        "verdict        {}",
        if r.clean() {
            "no loss, no duplicates, no reordering"
        } else {
            "NOT CLEAN (see above)"
        }
    );
    o
}

/// The headline figures of a report, for the comparison.
fn headline(r: &Report) -> Vec<(&'static str, Option<f64>, bool)> {
    // (name, value, higher is better)
    let best = r.ramp.as_ref().and_then(|ramp| ramp.best.as_ref());
    let latency = best.map(|b| b.latency).or(r.latency);
    let cpu = best.map(|b| b.cpu.clone()).or_else(|| r.cpu.clone());
    let delivered = best
        .map(|b| b.delivered_per_s)
        .or(r.delivery.as_ref().map(|d| d.delivered_per_s));
    vec![
        ("delivered/s", delivered.filter(|v| *v > 0.0), true),
        (
            "latency p50 ms",
            latency.filter(|l| l.samples > 0).map(|l| l.p50_ms),
            false,
        ),
        (
            "latency p99 ms",
            latency.filter(|l| l.samples > 0).map(|l| l.p99_ms),
            false,
        ),
        (
            "latency p999 ms",
            latency.filter(|l| l.samples > 0).map(|l| l.p999_ms),
            false,
        ),
        (
            "lost events",
            r.delivery.as_ref().map(|d| d.totals.lost as f64),
            false,
        ),
        (
            "server CPU µs/delivery",
            cpu.as_ref().and_then(|c| c.server_us_per_delivery),
            false,
        ),
        (
            "joined conns/s",
            r.setup.as_ref().map(|s| s.joined_per_s).filter(|v| *v > 0.0),
            true,
        ),
        (
            "connect p99 ms",
            r.setup
                .as_ref()
                .filter(|s| s.joined.samples > 0)
                .map(|s| s.joined.p99_ms),
            false,
        ),
        (
            "gateway KiB/conn",
            r.memory
                .as_ref()
                .and_then(|m| m.gateway_bytes_per_conn)
                .map(|b| b / 1024.0),
            false,
        ),
    ]
}

/// Herald next to the other targets, with the ratio (how many times better
/// Herald is: above 1 means Herald wins).
pub fn comparison(reports: &[Report]) -> Option<String> {
    let herald = reports.iter().find(|r| r.target == Kind::Herald)?;
    let other = reports.iter().find(|r| r.target != Kind::Herald)?;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "== {}: herald vs {} (same run, same load client) ==",
        herald.scenario,
        other.target.name()
    );
    let _ = writeln!(
        o,
        "  {:<24} {:>14} {:>14} {:>10}",
        "",
        "herald",
        other.target.name(),
        "ratio"
    );
    for ((name, h, higher), (_, s, _)) in headline(herald).into_iter().zip(headline(other)) {
        if h.is_none() && s.is_none() {
            continue;
        }
        let ratio = match (h, s) {
            (Some(h), Some(s)) if h > 0.0 && s > 0.0 => {
                format!("{:.1}×", if higher { h / s } else { s / h })
            }
            _ => "-".into(),
        };
        let _ = writeln!(
            o,
            "  {:<24} {:>14} {:>14} {:>10}",
            name,
            opt(h, 2, ""),
            opt(s, 2, ""),
            ratio
        );
    }
    Some(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.4), "1,234,567");
    }

    #[test]
    fn comparison_ratios_favour_herald_above_one() {
        let mut h = Report::new("fanout", Kind::Herald, "spawn", serde_json::Value::Null);
        let mut s = Report::new("fanout", Kind::Socketio, "spawn", serde_json::Value::Null);
        let lat = |p99| Percentiles {
            samples: 10,
            p99_ms: p99,
            p50_ms: 1.0,
            p999_ms: p99,
            ..Percentiles::default()
        };
        h.latency = Some(lat(10.0));
        s.latency = Some(lat(150.0));
        let text = comparison(&[h, s]).unwrap();
        assert!(text.contains("15.0×"), "{text}");
    }
}
