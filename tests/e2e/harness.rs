//! The end-to-end harness: starts a real `herald standalone` process on a
//! free port with a fresh data directory and a generated configuration file,
//! and drives it with real WebSocket and HTTP clients over TCP.
//!
//! - [`Herald`] owns the child process. It learns the port from the one
//!   `herald: listening on http://…` line on stdout, drains stdout and stderr
//!   on background threads (stderr lines are kept for the tests to grep) and
//!   kills the child on drop. When a test panics, the tail of the server's
//!   stderr is printed so that the failure can be read next to its cause.
//! - [`Client`] is a WebSocket client. A reader task owns the read half
//!   (fastwebsockets' `read_frame` is not cancel-safe, so no read is ever
//!   wrapped in a timeout); it reassembles fragments, answers pings (unless
//!   told not to), echoes close frames, and hands messages to the test over a
//!   channel, which *is* safe to wait on with a timeout. A gate lets a test
//!   stop the reader (a slow consumer) and start it again.
//! - Every wait is bounded; a timeout panics with a message that says what was
//!   awaited.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError, WebSocketWrite};
use http_body_util::{BodyExt, Empty, Full};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// The HS256 secret every test server is configured with.
pub const SECRET: &str = "test-secret";
/// The one API key every test server accepts.
pub const API_KEY: &str = "test-api-key-1";
/// The default bound of every wait.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a server may take to print its listening line.
const STARTUP: Duration = Duration::from_secs(15);

/// The configuration every test server starts from. Extra TOML given by a
/// test is merged into it (see [`config_text`]). Rate limits are raised so
/// that tests which open many connections or join in loops measure the
/// feature under test, not the limiter.
const BASE_SECTIONS: &[(&str, &[(&str, &str)])] = &[
    ("auth", &[("jwt_secret", "\"test-secret\"")]),
    ("api", &[("keys", "[\"test-api-key-1\"]")]),
    (
        "limits.per_user",
        &[
            ("publish", "{ rate_per_s = 100000.0, burst = 100000 }"),
            ("join", "{ rate_per_s = 100000.0, burst = 100000 }"),
            ("connect", "{ rate_per_s = 100000.0, burst = 100000 }"),
        ],
    ),
];

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Signs `claims` with HS256 and `secret`.
pub fn mint(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("mint token")
}

