//! Configuration (PROTOCOL.md §3): a TOML file, overridden by `HERALD_*`
//! environment variables, overridden by command-line flags (applied by the
//! binary). Every key has a default; an unknown key is an error that names it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::policy::{Policies, RoomPolicyConfig};

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub auth: AuthConfig,
    pub api: ApiConfig,
    pub redis: RedisConfig,
    pub store: StoreConfig,
    pub rooms: Vec<RoomPolicyConfig>,
    pub limits: LimitsConfig,
    pub gateway: GatewayConfig,
    pub demo: DemoConfig,
}

/// `[node]`: this process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// `HERALD_NODE_ID`; default: hostname plus a random suffix.
    pub id: Option<String>,
    /// `HERALD_ADDR` / `--addr`; default depends on the mode.
    pub addr: Option<String>,
    /// `HERALD_DATA_DIR` / `--data-dir`: where standalone keeps its files.
    pub data_dir: PathBuf,
    /// `HERALD_LOG_FORMAT` / `--log-format`: `human` or `json`.
    pub log_format: LogFormat,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: None,
            addr: None,
            data_dir: PathBuf::from("./herald-data"),
            log_format: LogFormat::Human,
        }
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format {other:?} is not `human` or `json`")),
        }
    }
}

/// `[auth]`: how tokens are verified.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `HERALD_JWT_SECRET`: the HS256 secret.
    pub jwt_secret: Option<String>,
    /// `HS256` (default), `RS256`, `ES256` or `EdDSA`.
    pub algorithm: String,
    /// `HERALD_JWT_PUBLIC_KEY`: PEM public key for the asymmetric algorithms.
    pub public_key_pem: Option<String>,
    pub leeway_s: u64,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            algorithm: "HS256".into(),
            public_key_pem: None,
            leeway_s: 5,
            issuer: None,
            audience: None,
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach a log line, even through `{:?}`.
        f.debug_struct("AuthConfig")
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "<redacted>"))
            .field("algorithm", &self.algorithm)
            .field("leeway_s", &self.leeway_s)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// `[api]`: the HTTP API.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// `HERALD_API_KEYS` (comma-separated).
    pub keys: Vec<String>,
    pub max_body_bytes: usize,
    /// Browser origins allowed to call the API (CORS); `"*"` allows any.
    /// Empty (the default) sends no CORS headers.
    pub cors_origins: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            max_body_bytes: 1 << 20,
            cors_origins: Vec::new(),
        }
    }
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

/// `[redis]`: the cluster broker.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `HERALD_REDIS_URL`.
    pub url: Option<String>,
}

/// `[store]`: the durable store.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `HERALD_DATABASE_URL`: `postgres://…` or `sqlite://PATH`; standalone
    /// defaults to a SQLite file in the data directory.
    pub database_url: Option<String>,
}

/// A rate and a burst, for a token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub rate_per_s: f64,
    pub burst: u32,
}

/// `[limits]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub per_user: PerUserLimits,
    pub per_ip: PerIpLimits,
    pub per_api_key: PerApiKeyLimits,
}

/// `[limits.per_api_key]`: off unless set; shared by every API node.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerApiKeyLimits {
    pub requests: Option<RateLimit>,
}

/// `[limits.per_user]`: shared by all of a user's connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerUserLimits {
    pub publish: RateLimit,
    pub join: RateLimit,
    pub connect: RateLimit,
}

impl Default for PerUserLimits {
    fn default() -> Self {
        Self {
            publish: RateLimit {
                rate_per_s: 10.0,
                burst: 20,
            },
            join: RateLimit {
                rate_per_s: 20.0,
                burst: 40,
            },
            connect: RateLimit {
                rate_per_s: 2.0,
                burst: 10,
            },
        }
    }
}

/// `[limits.per_ip]`: off unless set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerIpLimits {
    pub connect: Option<RateLimit>,
}

/// `[gateway]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    pub heartbeat_ms: u64,
    pub hello_timeout_ms: u64,
    pub max_frame_bytes: usize,
    /// Messages queued per connection before it is cut with 4009.
    pub outbound_queue: usize,
    pub max_connections: usize,
    pub max_rooms_per_connection: usize,
    pub drain_ms: u64,
    /// Browser `Origin`s allowed to open a WebSocket; empty allows all.
    /// Requests without an `Origin` header (non-browser clients) pass.
    pub allowed_origins: Vec<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            heartbeat_ms: 25_000,
            hello_timeout_ms: 5_000,
            max_frame_bytes: 65_536,
            outbound_queue: 1024,
            max_connections: 100_000,
            max_rooms_per_connection: 256,
            drain_ms: 10_000,
            allowed_origins: Vec::new(),
        }
    }
}

