//! The command line: one subcommand per scenario, each with the options
//! common to all (what to target, where to write the report).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

/// Herald's load harness: measures fan-out latency and throughput, idle
/// memory, connect storms, churn with resume, and chat, against a
/// deployment it spawns (`--spawn`) or one you point it at — and the same
/// scenarios against a Socket.IO 4 cluster (`--target socketio|both`).
///
/// Every run is bounded in count and time and stops by itself.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// C connections in R rooms; the API publishes at a fixed open-loop
    /// rate (or --ramp searches the highest rate meeting a p99 bound).
    Fanout(FanoutArgs),
    /// Hold C idle authenticated connections and read the gateways' memory
    /// and CPU.
    Idle(IdleArgs),
    /// A connect storm: TCP + upgrade + auth + join at a given concurrency.
    Connect(ConnectArgs),
    /// Fan-out while connections drop and resume at a given rate.
    Churn(ChurnArgs),
    /// Clients publishing to each other through the gateway.
    Chat(ChatArgs),
    /// (internal) Holds a slice of idle connections for `idle` when one
    /// process cannot open enough sockets.
    #[command(hide = true)]
    Hold(HoldArgs),
}

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetChoice {
    Herald,
    Socketio,
    /// Herald, then Socket.IO, measured the same way (needs --spawn).
    Both,
}

#[derive(Debug, Clone, Args, Serialize)]
pub struct Common {
    /// Spawn a fresh deployment on this machine (redis-server on a free
    /// port, --gateways nodes, an API node) and stop it at the end.
    #[arg(long)]
    pub spawn: bool,

    /// What to measure.
    #[arg(long, value_enum, default_value = "herald")]
    pub target: TargetChoice,

    /// Gateway (or Socket.IO) nodes to spawn.
    #[arg(long, default_value_t = 2)]
    pub gateways: usize,

    /// Target mode: a gateway's WebSocket URL (repeat for several), e.g.
    /// ws://10.0.0.5:8080/ws, or ws://host:3000/socket.io/ for Socket.IO.
    #[arg(long = "gateway-url", value_name = "URL")]
    pub gateway_urls: Vec<String>,

    /// Target mode: the API base URL (http://host:8081), or the Socket.IO
    /// peer's publisher.
    #[arg(long, value_name = "URL")]
    pub api_url: Option<String>,

    /// Target mode: an API key.
    #[arg(long, env = "LOADTEST_API_KEY", hide_env_values = true)]
    #[serde(skip)]
    pub api_key: Option<String>,

    /// Target mode: the HS256 secret to mint load users' tokens with.
    #[arg(long, env = "LOADTEST_JWT_SECRET", hide_env_values = true)]
    #[serde(skip)]
    pub jwt_secret: Option<String>,

    /// Target mode: a file of tokens (one a line), used round robin, instead
    /// of a secret. Tokens must allow joining (and for chat publishing to)
    /// the load rooms.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Target mode: a node's base URL whose /metrics gives
    /// process_cpu_seconds_total and process_resident_memory_bytes
    /// (repeat; default: each gateway's and the API's own).
    #[arg(long = "metrics-url", value_name = "URL")]
    pub metrics_urls: Vec<String>,

    /// Load rooms are named <prefix><run id>:<k>.
    #[arg(long, default_value = "lt:")]
    pub room_prefix: String,

    /// Loopback source addresses to spread connections over (127.0.0.1,
    /// 127.0.0.2, ...); default: as many as the ephemeral port range needs.
    #[arg(long, value_name = "N")]
    pub sources: Option<usize>,

    /// Connections opened at once while setting up a scenario.
    #[arg(long, default_value_t = 500)]
    pub connect_concurrency: usize,

    /// Give up on connecting after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub setup_timeout: u64,

    /// Hard bound on the whole run, in seconds.
    #[arg(long, default_value_t = 900)]
    pub max_time: u64,

    /// Write the report as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// No progress output.
    #[arg(long)]
    pub quiet: bool,

    /// Exit 0 even if Herald lost, duplicated or reordered events.
    #[arg(long)]
    pub allow_loss: bool,

    /// --spawn: the herald binary (default: next to this one, else PATH).
    #[arg(long, value_name = "PATH")]
    pub herald_bin: Option<PathBuf>,

    /// --spawn: redis-server.
    #[arg(long, value_name = "PATH", default_value = "redis-server")]
    pub redis_bin: PathBuf,

    /// --spawn: node (for the Socket.IO peer).
    #[arg(long, value_name = "PATH", default_value = "node")]
    pub node_bin: PathBuf,