/// A fresh directory under the system temp dir, unique per call.
pub fn unique_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!("herald-e2e-{}-{tag}-{n}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// The configuration file for `extra`: the base sections with the keys the
/// test sets in the same sections replaced or added, then every other
/// section of `extra` verbatim (`[gateway]`, `[[rooms]]`, …). TOML forbids a
/// table twice, so `[auth] leeway_s = 0` in `extra` must land in the base
/// `[auth]` table rather than next to it.
pub fn config_text(extra: &str) -> String {
    let mut sections: Vec<(String, Vec<(String, String)>)> = BASE_SECTIONS
        .iter()
        .map(|(name, keys)| {
            let keys = keys
                .iter()
                .map(|(k, v)| (k.to_string(), format!("{k} = {v}")))
                .collect();
            (name.to_string(), keys)
        })
        .collect();
    let mut top = String::new();
    let mut rest = String::new();
    // None: before any header; Some(Some(i)): inside base section i;
    // Some(None): inside a section that is copied verbatim.
    let mut current: Option<Option<usize>> = None;
    for line in extra.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            let simple = t
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .filter(|s| !s.starts_with('['))
                .map(str::trim);
            match simple.and_then(|name| sections.iter().position(|(n, _)| n == name)) {
                Some(i) => current = Some(Some(i)),
                None => {
                    current = Some(None);
                    rest.push_str(line);
                    rest.push('\n');
                }
            }
            continue;
        }
        match current {
            None => {
                top.push_str(line);
                top.push('\n');
            }
            Some(None) => {
                rest.push_str(line);
                rest.push('\n');
            }
            Some(Some(i)) => {
                if t.is_empty() || t.starts_with('#') {
                    continue;
                }
                let key = t.split('=').next().unwrap_or("").trim().to_string();
                let keys = &mut sections[i].1;
                match keys.iter_mut().find(|(k, _)| *k == key) {
                    Some(entry) => entry.1 = t.to_string(),
                    None => keys.push((key, t.to_string())),
                }
            }
        }
    }
    let mut out = top;
    for (name, keys) in sections {
        out.push_str(&format!("\n[{name}]\n"));
        for (_, line) in keys {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out.push('\n');
    out.push_str(&rest);
    out
}

/// A `herald` command with a clean environment: no inherited `HERALD_*`
/// variable can change what the test configured.
fn herald_command(env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    for (key, _) in std::env::vars() {
        if key.starts_with("HERALD_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `herald ARGS` to completion (bounded by `limit`, killed after it)
/// and returns its exit status, stdout and stderr.
pub async fn run_herald(
    args: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> (ExitStatus, String, String) {
    let mut cmd = tokio::process::Command::from(herald_command(env));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("spawn herald");
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(out)) => (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Ok(Err(e)) => panic!("herald {args:?}: {e}"),
        Err(_) => panic!("herald {args:?} did not exit within {limit:?}"),
    }
}

/// Sums the samples of metric `name` (any labels) in a Prometheus text page.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if let Some(labelled) = rest.strip_prefix('{') {
            match labelled.split_once('}') {
                Some((_, v)) => v,
                None => continue,
            }
        } else if rest.starts_with(' ') {
            rest
        } else {
            continue; // a longer name that starts with `name`
        };
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Polls `f` every 50 ms until it returns `Some`, or panics after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `{"offset","epoch"}` position of an `event`/`joined` message.
pub fn position(msg: &Value) -> Value {
    json!({"offset": msg["offset"], "epoch": msg["epoch"]})
}

/// `msg["offset"]` as an integer (panics with the message otherwise).
pub fn offset_of(msg: &Value) -> u64 {
    msg["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer offset in {msg}"))
}

/// `msg["epoch"]` as a string (panics with the message otherwise).
pub fn epoch_of(msg: &Value) -> String {
    msg["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("no string epoch in {msg}"))
        .to_string()
}

/// `value` printed, cut to a readable length for panic messages.
pub fn short(value: &impl std::fmt::Debug) -> String {
    let text = format!("{value:?}");
    match text.char_indices().nth(400) {
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
        None => text,
    }
}

/// The last few of `skipped`, shortened, for panic messages.
fn tail_of(skipped: &[Value]) -> String {
    let from = skipped.len().saturating_sub(3);
    let last: Vec<String> = skipped[from..].iter().map(short).collect();
    format!("{} skipped, last: [{}]", skipped.len(), last.join(", "))
}

/// Asserts an HTTP API error: the status, the JSON error code, and a
/// message.
#[track_caller]
pub fn assert_api_error(status: u16, body: &Value, expected_status: u16, code: &str) {
    assert_eq!(status, expected_status, "body: {body}");
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(
        body["error"]["message"].is_string(),
        "error without a message: {body}"
    );
}

/// Asserts `msg` is an `error` with `code`.
#[track_caller]
pub fn assert_error(msg: &Value, code: &str) {
    assert_eq!(msg["op"], "error", "expected error {code}, got {msg}");
    assert_eq!(msg["code"], code, "expected error {code}, got {msg}");
    assert!(msg["message"].is_string(), "error without a message: {msg}");
}

// ---------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------

/// A running `herald standalone` process; killed on drop.
pub struct Herald {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    data_dir: PathBuf,
    config_path: PathBuf,
    stderr: Arc<StdMutex<Vec<String>>>,
    stdout: Arc<StdMutex<Vec<String>>>,
    exited: Option<ExitStatus>,
    /// Names a cluster node in the stderr dump of a failed test (empty for
    /// standalone).
    label: String,
}

impl Herald {
    /// Starts a server with the base configuration plus `extra_toml`.
    pub async fn start(extra_toml: &str) -> Herald {
        Self::start_with_env(extra_toml, &[]).await
    }

    /// As [`Herald::start`], with extra environment variables for the child.
    pub async fn start_with_env(extra_toml: &str, env: &[(&str, &str)]) -> Herald {
        Self::start_mode("standalone", extra_toml, env).await
    }

    /// Starts `herald MODE` (`standalone`, `gateway` or `api`) with the base
    /// configuration plus `extra_toml` and extra environment variables (for a
    /// cluster node: `HERALD_REDIS_URL`, `HERALD_NODE_ID`).
    pub async fn start_mode(mode: &str, extra_toml: &str, env: &[(&str, &str)]) -> Herald {
        let dir = unique_dir("run");
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        let config_path = dir.join("herald.toml");
        std::fs::write(&config_path, config_text(extra_toml)).unwrap();

        let mut cmd = herald_command(env);
        cmd.arg(mode)
            .arg("--addr")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn herald");

        let stderr = Arc::new(StdMutex::new(Vec::new()));
        let stdout = Arc::new(StdMutex::new(Vec::new()));
        spawn_line_reader(child.stderr.take().unwrap(), stderr.clone(), None);
        let (tx, rx) = oneshot::channel();
        spawn_line_reader(child.stdout.take().unwrap(), stdout.clone(), Some(tx));

        let mut herald = Herald {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            dir,
            data_dir,
            config_path,
            stderr,
            stdout,
            exited: None,
            label: match env.iter().find(|(k, _)| *k == "HERALD_NODE_ID") {
                _ if mode == "standalone" => String::new(),
                Some((_, id)) => format!(" {mode} {id}"),
                None => format!(" {mode}"),
            },
        };
        match tokio::time::timeout(STARTUP, rx).await {
            Ok(Ok(addr)) => herald.addr = addr,
            outcome => {
                let _ = herald.child.kill();
                let status = herald.child.wait().ok();
                herald.exited = status;
                tokio::time::sleep(Duration::from_millis(100)).await;
                panic!(
                    "herald {mode} did not print `herald: listening on http://…` ({}); exit: {status:?}\n\
                     config:\n{}\nstdout:\n{}\nstderr:\n{}",
                    if outcome.is_err() {
                        "timed out"
                    } else {
                        "stdout closed"
                    },
                    config_text(extra_toml),
                    herald.stdout.lock().unwrap().join("\n"),
                    herald.stderr_lines().join("\n"),
                );
            }
        }
        herald
    }

    /// Writes the configuration for `extra_toml`, runs `herald standalone`
    /// with it and expects the process to exit by itself (bounded): returns
    /// the exit status and stderr.
    pub async fn start_expect_failure(extra_toml: &str) -> (ExitStatus, String) {
        let dir = unique_dir("fail");
        let config_path = dir.join("herald.toml");
        std::fs::write(&config_path, config_text(extra_toml)).unwrap();
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        let args = [
            "standalone",
            "--addr",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--config",
            config_path.to_str().unwrap(),
        ];
        let (status, _stdout, stderr) = run_herald(&args, &[], Duration::from_secs(10)).await;
        let _ = std::fs::remove_dir_all(&dir);
        (status, stderr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration file the server was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The server's `--data-dir`.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's stderr so far, one entry per line.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Panics if the server's stderr shows a panic.
    pub async fn assert_no_panic(&self) {
        // Let the reader thread catch up with what was just written.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let lines = self.stderr_lines();
        if let Some(line) = lines.iter().find(|l| l.contains("panicked")) {
            panic!("the server panicked: {line}\nfull stderr:\n{}", lines.join("\n"));
        }
    }

    /// Sends SIGTERM to the server.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited {
            return Some(status);
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(status);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // -- tokens --------------------------------------------------------------

    /// An HS256 token signed with the server's secret, expiring in
    /// `ttl_secs` (negative: already expired).
    pub fn token(
        &self,
        sub: &str,
        roles: &[&str],
        rooms: &[&str],
        publish: &[&str],
        ttl_secs: i64,
    ) -> String {
        mint(
            &json!({
                "sub": sub,
                "exp": now_secs() + ttl_secs,
                "roles": roles,
                "rooms": rooms,
                "publish": publish,
            }),
            SECRET,
        )
    }

    /// A token for `sub` with no roles or claims, valid for an hour.
    pub fn user_token(&self, sub: &str) -> String {
        self.token(sub, &[], &[], &[], 3600)
    }

    // -- WebSocket -----------------------------------------------------------

    /// Upgrades with `opts`; `Err(status)` when the server answers the
    /// upgrade with an HTTP status other than 101.
    pub async fn try_connect(&self, opts: ConnectOptions) -> Result<Client, u16> {
        let stream = match opts.recv_buffer {
            Some(size) => {
                let socket = TcpSocket::new_v4().expect("socket");
                socket.set_recv_buffer_size(size).expect("set_recv_buffer_size");
                bounded(WAIT, "TCP connect", socket.connect(self.addr))
                    .await
                    .expect("TCP connect")
            }
            None => bounded(WAIT, "TCP connect", TcpStream::connect(self.addr))
                .await
                .expect("TCP connect"),
        };
        stream.set_nodelay(true).ok();
        let uri = match &opts.auth {
            Auth::Query(token) => format!("/ws?token={token}"),
            _ => "/ws".to_string(),
        };
        let mut req = hyper::Request::builder()
            .method("GET")
            .uri(uri)
            .header("Host", self.addr.to_string())
            .header(hyper::header::UPGRADE, "websocket")
            .header(hyper::header::CONNECTION, "upgrade")
            .header("Sec-WebSocket-Key", fastwebsockets::handshake::generate_key())
            .header("Sec-WebSocket-Version", "13");
        if let Auth::Header(token) = &opts.auth {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req.body(Empty::<Bytes>::new()).unwrap();
        let handshake = fastwebsockets::handshake::client(&SpawnExecutor, req, stream);
        let mut ws = match bounded(WAIT, "WebSocket upgrade", handshake).await {
            Ok((ws, _response)) => ws,
            Err(WebSocketError::InvalidStatusCode(status)) => return Err(status),
            Err(e) => panic!("WebSocket upgrade failed: {e}"),
        };
        ws.set_auto_pong(opts.auto_pong);
        ws.set_auto_close(true);
        let mut client = Client::start(ws, opts.name);
        if opts.auth.is_token() {
            // Token on the upgrade request: the server sends `welcome` at once.
            let welcome = client.next_json(WAIT).await;
            assert_eq!(
                welcome["op"], "welcome",
                "expected welcome after an authenticated upgrade: {welcome}"
            );
            client.welcome = Some(welcome);
        }
        Ok(client)
    }

    /// Upgrades with `opts`, panicking unless the upgrade succeeds.
    pub async fn connect(&self, opts: ConnectOptions) -> Client {
        let name = opts.name.clone();
        match self.try_connect(opts).await {
            Ok(client) => client,
            Err(status) => panic!("{name}: upgrade refused with HTTP {status}"),
        }
    }

    /// Upgrades without credentials and sends nothing.
    pub async fn connect_raw(&self) -> Client {
        self.connect(ConnectOptions::new(Auth::None)).await
    }

    /// Upgrades without credentials, sends `hello` and reads `welcome`.
    pub async fn connect_hello(&self, token: &str) -> Client {
        let mut client = self.connect_raw().await;
        client.hello(token).await;
        client
    }

    /// Upgrades with `Authorization: Bearer <token>`; `welcome` comes at once.
    pub async fn connect_with_header(&self, token: &str) -> Client {
        self.connect(ConnectOptions::new(Auth::Header(token.to_string())))
            .await
    }

    /// Upgrades with `?token=<token>`; `welcome` comes at once.
    pub async fn connect_with_query(&self, token: &str) -> Client {
        self.connect(ConnectOptions::new(Auth::Query(token.to_string())))
            .await
    }

    /// A slow consumer: a socket with a 4 KiB receive buffer, authenticated
    /// with `hello`. Call [`Client::pause_reading`] to stop reading and
    /// [`Client::resume_reading`] to start again.
    pub async fn connect_slow(&self, token: &str) -> Client {
        let mut opts = ConnectOptions::new(Auth::None);
        opts.recv_buffer = Some(4096);
        opts.name = "slow".into();
        let mut client = self.connect(opts).await;
        client.hello(token).await;
        client
    }

    // -- HTTP ----------------------------------------------------------------

    /// One HTTP/1.1 request on a new TCP connection.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        api_key: Option<&str>,
    ) -> HttpResponse {
        let mut sender = http_connect(self.addr).await;
        send_http(&mut sender, self.addr, method, path, body, api_key).await
    }

    /// A JSON request; the body of the answer parsed as JSON (`Null` when
    /// empty, a JSON string holding the text when it is not JSON).
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        api_key: Option<&str>,
    ) -> (u16, Value) {
        let body = body.map(|b| serde_json::to_vec(&b).unwrap());
        let resp = self.request(method, path, body, api_key).await;
        (resp.status, resp.json())
    }

    /// A `/v1` JSON request with the valid API key.
    pub async fn api_call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.http(method, path, body, Some(API_KEY)).await
    }

    /// `GET path` as text.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let resp = self.request("GET", path, None, None).await;
        (resp.status, resp.text())
    }

    /// Publishes one event through the API; returns the room's position.
    pub async fn publish(&self, room: &str, event: &str, data: Value) -> Value {
        let (status, body) = self
            .api_call(
                "POST",
                "/v1/publish",
                Some(json!({"room": room, "event": event, "data": data})),
            )
            .await;
        assert_eq!(status, 200, "publish to {room}: {body}");
        let pos = body["positions"][room].clone();
        assert!(
            pos["offset"].is_u64() && pos["epoch"].is_string(),
            "publish to {room}: {body}"
        );
        pos
    }

    /// A keep-alive API connection, for publishing many events quickly.
    pub async fn api_client(&self) -> ApiClient {
        ApiClient {
            addr: self.addr,
            sender: http_connect(self.addr).await,
        }
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let lines = self.stderr.lock().map(|l| l.clone()).unwrap_or_default();
            let skip = lines.len().saturating_sub(200);
            eprintln!(
                "----- herald{} stderr (last {} lines) -----",
                self.label,
                lines.len() - skip
            );
            for line in &lines[skip..] {
                eprintln!("{line}");
            }
            eprintln!("----- end of herald{} stderr -----", self.label);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads `pipe` line by line into `lines`; when `listening` is given, sends
/// the address of the first `herald: listening on http://ADDR` line.
fn spawn_line_reader(
    pipe: impl Read + Send + 'static,
    lines: Arc<StdMutex<Vec<String>>>,
    mut listening: Option<oneshot::Sender<SocketAddr>>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
            if let Some(addr) = line
                .trim()
                .strip_prefix("herald: listening on http://")
                .and_then(|a| a.trim_end_matches('/').parse::<SocketAddr>().ok())
                && let Some(tx) = listening.take()
            {
                let _ = tx.send(addr);
            }
            lines.lock().unwrap().push(line);
        }
    });
}

/// Awaits `fut` for at most `limit`, panicking with `what` after it.
pub async fn bounded<F: std::future::Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Hyper's executor for the client handshake: tokio::spawn.
struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::task::spawn(fut);
    }
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// An HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as JSON (`Null` when empty, a JSON string when not JSON).
    pub fn json(&self) -> Value {
        if self.body.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(&self.body).unwrap_or_else(|_| Value::String(self.text()))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

type HttpSender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn http_connect(addr: SocketAddr) -> HttpSender {
    let stream = bounded(WAIT, "TCP connect (HTTP)", TcpStream::connect(addr))
        .await
        .expect("TCP connect");
    stream.set_nodelay(true).ok();
    let (sender, conn) = bounded(
        WAIT,
        "HTTP handshake",
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .expect("HTTP handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

async fn send_http(
    sender: &mut HttpSender,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    api_key: Option<&str>,
) -> HttpResponse {
    let what = format!("{method} {path}");
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("Host", addr.to_string());
    if let Some(key) = api_key {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {key}"));
    }
    if body.is_some() {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let resp = bounded(Duration::from_secs(10), &what, sender.send_request(req))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = bounded(Duration::from_secs(10), &what, resp.into_body().collect())
        .await
        .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"))
        .to_bytes()
        .to_vec();
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// One keep-alive HTTP connection to the API, reconnected when the server
/// closed it between requests.
pub struct ApiClient {
    addr: SocketAddr,
    sender: HttpSender,
}

impl ApiClient {
    /// A `/v1` request with the valid API key.
    pub async fn call(&mut self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        if self.sender.ready().await.is_err() {
            // Closed before anything was sent on it: safe to reconnect.
            self.sender = http_connect(self.addr).await;
        }
        let body = body.map(|b| serde_json::to_vec(&b).unwrap());
        let resp = send_http(&mut self.sender, self.addr, method, path, body, Some(API_KEY)).await;
        (resp.status, resp.json())
    }

    /// Publishes one event; returns the room's position.
    pub async fn publish(&mut self, room: &str, event: &str, data: Value) -> Value {
        let (status, body) = self
            .call(
                "POST",
                "/v1/publish",
                Some(json!({"room": room, "event": event, "data": data})),
            )
            .await;
        assert_eq!(status, 200, "publish to {room}: {body}");
        body["positions"][room].clone()
    }
}

// ---------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------

/// How a connection authenticates on the upgrade request.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Nothing: the client sends `hello` (or misbehaves).
    None,
    /// `Authorization: Bearer <token>`.
    Header(String),
    /// `?token=<token>`.
    Query(String),
}

impl Auth {
    fn is_token(&self) -> bool {
        !matches!(self, Auth::None)
    }
}

/// How to open a WebSocket connection.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub auth: Auth,
    /// `SO_RCVBUF` for the socket (a slow consumer), set before connecting.
    pub recv_buffer: Option<u32>,
    /// Answer WebSocket pings (default true). False makes an idle client.
    pub auto_pong: bool,
    /// A label for panic messages.
    pub name: String,
}

impl ConnectOptions {
    pub fn new(auth: Auth) -> Self {
        Self {
            auth,
            recv_buffer: None,
            auto_pong: true,
            name: "client".into(),
        }
    }
}

/// What the reader task hands to the test.
#[derive(Debug)]
pub enum Incoming {
    Text(String),
    Binary(Vec<u8>),
    /// A close frame: code (1005 when absent) and reason.
    Close(u16, String),
    /// The connection ended without a close frame (or broke).
    Gone(String),
}

type Stream = TokioIo<Upgraded>;
type Writer = Arc<Mutex<WebSocketWrite<tokio::io::WriteHalf<Stream>>>>;

/// A WebSocket connection to Herald.
pub struct Client {
    pub name: String,
    /// The `welcome` message, once authenticated.
    pub welcome: Option<Value>,
    rx: mpsc::UnboundedReceiver<Incoming>,
    writer: Writer,
    gate: watch::Sender<bool>,
    reader: JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Client {
    fn start(ws: fastwebsockets::WebSocket<Stream>, name: String) -> Client {
        let (read, write) = ws.split(tokio::io::split);
        let read = FragmentCollectorRead::new(read);
        let writer: Writer = Arc::new(Mutex::new(write));
        let (tx, rx) = mpsc::unbounded_channel();
        let (gate, gate_rx) = watch::channel(true);
        let reader = tokio::spawn(read_loop(read, writer.clone(), tx, gate_rx));
        Client {
            name,
            welcome: None,
            rx,
            writer,
            gate,
            reader,
        }
    }

    /// Sends `hello` and reads `welcome` (stored in `self.welcome`).
    pub async fn hello(&mut self, token: &str) -> Value {
        self.send_json(json!({"op": "hello", "token": token})).await;
        let welcome = self.next_json(WAIT).await;
        assert_eq!(
            welcome["op"], "welcome",
            "{}: expected welcome after hello: {welcome}",
            self.name
        );
        self.welcome = Some(welcome.clone());
        welcome
    }

    // -- sending -------------------------------------------------------------

    /// Writes one frame; `Err` when the connection is gone.
    pub async fn try_send_frame(&self, frame: Frame<'static>) -> Result<(), String> {
        let mut writer = self.writer.lock().await;
        match tokio::time::timeout(WAIT, writer.write_frame(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("write blocked for {WAIT:?}")),
        }
    }

    /// Writes one frame (e.g. a fragment: `Frame::new(false, OpCode::Text, None, …)`).
    pub async fn send_frame(&self, frame: Frame<'static>) {
        if let Err(e) = self.try_send_frame(frame).await {
            panic!("{}: send failed: {e}", self.name);
        }
    }

    /// Sends one text message.
    pub async fn send_text(&self, text: &str) {
        self.send_frame(Frame::text(Payload::Owned(text.as_bytes().to_vec())))
            .await;
    }

    /// Sends one JSON message.
    pub async fn send_json(&self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends one binary message.
    pub async fn send_binary(&self, data: &[u8]) {
        self.send_frame(Frame::binary(Payload::Owned(data.to_vec())))
            .await;
    }

    /// Sends a close frame (best effort).
    pub async fn send_close(&self, code: u16) {
        let _ = self.try_send_frame(Frame::close(code, b"")).await;
    }

    // -- receiving -----------------------------------------------------------

    /// Stops reading the socket after the frame being read (a slow consumer;
    /// pings are not answered meanwhile).
    pub fn pause_reading(&self) {
        self.gate.send_replace(false);
    }

    /// Starts reading again.
    pub fn resume_reading(&self) {
        self.gate.send_replace(true);
    }

    /// The next thing the connection delivered, or `None` after `limit`.
    pub async fn next_incoming(&mut self, limit: Duration) -> Option<Incoming> {
        match tokio::time::timeout(limit, self.rx.recv()).await {
            Ok(Some(incoming)) => Some(incoming),
            Ok(None) => Some(Incoming::Gone("reader task ended".into())),
            Err(_) => None,
        }
    }

    /// The next message, which must be JSON text; skips nothing.
    pub async fn next_json(&mut self, limit: Duration) -> Value {
        match self.next_incoming(limit).await {
            None => panic!("{}: no message within {limit:?}", self.name),
            Some(Incoming::Text(text)) => serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: server sent non-JSON text ({e}): {text:?}", self.name)),
            Some(Incoming::Binary(data)) => {
                panic!(
                    "{}: server sent a binary message of {} bytes",
                    self.name,
                    data.len()
                )
            }
            Some(Incoming::Close(code, reason)) => {
                panic!("{}: expected a message, got close {code} {reason:?}", self.name)
            }
            Some(Incoming::Gone(e)) => panic!("{}: expected a message, connection gone: {e}", self.name),
        }
    }

    /// The next message with `"op": op`, skipping others, within `limit`.
    pub async fn next_op(&mut self, op: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("{}: no `{op}` within {limit:?}; {}", self.name, tail_of(&skipped));
            }
            let msg = match self.next_incoming(left).await {
                None => panic!("{}: no `{op}` within {limit:?}; {}", self.name, tail_of(&skipped)),
                Some(Incoming::Text(text)) => serde_json::from_str::<Value>(&text)
                    .unwrap_or_else(|e| panic!("{}: server sent non-JSON text ({e}): {text:?}", self.name)),
                Some(Incoming::Binary(_)) => continue,
                Some(Incoming::Close(code, reason)) => {
                    panic!("{}: waiting for `{op}`, got close {code} {reason:?}", self.name)
                }
                Some(Incoming::Gone(e)) => panic!("{}: waiting for `{op}`, connection gone: {e}", self.name),
            };
            if msg["op"] == op {
                return msg;
            }
            skipped.push(msg);
        }
    }

    /// Reads until a close frame (skipping messages); its code and reason.
    pub async fn expect_close(&mut self, limit: Duration) -> (u16, String) {
        self.drain_until_close(limit).await.1
    }

    /// Reads until a close frame; the JSON messages before it, and the code
    /// and reason of the close.
    pub async fn drain_until_close(&mut self, limit: Duration) -> (Vec<Value>, (u16, String)) {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_incoming(left).await {
                None => panic!(
                    "{}: no close frame within {limit:?} ({} messages before, last: {})",
                    self.name,
                    seen.len(),
                    seen.last().map(short).unwrap_or_else(|| "none".into())
                ),
                Some(Incoming::Text(text)) => {
                    seen.push(serde_json::from_str(&text).unwrap_or(Value::String(text)));
                }
                Some(Incoming::Binary(_)) => {}
                Some(Incoming::Close(code, reason)) => return (seen, (code, reason)),
                Some(Incoming::Gone(e)) => panic!(
                    "{}: connection ended without a close frame ({e}) after {} messages, last: {}",
                    self.name,
                    seen.len(),
                    seen.last().map(short).unwrap_or_else(|| "none".into())
                ),
            }
        }
    }

    /// Panics if a message about `room` (or a close) arrives within `d`;
    /// messages about other rooms are skipped (after a Redis restart every
    /// room, `broadcast` included, may get its own `resync`).
    pub async fn expect_nothing_in(&mut self, room: &str, d: Duration) {
        let deadline = Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_incoming(left).await {
                None => return,
                Some(Incoming::Text(text))
                    if serde_json::from_str::<Value>(&text)
                        .is_ok_and(|m| m.get("room").is_some_and(|r| r != room)) => {}
                Some(other) => panic!(
                    "{}: expected nothing about {room} for {d:?}, got {}",
                    self.name,
                    short(&other)
                ),
            }
        }
    }

    /// Panics if anything (message or close) arrives within `d`.
    pub async fn expect_no_message(&mut self, d: Duration) {
        if let Some(incoming) = self.next_incoming(d).await {
            panic!(
                "{}: expected nothing for {d:?}, got {}",
                self.name,
                short(&incoming)
            );
        }
    }

    // -- request helpers -----------------------------------------------------

    /// Sends `msg` and returns the next message.
    pub async fn request(&mut self, msg: Value) -> Value {
        self.send_json(msg).await;
        self.next_json(WAIT).await
    }

    /// `ping` round trip: asserts the `pong` (the connection is alive and
    /// still answering).
    pub async fn assert_alive(&mut self, id: u64) {
        self.send_json(json!({"op": "ping", "id": id})).await;
        let pong = self.next_op("pong", WAIT).await;
        assert_eq!(pong["id"], id, "{}: pong for another ping: {pong}", self.name);
    }

    /// Sends `join` and returns its `joined`, skipping `member` messages and
    /// other rooms' events; panics on an error or an event of this room.
    pub async fn join(&mut self, id: u64, room: &str) -> Value {
        self.send_json(json!({"op": "join", "id": id, "room": room}))
            .await;
        self.expect_joined(id, room).await
    }

    /// Sends `join` and returns the reply (`joined` or `error`), skipping
    /// `member` messages and other rooms' events.
    pub async fn try_join(&mut self, id: u64, room: &str) -> Value {
        self.send_json(json!({"op": "join", "id": id, "room": room}))
            .await;
        loop {
            let msg = self.next_json(WAIT).await;
            if msg["op"] == "member" || (msg["op"] == "event" && msg["room"] != room) {
                continue;
            }
            return msg;
        }
    }

    async fn expect_joined(&mut self, id: u64, room: &str) -> Value {
        loop {
            let msg = self.next_json(WAIT).await;
            match msg["op"].as_str() {
                Some("joined") if msg["room"] == room => {
                    assert_eq!(msg["id"], id, "{}: joined with another id: {msg}", self.name);
                    return msg;
                }
                Some("member") => continue,
                Some("event") if msg["room"] != room => continue,
                _ => panic!("{}: join {room}: expected joined, got {msg}", self.name),
            }
        }
    }

    /// Sends `join` with `since`; returns the replayed events of the room and
    /// the `joined` that follows them.
    pub async fn join_since(&mut self, id: u64, room: &str, since: Value) -> (Vec<Value>, Value) {
        self.send_json(json!({"op": "join", "id": id, "room": room, "since": since}))
            .await;
        self.collect_until_joined(room).await
    }

    /// Reads this room's events until its `joined`; skips other rooms and
    /// `member` messages; panics on anything else.
    pub async fn collect_until_joined(&mut self, room: &str) -> (Vec<Value>, Value) {
        let mut events = Vec::new();
        loop {
            let msg = self.next_json(WAIT).await;
            match msg["op"].as_str() {
                Some("event") if msg["room"] == room => events.push(msg),
                Some("joined") if msg["room"] == room => return (events, msg),
                Some("member") => continue,
                Some("event") => continue,
                _ => panic!("{}: waiting for joined {room}: got {msg}", self.name),
            }
        }
    }

    /// The next `event` of `room`, skipping anything else.
    pub async fn next_event(&mut self, room: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("{}: no event in {room} within {limit:?}", self.name);
            }
            let msg = self.next_op("event", left).await;
            if msg["room"] == room {
                return msg;
            }
        }
    }
}

