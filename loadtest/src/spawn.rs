//! `--spawn`: a fresh deployment on this machine — `redis-server` on a free
//! port, N gateway nodes and one API node (Herald), or N Socket.IO nodes
//! and the peer's publisher — each on a port of its own choosing, waited
//! for until it says it listens, and stopped by PID at the end (SIGTERM,
//! then SIGKILL after a grace). Logs go to files in a run directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::resources::{Probe, Role, Watched};
use crate::target::Kind;

/// How long a process may take to say it listens.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a process may take to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub kind: Kind,
    pub gateways: usize,
    pub herald_bin: PathBuf,
    pub redis_bin: PathBuf,
    pub node_bin: PathBuf,
    pub socketio_dir: PathBuf,
    pub room_prefix: String,
    pub history_size: u32,
    pub keep_logs: bool,
}

struct Proc {
    name: String,
    role: Role,
    child: Child,
    pid: u32,
}

/// A running deployment; call [`Cluster::stop`] at the end.
pub struct Cluster {
    pub dir: PathBuf,
    pub gateways: Vec<SocketAddr>,
    pub publish: SocketAddr,
    pub secret: String,
    pub api_key: String,
    procs: Vec<Proc>,
    keep_logs: bool,
}

/// A port no one listens on right now.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut buf);
    }
    if buf.iter().all(|b| *b == 0) {
        let seed = crate::stats::now_us() ^ u64::from(std::process::id()) << 32;
        buf.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (seed >> ((i % 8) * 8)) as u8 ^ i as u8);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// The last lines of a log file, to explain a failed start.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// The Herald configuration of a load deployment: the load rooms open to
/// anyone with a token, client publishes allowed to members, per-user
/// limits out of the way (each load user is one connection), and a short
/// drain so the deployment stops promptly.
fn herald_config(prefix: &str, history_size: u32) -> String {
    format!(
        r#"[[rooms]]
pattern = "{prefix}*"
join = "anyone"
client_publish = "members"
history_size = {history_size}

[limits.per_user]
publish = {{ rate_per_s = 10000.0, burst = 10000 }}
join = {{ rate_per_s = 10000.0, burst = 10000 }}
connect = {{ rate_per_s = 10000.0, burst = 10000 }}

[gateway]
max_connections = 1000000
drain_ms = 500
"#
    )
}