    /// --spawn: the Socket.IO peer's directory (with node_modules).
    #[arg(long, value_name = "DIR")]
    pub socketio_dir: Option<PathBuf>,

    /// --spawn: history kept per load room (how far back a resume reaches).
    #[arg(long, default_value_t = 1000)]
    pub history_size: u32,

    /// --spawn: keep the run directory with the servers' logs.
    #[arg(long)]
    pub keep_logs: bool,
}

#[derive(Debug, Clone, Args, Serialize)]
pub struct PublishArgs {
    /// Bytes of `data` per published event.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,

    /// Keep-alive HTTP connections of the publisher (publishes in flight).
    #[arg(long, default_value_t = 16)]
    pub http_conns: usize,

    /// After publishing, wait up to this many seconds for deliveries.
    #[arg(long, default_value_t = 10)]
    pub drain: u64,
}

#[derive(Debug, Clone, Args, Serialize)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub publish: PublishArgs,

    /// Connections.
    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,

    /// Rooms; connection i joins room i mod R, publishes go round robin.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,

    /// Publishes per second (all rooms together).
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,

    /// Seconds of publishing.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,

    /// Search the highest rate meeting --p99-ms with zero loss instead.
    #[arg(long)]
    pub ramp: bool,

    /// The ramp's latency bound (p99, ms).
    #[arg(long, default_value_t = 100.0)]
    pub p99_ms: f64,

    /// The ramp's first rate (publishes/s).
    #[arg(long, default_value_t = 5.0)]
    pub ramp_start: f64,

    /// The ramp's ceiling (publishes/s).
    #[arg(long, default_value_t = 2_000.0)]
    pub ramp_max: f64,

    /// The ramp's growth per step before the first failure.
    #[arg(long, default_value_t = 2.0)]
    pub ramp_factor: f64,

    /// The ramp's most steps.
    #[arg(long, default_value_t = 12)]
    pub ramp_steps: u32,

    /// Seconds of publishing per ramp step.
    #[arg(long, default_value_t = 5)]
    pub step_secs: u64,

    /// Bisection stops when the bounds are within this fraction.
    #[arg(long, default_value_t = 0.1)]
    pub ramp_precision: f64,
}

#[derive(Debug, Clone, Args, Serialize)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,

    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,

    /// Rooms the connections join (besides their own user room).
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,

    /// Seconds to let the servers settle after the last join before memory
    /// is read.
    #[arg(long, default_value_t = 5)]
    pub settle: u64,

    /// Seconds to hold the connections while idle CPU is measured.
    #[arg(long, default_value_t = 10)]
    pub hold: u64,

    /// Most connections per load process (more use helper processes);
    /// default: what RLIMIT_NOFILE allows.
    #[arg(long)]
    pub per_process: Option<usize>,
}

#[derive(Debug, Clone, Args, Serialize)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: Common,

    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,

    /// Connections in progress at once (default: all of them).
    #[arg(long)]
    pub concurrency: Option<usize>,

    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
}

#[derive(Debug, Clone, Args, Serialize)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub publish: PublishArgs,

    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,

    #[arg(long, default_value_t = 1)]
    pub rooms: usize,

    /// Publishes per second.
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,

    /// Reconnects (disconnect + resume) per second.
    #[arg(long, default_value_t = 500.0)]
    pub reconnects: f64,

    /// Seconds of churn.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
}

#[derive(Debug, Clone, Args, Serialize)]
pub struct ChatArgs {
    #[command(flatten)]
    pub common: Common,

    #[arg(long, default_value_t = 1_000)]
    pub conns: usize,

    /// Members per chat room.
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,

    /// Messages per second per client.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,

    /// Seconds of chatting.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,

    /// Bytes of `data` per message.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,

    /// After chatting, wait up to this many seconds for deliveries.
    #[arg(long, default_value_t = 10)]
    pub drain: u64,
}

#[derive(Debug, Clone, Args)]
pub struct HoldArgs {
    #[arg(long)]
    pub kind: String,
    #[arg(long = "gateway-url")]
    pub gateway_urls: Vec<String>,
    #[arg(long)]
    pub room_prefix: String,
    #[arg(long)]
    pub run_id: String,
    #[arg(long)]
    pub rooms: usize,
    #[arg(long)]
    pub first: usize,
    #[arg(long)]
    pub count: usize,
    #[arg(long)]
    pub total: usize,
    #[arg(long)]
    pub sources: Option<usize>,
    #[arg(long)]
    pub concurrency: usize,
    #[arg(long)]
    pub setup_timeout: u64,
    #[arg(long)]
    pub max_time: u64,
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}