async fn read_loop(
    mut read: FragmentCollectorRead<tokio::io::ReadHalf<Stream>>,
    writer: Writer,
    tx: mpsc::UnboundedSender<Incoming>,
    mut gate: watch::Receiver<bool>,
) {
    // Pongs and the close echo go through the shared writer. A failed write
    // is ignored so that the frame that caused it (a close) is still seen.
    let mut obligated = |frame: Frame<'static>| {
        let writer = writer.clone();
        async move {
            let _ = writer.lock().await.write_frame(frame).await;
            Ok::<(), WebSocketError>(())
        }
    };
    loop {
        if gate.wait_for(|open| *open).await.is_err() {
            return;
        }
        let frame = match read.read_frame(&mut obligated).await {
            Ok(frame) => frame,
            Err(e) => {
                let _ = tx.send(Incoming::Gone(e.to_string()));
                return;
            }
        };
        match frame.opcode {
            OpCode::Text => {
                let _ = tx.send(Incoming::Text(
                    String::from_utf8_lossy(&frame.payload).into_owned(),
                ));
            }
            OpCode::Binary => {
                let _ = tx.send(Incoming::Binary(frame.payload.to_vec()));
            }
            OpCode::Close => {
                let payload = &frame.payload[..];
                let (code, reason) = if payload.len() >= 2 {
                    (
                        u16::from_be_bytes([payload[0], payload[1]]),
                        String::from_utf8_lossy(&payload[2..]).into_owned(),
                    )
                } else {
                    (1005, String::new())
                };
                let _ = tx.send(Incoming::Close(code, reason));
                return;
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Cluster: Redis, gateway and API nodes, a TCP proxy
// ---------------------------------------------------------------------------

/// A loopback port that was free a moment ago (bound to port 0, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

impl Herald {
    /// Kills the process with SIGKILL (no drain, no cleanup: a crashed
    /// node) and reaps it.
    pub fn sigkill(&mut self) {
        if self.exited.is_some() {
            return;
        }
        self.child.kill().expect("SIGKILL herald");
        self.exited = Some(self.child.wait().expect("wait for herald"));
    }

    /// `GET /readyz`: its status code.
    pub async fn readyz(&self) -> u16 {
        self.get_text("/readyz").await.0
    }
}

/// Whether a Redis server answers `PING` on `addr` within `limit`.
async fn redis_answers(addr: SocketAddr, limit: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n") {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
        }
        (got == b"+PONG\r\n").then_some(())
    };
    matches!(tokio::time::timeout(limit, attempt).await, Ok(Some(())))
}

/// A `redis-server` of the test's own, on a free loopback port, without
/// persistence (a restart loses everything, like a crashed cache). It can
/// be SIGKILLed and started again on the same port. Killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    output: Arc<StdMutex<Vec<String>>>,
}