/// `[demo]`: the demo page's token endpoint, `POST /demo/token` (standalone
/// only). It mints short-lived tokens for random demo users to anyone who
/// can reach the node, so it is for local development, never production.
/// Standalone development mode (generated credentials) turns it on.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    pub enabled: bool,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The environment variables Herald reads, and the key each overrides.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("HERALD_NODE_ID", "node.id"),
    ("HERALD_ADDR", "node.addr"),
    ("HERALD_DATA_DIR", "node.data_dir"),
    ("HERALD_LOG_FORMAT", "node.log_format"),
    ("HERALD_JWT_SECRET", "auth.jwt_secret"),
    ("HERALD_JWT_ALGORITHM", "auth.algorithm"),
    ("HERALD_JWT_PUBLIC_KEY", "auth.public_key_pem"),
    ("HERALD_API_KEYS", "api.keys"),
    ("HERALD_REDIS_URL", "redis.url"),
    ("HERALD_DATABASE_URL", "store.database_url"),
];

impl Config {
    /// Loads `path` (all defaults when `None`) and applies the environment.
    pub fn load(path: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                Self::from_toml(&text).map_err(|message| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message,
                })?
            }
            None => Self::default(),
        };
        config.apply_env(env)?;
        Ok(config)
    }

    /// Parses a TOML document; the error names the offending key and line.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// Applies `HERALD_*` variables; an empty variable counts as unset.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |name: &str| env(name).filter(|v| !v.is_empty());
        if let Some(v) = get("HERALD_NODE_ID") {
            self.node.id = Some(v);
        }
        if let Some(v) = get("HERALD_ADDR") {
            self.node.addr = Some(v);
        }
        if let Some(v) = get("HERALD_DATA_DIR") {
            self.node.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("HERALD_LOG_FORMAT") {
            self.node.log_format = v
                .parse()
                .map_err(|e: String| ConfigError::Invalid(format!("HERALD_LOG_FORMAT: {e}")))?;
        }
        if let Some(v) = get("HERALD_JWT_SECRET") {
            self.auth.jwt_secret = Some(v);
        }
        if let Some(v) = get("HERALD_JWT_ALGORITHM") {
            self.auth.algorithm = v;
        }
        if let Some(v) = get("HERALD_JWT_PUBLIC_KEY") {
            self.auth.public_key_pem = Some(v);
        }
        if let Some(v) = get("HERALD_API_KEYS") {
            self.api.keys = v
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(String::from)
                .collect();
        }
        if let Some(v) = get("HERALD_REDIS_URL") {
            self.redis.url = Some(v);
        }
        if let Some(v) = get("HERALD_DATABASE_URL") {
            self.store.database_url = Some(v);
        }
        Ok(())
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let g = &self.gateway;
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if g.heartbeat_ms < 100 {
            return invalid("gateway.heartbeat_ms must be at least 100");
        }
        if g.hello_timeout_ms == 0 {
            return invalid("gateway.hello_timeout_ms must be positive");
        }
        if g.max_frame_bytes < 256 {
            return invalid("gateway.max_frame_bytes must be at least 256");
        }
        if g.outbound_queue == 0 {
            return invalid("gateway.outbound_queue must be at least 1");
        }
        if g.max_connections == 0 || g.max_rooms_per_connection == 0 {
            return invalid("gateway.max_connections and gateway.max_rooms_per_connection must be positive");
        }
        if self.api.max_body_bytes == 0 {
            return invalid("api.max_body_bytes must be positive");
        }
        if self.api.keys.iter().any(|k| k.len() < 8) {
            return invalid("api.keys: every API key must be at least 8 characters");
        }
        for (name, rate) in [
            ("publish", self.limits.per_user.publish),
            ("join", self.limits.per_user.join),
            ("connect", self.limits.per_user.connect),
        ] {
            if !(rate.rate_per_s > 0.0 && rate.rate_per_s.is_finite()) || rate.burst == 0 {
                return Err(ConfigError::Invalid(format!(
                    "limits.per_user.{name}: rate_per_s and burst must be positive"
                )));
            }
        }
        for room in &self.rooms {
            if room.history_size == Some(0) {
                return Err(ConfigError::Invalid(format!(
                    "rooms {}: history_size must be at least 1",
                    room.pattern
                )));
            }
        }
        if self.auth.leeway_s > 3600 {
            return invalid("auth.leeway_s must be at most 3600");
        }
        Ok(())
    }

    /// The room policy table.
    pub fn policies(&self) -> Policies {
        Policies::new(&self.rooms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{JoinRule, PublishRule};

    const SAMPLE: &str = r#"
[auth]
jwt_secret = "change-me"
leeway_s = 5

[api]
keys = ["key-0001"]
max_body_bytes = 1048576

[[rooms]]
pattern = "chat:*"
join = "anyone"
client_publish = "members"
presence = true
join_leave = true
history_size = 100
history_ttl_s = 300
history_meta_ttl_s = 86400

[limits.per_user]
publish = { rate_per_s = 10, burst = 20 }
join    = { rate_per_s = 20, burst = 40 }
connect = { rate_per_s = 2,  burst = 10 }

[limits.per_ip]

[gateway]
heartbeat_ms = 25000
hello_timeout_ms = 5000
max_frame_bytes = 65536
outbound_queue = 1024
max_connections = 100000
max_rooms_per_connection = 256
drain_ms = 10000
"#;

    #[test]
    fn parses_the_documented_sample() {
        let c = Config::from_toml(SAMPLE).unwrap();
        c.validate().unwrap();
        assert_eq!(c.auth.jwt_secret.as_deref(), Some("change-me"));
        assert_eq!(c.api.keys, vec!["key-0001"]);
        let policies = c.policies();
        let chat = policies.lookup("chat:1");
        assert_eq!(
            (chat.join, chat.client_publish),
            (JoinRule::Anyone, PublishRule::Members)
        );
        assert!(chat.join_leave);
        assert_eq!(c.limits.per_user.connect.burst, 10);
    }

    #[test]
    fn empty_file_means_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.gateway.heartbeat_ms, 25_000);
        assert_eq!(c.api.max_body_bytes, 1 << 20);
        assert_eq!(c.auth.leeway_s, 5);
    }

    #[test]
    fn unknown_keys_are_named() {
        for (doc, key) in [
            ("bogus = 1", "bogus"),
            ("[gateway]\nheartbeat = 1", "heartbeat"),
            ("[[rooms]]\npattern = \"a\"\njoinn = \"anyone\"", "joinn"),
            ("[limits.per_user]\npublish = { rate = 1, burst = 2 }", "rate"),
        ] {
            let err = Config::from_toml(doc).unwrap_err();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(Config::from_toml("[[rooms]]\npattern = \"a b\"").is_err());
        assert!(Config::from_toml("[[rooms]]\npattern = \"a\"\njoin = \"everyone\"").is_err());
        assert!(Config::from_toml("[gateway]\nheartbeat_ms = \"x\"").is_err());
        let c = Config::from_toml("[gateway]\noutbound_queue = 0").unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn environment_overrides_file() {
        let mut c = Config::from_toml(SAMPLE).unwrap();
        c.apply_env(|name| match name {
            "HERALD_JWT_SECRET" => Some("from-env".into()),
            "HERALD_API_KEYS" => Some("key-aaaaa, key-bbbbb,".into()),
            "HERALD_NODE_ID" => Some("n1".into()),
            "HERALD_REDIS_URL" => Some(String::new()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.auth.jwt_secret.as_deref(), Some("from-env"));
        assert_eq!(c.api.keys, vec!["key-aaaaa", "key-bbbbb"]);
        assert_eq!(c.node.id.as_deref(), Some("n1"));
        assert_eq!(c.redis.url, None);
    }

    #[test]
    fn demo_is_off_unless_enabled() {
        assert!(!Config::from_toml("").unwrap().demo.enabled);
        assert!(!Config::from_toml("[demo]").unwrap().demo.enabled);
        assert!(Config::from_toml("[demo]\nenabled = true").unwrap().demo.enabled);
        let err = Config::from_toml("[demo]\nenable = true").unwrap_err();
        assert!(err.contains("enable"), "{err}");
        assert!(Config::from_toml("[demo]\nenabled = \"yes\"").is_err());
    }

    #[test]
    fn debug_never_prints_secrets() {
        let c = Config::from_toml(SAMPLE).unwrap();
        let text = format!("{c:?}");
        assert!(
            !text.contains("change-me") && !text.contains("key-0001"),
            "{text}"
        );
    }
}
