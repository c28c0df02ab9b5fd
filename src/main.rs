//! `herald`: the one binary. Parses the command line, loads configuration
//! and wires the crates together; the work itself lives in the crates.

mod cli;
mod demo;
mod server;
mod settings;
mod telemetry;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use herald_api::{Api, ApiSettings};
use herald_broker::{Broker, MemoryBroker, RedisBroker};
use herald_common::auth::{JwtVerifier, WireClaims};
use herald_common::config::Config;
use herald_gateway::{Gateway, GatewaySettings};
use herald_store::Store;

use crate::cli::{Cli, Command, ServeArgs, TokenArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole chain: what failed and why.
            eprintln!("herald: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let config = settings::load(&cli)?;
    match cli.command {
        None => serve(config, Mode::Standalone, ServeArgs::default()).await,
        Some(Command::Standalone(args)) => serve(config, Mode::Standalone, args).await,
        Some(Command::Gateway(args)) => serve(config, Mode::Gateway, args).await,
        Some(Command::Api(args)) => serve(config, Mode::Api, args).await,
        Some(Command::Token(args)) => token(config, args),
    }
}

/// What a serving process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Gateway and API, memory broker, SQLite store.
    Standalone,
    /// `/ws` only, on the Redis broker.
    Gateway,
    /// `/v1` only, on the Redis broker.
    Api,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Standalone => "standalone",
            Mode::Gateway => "gateway",
            Mode::Api => "api",
        }
    }

    fn default_addr(self) -> &'static str {
        match self {
            Mode::Api => "127.0.0.1:8081",
            Mode::Standalone | Mode::Gateway => "127.0.0.1:8080",
        }
    }
}

/// Applies the serving flags over the configuration.
fn apply_serve_args(config: &mut Config, args: &ServeArgs) {
    if let Some(addr) = &args.addr {
        config.node.addr = Some(addr.clone());
    }
    if let Some(id) = &args.node_id {
        config.node.id = Some(id.clone());
    }
}

/// The broker of a mode: embedded for standalone, Redis for a cluster.
async fn broker_for(mode: Mode, config: &Config) -> Result<Arc<dyn Broker>> {
    if mode == Mode::Standalone {
        return Ok(Arc::new(MemoryBroker::new()));
    }
    let Some(url) = config.redis.url.as_deref() else {
        bail!(
            "herald {} needs Redis: set HERALD_REDIS_URL (or [redis] url)",
            mode.name()
        );
    };
    Ok(Arc::new(RedisBroker::connect(url).await?))
}