impl RedisServer {
    /// Starts a server on a free port (another one if the port was taken
    /// meanwhile) and waits until it answers `PING`.
    pub async fn start() -> RedisServer {
        let mut last_error = String::new();
        for _ in 0..5 {
            let mut server = RedisServer {
                child: None,
                port: free_port(),
                dir: unique_dir("redis"),
                output: Arc::new(StdMutex::new(Vec::new())),
            };
            match server.spawn().await {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("could not start redis-server: {last_error}");
    }

    /// Spawns `redis-server` on `self.port` and waits (bounded) until it
    /// answers; `Err` if it exits first (port taken) or never answers.
    async fn spawn(&mut self) -> Result<(), String> {
        let mut child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn redis-server (is it installed?): {e}"))?;
        spawn_line_reader(child.stdout.take().unwrap(), self.output.clone(), None);
        spawn_line_reader(child.stderr.take().unwrap(), self.output.clone(), None);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(format!(
                    "redis-server on port {} exited with {status}: {}",
                    self.port,
                    self.output.lock().unwrap().join("\n")
                ));
            }
            if redis_answers(self.addr(), Duration::from_millis(500)).await {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("redis-server on port {} did not answer PING", self.port));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the server and reaps it: every client connection drops and
    /// all data is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL redis-server");
            child.wait().expect("wait for redis-server");
        }
    }

