//! CPU time and resident memory of the processes under test: read from
//! `/proc/<pid>` for processes on this machine (spawned ones, the load
//! client itself), or from a node's `/metrics` (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`) for a deployment elsewhere.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::target::Endpoint;

/// What a watched process is, for the per-role sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A gateway node (Herald) or Socket.IO server node.
    Gateway,
    /// The API node (Herald) or the Socket.IO peer's publisher.
    Api,
    Redis,
    /// This load client.
    Client,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Api => "api",
            Role::Redis => "redis",
            Role::Client => "client",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Probe {
    Pid(u32),
    Metrics(Endpoint),
}

#[derive(Debug, Clone)]
pub struct Watched {
    pub name: String,
    pub role: Role,
    pub probe: Probe,
}

impl Watched {
    pub fn this_process() -> Self {
        Self {
            name: "loadtest".into(),
            role: Role::Client,
            probe: Probe::Pid(std::process::id()),
        }
    }
}

/// One reading of one process.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub name: String,
    pub role: Role,
    pub cpu_s: Option<f64>,
    pub rss_bytes: Option<u64>,
}

/// CPU seconds (user + system) and resident bytes of a local process.
pub fn read_proc(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command name, field N (1-based, man proc) is at index N - 3.
    let utime: f64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: f64 = fields.get(15 - 3)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(((utime + stime) / ticks, rss_kb * 1024))
}

/// The value of the first sample of `name` in a Prometheus text page.
pub fn prometheus_value(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        // `name{labels} value` or `name value`; not `name_suffix`.
        let rest = match rest.as_bytes().first()? {
            b'{' => &rest[rest.find('}')? + 1..],
            b' ' => rest,
            _ => return None,
        };
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// GETs a small page over a fresh HTTP/1.1 connection.
pub async fn http_get(endpoint: &Endpoint, path: &str) -> Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(endpoint.addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, &endpoint.host)
        .body(Empty::<bytes::Bytes>::new())?;
    let res = sender.send_request(req).await?;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn read_metrics(endpoint: &Endpoint) -> Result<(Option<f64>, Option<u64>)> {
    let (status, page) = tokio::time::timeout(Duration::from_secs(5), http_get(endpoint, "/metrics"))
        .await
        .context("GET /metrics timed out")??;
    if status != 200 {
        bail!("GET /metrics answered {status}");
    }
    Ok((
        prometheus_value(&page, "process_cpu_seconds_total"),
        prometheus_value(&page, "process_resident_memory_bytes").map(|v| v as u64),
    ))
}

/// Reads every watched process (a process that cannot be read gives empty values).
pub async fn sample(watched: &[Watched]) -> Vec<Sample> {
    let mut out = Vec::with_capacity(watched.len());
    for w in watched {
        let (cpu_s, rss_bytes) = match &w.probe {
            Probe::Pid(pid) => read_proc(*pid).map_or((None, None), |(c, r)| (Some(c), Some(r))),
            Probe::Metrics(endpoint) => read_metrics(endpoint).await.unwrap_or((None, None)),
        };
        out.push(Sample {
            name: w.name.clone(),
            role: w.role,
            cpu_s,
            rss_bytes,
        });
    }
    out
}

/// What one process used between two samples.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub name: String,
    pub role: Role,
    pub cpu_s: Option<f64>,
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
}

pub fn usage(before: &[Sample], after: &[Sample]) -> Vec<Usage> {
    before
        .iter()
        .zip(after)
        .map(|(a, b)| Usage {
            name: a.name.clone(),
            role: a.role,
            cpu_s: match (a.cpu_s, b.cpu_s) {
                (Some(x), Some(y)) => Some((y - x).max(0.0)),
                _ => None,
            },
            rss_before: a.rss_bytes,
            rss_after: b.rss_bytes,
        })
        .collect()
}

/// CPU seconds used by the processes of `roles`, if every one was read.
pub fn cpu_of(usage: &[Usage], roles: &[Role]) -> Option<f64> {
    let selected: Vec<&Usage> = usage.iter().filter(|u| roles.contains(&u.role)).collect();
    if selected.is_empty() {
        return None;
    }
    selected.iter().map(|u| u.cpu_s).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let (cpu, rss) = read_proc(std::process::id()).unwrap();
        assert!(cpu >= 0.0 && rss > 0);
    }

    #[test]
    fn prometheus_values() {
        let page = "# TYPE process_cpu_seconds_total counter\n\
                    process_cpu_seconds_total_x 9\n\
                    process_cpu_seconds_total{node=\"a\"} 12.5\n\
                    process_resident_memory_bytes 1048576\n";
        assert_eq!(prometheus_value(page, "process_cpu_seconds_total"), Some(12.5));
        assert_eq!(
            prometheus_value(page, "process_resident_memory_bytes"),
            Some(1_048_576.0)
        );
        assert_eq!(prometheus_value(page, "process_open_fds"), None);
    }

    #[test]
    fn cpu_sums_need_every_process() {
        let u = |role, cpu| Usage {
            name: String::new(),
            role,
            cpu_s: cpu,
            rss_before: None,
            rss_after: None,
        };
        let all = vec![
            u(Role::Gateway, Some(1.0)),
            u(Role::Gateway, Some(2.0)),
            u(Role::Api, None),
        ];
        assert_eq!(cpu_of(&all, &[Role::Gateway]), Some(3.0));
        assert_eq!(cpu_of(&all, &[Role::Gateway, Role::Api]), None);
        assert_eq!(cpu_of(&all, &[Role::Redis]), None);
    }
}