async fn serve(mut config: Config, mode: Mode, args: ServeArgs) -> Result<()> {
    apply_serve_args(&mut config, &args);
    telemetry::init_logs(config.node.log_format);
    let development = mode == Mode::Standalone && settings::ensure_secrets(&mut config)?;
    if development {
        demo::enable_for_development(&mut config);
    }
    if mode == Mode::Api && config.api.keys.is_empty() {
        bail!("herald api needs at least one API key: set HERALD_API_KEYS (or [api] keys)");
    }
    let node_id = settings::node_id(&config);
    let metrics = telemetry::init_metrics(&node_id).context("cannot install the metrics recorder")?;
    let policies = Arc::new(config.policies());

    let store = match (&config.store.database_url, mode) {
        (Some(url), _) => Some(Store::connect(url).await?),
        (None, Mode::Standalone) => {
            std::fs::create_dir_all(&config.node.data_dir).with_context(|| {
                format!("cannot create data directory {}", config.node.data_dir.display())
            })?;
            Some(Store::connect(&Store::sqlite_url(&config.node.data_dir.join("herald.db"))).await?)
        }
        (None, _) => {
            tracing::warn!(
                "no store configured (HERALD_DATABASE_URL): grants, notifications and the outbox are unavailable"
            );
            None
        }
    };
    let broker = broker_for(mode, &config).await?;

    let gateway = if mode == Mode::Api {
        None
    } else {
        let verifier = Arc::new(JwtVerifier::new(&config.auth).context("invalid [auth] configuration")?);
        Some(Gateway::new(
            GatewaySettings {
                node_id: node_id.clone(),
                config: config.gateway.clone(),
                verifier,
                policies: policies.clone(),
                limits: config.limits.clone(),
                store: store.clone(),
            },
            broker.clone(),
        ))
    };
    let api = (mode != Mode::Gateway).then(|| {
        Api::new(
            ApiSettings {
                keys: config.api.keys.clone(),
                max_body_bytes: config.api.max_body_bytes,
                policies: (*policies).clone(),
                store: store.clone(),
                key_limit: config.limits.per_api_key.requests,
                cors_origins: config.api.cors_origins.clone(),
            },
            broker.clone(),
        )
    });

    // The API tier relays the transactional outbox (one relay at a time
    // across replicas; the store arbitrates).
    if mode != Mode::Gateway
        && let Some(store) = &store
    {
        tokio::spawn(herald_api::outbox::run_relay(
            store.clone(),
            broker.clone(),
            policies.clone(),
        ));
    }

    let addr = config
        .node
        .addr
        .clone()
        .unwrap_or_else(|| mode.default_addr().to_string());
    let listener = server::bind(&addr).await?;
    let local = listener.local_addr().context("cannot read the bound address")?;
    tracing::info!(node = %node_id, addr = %local, mode = mode.name(), "herald started");
    // One stable line on stdout that scripts and tests can wait for.
    println!("herald: listening on http://{local}");
    if development {
        print_quickstart(&config, local)?;
    }
    if mode == Mode::Standalone {
        demo::announce(&config, local);
    }

    server::serve(
        listener,
        server::Node {
            gateway,
            api,
            broker,
            store,
            metrics,
            drain: Duration::from_millis(config.gateway.drain_ms),
            demo: (mode == Mode::Standalone).then(|| demo::Demo::new(&config)),
        },
    )
    .await
}

/// Prints a ready-to-paste session for generated development credentials.
fn print_quickstart(config: &Config, addr: std::net::SocketAddr) -> Result<()> {
    let token = herald_common::auth::mint(
        &config.auth,
        &WireClaims {
            sub: "alice".into(),
            exp: herald_common::auth::now_s() + 3600,
            roles: Vec::new(),
            rooms: vec!["demo:*".into()],
            publish: Vec::new(),
        },
    )?;
    let key = config.api.keys.first().map(String::as_str).unwrap_or_default();
    println!(
        "\nDevelopment credentials were generated in {dir} (configure your own for production).\n\
         Connect (a token for user alice, valid 1 h, may join demo:*):\n\
         \n  websocat 'ws://{addr}/ws?token={token}'\n  {{\"op\":\"join\",\"id\":1,\"room\":\"demo:lobby\"}}\n\
         \nPublish:\n\
         \n  curl -s -H 'Authorization: Bearer {key}' -H 'content-type: application/json' \\\n    \
         -d '{{\"room\":\"demo:lobby\",\"event\":\"hello\",\"data\":{{\"text\":\"hi\"}}}}' http://{addr}/v1/publish\n\
         \nMore tokens: herald token --sub bob --rooms 'demo:*' --ttl 1h\n",
        dir = config.node.data_dir.display(),
    );
    Ok(())
}

/// `herald token`: prints a token signed with the configured secret.
fn token(mut config: Config, args: TokenArgs) -> Result<()> {
    settings::ensure_secrets(&mut config)?;
    let ttl = cli::parse_ttl(&args.ttl).map_err(anyhow::Error::msg)?;
    let claims = WireClaims {
        sub: args.sub,
        exp: herald_common::auth::now_s() + ttl,
        roles: args.roles,
        rooms: args.rooms,
        publish: args.publish,
    };
    // Refuse a token the gateway would refuse anyway.
    if claims.sub.is_empty() || herald_common::rooms::RoomName::user(&claims.sub).is_err() {
        bail!("--sub must be 1-190 bytes of A-Z a-z 0-9 _ . : @ -");
    }
    for pattern in claims.rooms.iter().chain(&claims.publish) {
        herald_common::rooms::RoomPattern::parse(pattern)
            .map_err(|e| anyhow::anyhow!("room pattern {pattern:?}: {e}"))?;
    }
    println!("{}", herald_common::auth::mint(&config.auth, &claims)?);
    Ok(())
}