    /// Freezes the server with SIGSTOP: connections stay open and nothing
    /// answers (a hung Redis). [`RedisServer::thaw`] resumes it.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server is not running");
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} redis-server failed: {status}");
    }

    /// Starts the server again on the same port (empty: nothing was
    /// persisted); retries for a few seconds if the port is not free yet.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart: redis-server is still running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn().await {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => panic!("could not restart redis-server: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL works on a stopped process too.
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let lines = self.output.lock().map(|l| l.clone()).unwrap_or_default();
            let skip = lines.len().saturating_sub(50);
            eprintln!(
                "----- redis-server output (last {} lines) -----",
                lines.len() - skip
            );
            for line in &lines[skip..] {
                eprintln!("{line}");
            }
            eprintln!("----- end of redis-server output -----");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP proxy on a free loopback port in front of `target`. [`cut`]
/// drops every live connection (both sides see the socket close) while the
/// listener keeps accepting; [`set_blocked`] makes it close new
/// connections at once, to make an outage last.
///
/// [`cut`]: TcpProxy::cut
/// [`set_blocked`]: TcpProxy::set_blocked
pub struct TcpProxy {
    addr: SocketAddr,
    conns: Arc<StdMutex<Vec<tokio::task::AbortHandle>>>,
    blocked: Arc<std::sync::atomic::AtomicBool>,
    accepted: Arc<AtomicU64>,
    acceptor: JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let conns: Arc<StdMutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let blocked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let acceptor = {
            let (conns, blocked, accepted) = (conns.clone(), blocked.clone(), accepted.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    if blocked.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    accepted.fetch_add(1, Ordering::SeqCst);
                    inbound.set_nodelay(true).ok();
                    let task = tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        outbound.set_nodelay(true).ok();
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    });
                    let mut conns = conns.lock().unwrap();
                    conns.retain(|c| !c.is_finished());
                    conns.push(task.abort_handle());
                }
            })
        };
        TcpProxy {
            addr,
            conns,
            blocked,
            accepted,
            acceptor,
        }
    }

    /// The proxy's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://ADDR` of the proxy (when it fronts a Redis server).
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Drops every live connection (both of its sockets are closed); new
    /// connections are still accepted. Returns how many were live.
    pub fn cut(&self) -> usize {
        let mut conns = self.conns.lock().unwrap();
        let live = conns.iter().filter(|c| !c.is_finished()).count();
        for conn in conns.drain(..) {
            conn.abort();
        }
        live
    }

    /// While blocked, new connections are accepted and closed at once.
    pub fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::SeqCst);
    }

    /// Connections forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