impl Cluster {
    pub async fn start(spec: &SpawnSpec) -> Result<Cluster> {
        let dir = std::env::temp_dir().join(format!(
            "herald-loadtest-{}-{}",
            std::process::id(),
            random_hex(3)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut cluster = Cluster {
            dir,
            gateways: Vec::new(),
            publish: SocketAddr::from(([127, 0, 0, 1], 0)),
            secret: random_hex(24),
            api_key: format!("lt_{}", random_hex(16)),
            procs: Vec::new(),
            keep_logs: spec.keep_logs,
        };
        match cluster.start_all(spec).await {
            Ok(()) => Ok(cluster),
            Err(e) => {
                cluster.keep_logs = true;
                let dir = cluster.dir.clone();
                cluster.stop().await;
                Err(e.context(format!("logs kept in {}", dir.display())))
            }
        }
    }

    async fn start_all(&mut self, spec: &SpawnSpec) -> Result<()> {
        let redis_port = free_port()?;
        let redis_url = format!("redis://127.0.0.1:{redis_port}");
        self.start_redis(spec, redis_port).await?;
        match spec.kind {
            Kind::Herald => {
                let config = self.dir.join("herald.toml");
                std::fs::write(&config, herald_config(&spec.room_prefix, spec.history_size))?;
                for k in 1..=spec.gateways {
                    let mut cmd = Command::new(&spec.herald_bin);
                    cmd.arg("--config")
                        .arg(&config)
                        .args(["gateway", "--addr", "127.0.0.1:0", "--node-id"])
                        .arg(format!("lt-gw-{k}"));
                    self.herald_env(&mut cmd, &redis_url);
                    let addr = self.launch(&format!("gateway-{k}"), Role::Gateway, cmd).await?;
                    self.gateways.push(addr);
                }
                let mut cmd = Command::new(&spec.herald_bin);
                cmd.arg("--config").arg(&config).args([
                    "api",
                    "--addr",
                    "127.0.0.1:0",
                    "--node-id",
                    "lt-api-1",
                ]);
                self.herald_env(&mut cmd, &redis_url);
                self.publish = self.launch("api", Role::Api, cmd).await?;
            }
            Kind::Socketio => {
                let dir = &spec.socketio_dir;
                if !dir.join("node_modules").is_dir() {
                    bail!(
                        "the Socket.IO peer is not installed: run `npm ci` in {}",
                        dir.display()
                    );
                }
                for k in 1..=spec.gateways {
                    let mut cmd = Command::new(&spec.node_bin);
                    cmd.arg(dir.join("server.js"))
                        .env("REDIS_URL", &redis_url)
                        .env("JWT_SECRET", &self.secret)
                        .env("ADDR", "127.0.0.1:0");
                    let addr = self.launch(&format!("socketio-{k}"), Role::Gateway, cmd).await?;
                    self.gateways.push(addr);
                }
                let mut cmd = Command::new(&spec.node_bin);
                cmd.arg(dir.join("publisher.js"))
                    .env("REDIS_URL", &redis_url)
                    .env("API_KEY", &self.api_key)
                    .env("ADDR", "127.0.0.1:0");
                self.publish = self.launch("socketio-publisher", Role::Api, cmd).await?;
            }
        }
        Ok(())
    }

    fn herald_env(&self, cmd: &mut Command, redis_url: &str) {
        cmd.env("HERALD_REDIS_URL", redis_url)
            .env("HERALD_JWT_SECRET", &self.secret)
            .env("HERALD_API_KEYS", &self.api_key)
            .env_remove("HERALD_DATABASE_URL")
            .env_remove("HERALD_ADDR")
            .env_remove("HERALD_NODE_ID");
    }

    async fn start_redis(&mut self, spec: &SpawnSpec, port: u16) -> Result<()> {
        let log = self.dir.join("redis.log");
        let mut cmd = Command::new(&spec.redis_bin);
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args([
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--maxclients",
            "10000",
        ])
        .arg("--dir")
        .arg(&self.dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(Stdio::null())
        .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", spec.redis_bin.display()))?;
        let pid = child.id().context("redis-server exited at once")?;
        self.procs.push(Proc {
            name: "redis".into(),
            role: Role::Redis,
            child,
            pid,
        });
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                let mut buf = [0u8; 64];
                if s.write_all(b"PING\r\n").await.is_ok()
                    && let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await
                    && buf[..n].starts_with(b"+PONG")
                {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!("redis-server did not answer on port {port}:\n{}", tail(&log));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a server that prints `… listening on http://ADDR` on stdout.
    async fn launch(&mut self, name: &str, role: Role, mut cmd: Command) -> Result<SocketAddr> {
        let log = self.dir.join(format!("{name}.log"));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("cannot start {name}"))?;
        let pid = child.id().with_context(|| format!("{name} exited at once"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        self.procs.push(Proc {
            name: name.to_string(),
            role,
            child,
            pid,
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Reads stdout to the end so the child never blocks on a full pipe.
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut tx = Some(tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.split("listening on http://").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = match tokio::time::timeout(START_TIMEOUT, rx).await {
            Ok(Ok(addr)) => addr,
            _ => bail!("{name} did not start:\n{}", tail(&log)),
        };
        addr.parse()
            .with_context(|| format!("{name} printed an address that does not parse: {addr}"))
    }

    /// The processes to watch: every spawned one.
    pub fn watched(&self) -> Vec<Watched> {
        self.procs
            .iter()
            .map(|p| Watched {
                name: p.name.clone(),
                role: p.role,
                probe: Probe::Pid(p.pid),
            })
            .collect()
    }

    /// Whether a spawned process has exited (a crash under load).
    pub fn exited(&mut self) -> Vec<String> {
        self.procs
            .iter_mut()
            .filter_map(|p| match p.child.try_wait() {
                Ok(Some(status)) => Some(format!("{} exited: {status}", p.name)),
                _ => None,
            })
            .collect()
    }

    /// Stops every process by PID: servers first, Redis last.
    pub async fn stop(mut self) {
        let mut procs = std::mem::take(&mut self.procs);
        procs.sort_by_key(|p| p.role == Role::Redis);
        for p in &procs {
            // SAFETY: kill(2) on a PID this process spawned and still owns
            // (not yet reaped, so the PID cannot have been reused).
            unsafe {
                libc::kill(p.pid as libc::pid_t, libc::SIGTERM);
            }
        }
        for p in &mut procs {
            if tokio::time::timeout(STOP_GRACE, p.child.wait()).await.is_err() {
                let _ = p.child.kill().await;
            }
        }
        if !self.keep_logs {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