/// A cluster on its own Redis: `redis-server`, N `herald gateway` nodes
/// (`gw-1` … `gw-N`) and one `herald api` node (`api-1`), all with the base
/// configuration plus the same `extra_toml`. Dropping it kills everything.
pub struct Cluster {
    pub gateways: Vec<Herald>,
    pub api: Herald,
    extra_toml: String,
    // Dropped last: the nodes go before their Redis.
    pub redis: RedisServer,
}

impl Cluster {
    pub async fn start(gateways: usize, extra_toml: &str) -> Cluster {
        let redis = RedisServer::start().await;
        let url = redis.url();
        let api = Herald::start_mode(
            "api",
            extra_toml,
            &[("HERALD_REDIS_URL", &url), ("HERALD_NODE_ID", "api-1")],
        )
        .await;
        let mut cluster = Cluster {
            gateways: Vec::new(),
            api,
            extra_toml: extra_toml.to_string(),
            redis,
        };
        for i in 1..=gateways {
            let node = cluster.start_gateway(&format!("gw-{i}"), &url).await;
            cluster.gateways.push(node);
        }
        cluster
    }

    /// Starts one more gateway node with the cluster's configuration, on
    /// `redis_url` (the cluster's Redis, or a proxy in front of it). It is
    /// not added to `gateways`.
    pub async fn start_gateway(&self, node_id: &str, redis_url: &str) -> Herald {
        Herald::start_mode(
            "gateway",
            &self.extra_toml,
            &[("HERALD_REDIS_URL", redis_url), ("HERALD_NODE_ID", node_id)],
        )
        .await
    }

    /// Gateway `i` (0-based).
    pub fn gw(&self, i: usize) -> &Herald {
        &self.gateways[i]
    }
}
