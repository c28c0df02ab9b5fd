//! What a run is aimed at: the gateway endpoints, the publishing endpoint,
//! how connections authenticate, which local addresses they leave from,
//! and which processes' CPU and memory are watched.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::resources::Watched;

/// The kind of server a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Herald,
    Socketio,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Herald => "herald",
            Kind::Socketio => "socketio",
        }
    }
}

/// A host and port to connect to, the `Host` header and the path.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

impl Endpoint {
    /// Parses `ws://`, `http://` (TLS is not supported: the harness measures
    /// the server, not a TLS terminator) and resolves the host once.
    pub async fn parse(url: &str, default_path: &str) -> Result<Self> {
        let rest = ["ws://", "http://"]
            .iter()
            .find_map(|scheme| url.strip_prefix(scheme))
            .with_context(|| format!("{url}: expected a ws:// or http:// URL"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let path = if path.is_empty() || path == "/" {
            default_path.to_string()
        } else {
            path.to_string()
        };
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(&with_port)
            .await
            .with_context(|| format!("cannot resolve {authority}"))?
            .next()
            .with_context(|| format!("{authority} resolves to nothing"))?;
        Ok(Self {
            addr,
            host: authority.to_string(),
            path,
        })
    }

    pub fn from_addr(addr: SocketAddr, path: &str) -> Self {
        Self {
            addr,
            host: addr.to_string(),
            path: path.to_string(),
        }
    }
}

/// How connections get their tokens.
pub enum Auth {
    /// Mint HS256 tokens with the deployment's secret.
    Secret(jsonwebtoken::EncodingKey),
    /// Use these tokens, round robin.
    Tokens(Vec<String>),
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    rooms: [&'a str; 1],
    publish: [&'a str; 1],
}

impl Auth {
    pub fn secret(secret: &str) -> Self {
        Auth::Secret(jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()))
    }

    pub fn token_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let tokens: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if tokens.is_empty() {
            bail!("{} holds no tokens", path.display());
        }
        Ok(Auth::Tokens(tokens))
    }

    /// The token of load user `i`, allowed to join and publish to `pattern`.
    pub fn token(&self, user: &str, i: usize, pattern: &str) -> Result<String> {
        match self {
            Auth::Tokens(tokens) => Ok(tokens[i % tokens.len()].clone()),
            Auth::Secret(key) => {
                let exp = crate::stats::now_us() / 1_000_000 + 4 * 3600;
                let claims = Claims {
                    sub: user,
                    exp,
                    rooms: [pattern],
                    publish: [pattern],
                };
                Ok(jsonwebtoken::encode(
                    &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                    &claims,
                    key,
                )?)
            }
        }
    }
}

/// Everything a scenario needs to reach the system under test.
pub struct Target {
    pub kind: Kind,
    pub gateways: Vec<Endpoint>,
    /// Herald's API, or the Socket.IO peer's publisher.
    pub publish: Option<Endpoint>,
    pub api_key: String,
    pub auth: Auth,
    /// The HS256 secret, when tokens are minted (handed to helper processes).
    pub secret: Option<String>,
    /// Local source addresses, round robin (empty: the OS picks).
    pub sources: Vec<IpAddr>,
    /// Processes whose CPU and memory are read.
    pub watched: Vec<Watched>,
    /// Room names are `<prefix><run>:<k>`: fresh rooms for every run.
    pub room_prefix: String,
    pub run_id: String,
    /// Where the numbers come from, for the report.
    pub notes: Vec<String>,
}

impl Target {
    pub fn room(&self, k: usize) -> String {
        format!("{}{}:{k}", self.room_prefix, self.run_id)
    }

    /// The pattern the load users' tokens allow.
    pub fn room_pattern(&self) -> String {
        format!("{}*", self.room_prefix)
    }

    pub fn user(&self, i: usize) -> String {
        format!("lt-{}-{i}", self.run_id)
    }

    pub fn token(&self, i: usize) -> Result<String> {
        self.auth.token(&self.user(i), i, &self.room_pattern())
    }

    pub fn gateway(&self, i: usize) -> &Endpoint {
        &self.gateways[i % self.gateways.len()]
    }

    pub fn source(&self, i: usize) -> Option<IpAddr> {
        (!self.sources.is_empty())
            .then(|| self.sources[(i / self.gateways.len().max(1)) % self.sources.len()])
    }
}

/// Connections one (source address, destination) pair can carry: the
/// ephemeral port range, with a margin.
pub fn ports_per_source() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().filter_map(|x| x.parse::<usize>().ok());
            Some(it.next()?..=it.next()?)
        })
        .map(|r| r.count() * 9 / 10)
        .unwrap_or(25_000)
}

/// The loopback source addresses needed for `conns` connections spread
/// over `gateways` endpoints (`requested` overrides), or none when the OS
/// can pick without running out of ports.
pub fn loopback_sources(conns: usize, gateways: &[Endpoint], requested: Option<usize>) -> Vec<IpAddr> {
    let per_gateway = conns.div_ceil(gateways.len().max(1));
    let needed = requested.unwrap_or_else(|| {
        if per_gateway > ports_per_source() {
            per_gateway.div_ceil(ports_per_source())
        } else {
            0
        }
    });
    let loopback = gateways
        .iter()
        .all(|g| g.addr.ip().is_loopback() && g.addr.is_ipv4());
    if needed == 0 || !loopback {
        return Vec::new();
    }
    (0..needed.min(250))
        .map(|k| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + k as u8)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_urls() {
        let e = Endpoint::parse("ws://127.0.0.1:8080/ws", "/ws").await.unwrap();
        assert_eq!(
            (e.addr.port(), e.host.as_str(), e.path.as_str()),
            (8080, "127.0.0.1:8080", "/ws")
        );
        let e = Endpoint::parse("http://127.0.0.1:9", "/v1/publish")
            .await
            .unwrap();
        assert_eq!(e.path, "/v1/publish");
        assert!(Endpoint::parse("wss://x", "/").await.is_err());
    }

    #[test]
    fn sources_only_when_ports_run_out() {
        let g = vec![Endpoint::from_addr("127.0.0.1:1".parse().unwrap(), "/ws")];
        assert!(loopback_sources(1000, &g, None).is_empty());
        let many = loopback_sources(ports_per_source() * 2 + 1, &g, None);
        assert_eq!(many.len(), 3);
        assert_eq!(many[2], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
        assert_eq!(loopback_sources(10, &g, Some(2)).len(), 2);
    }

    #[test]
    fn minted_tokens_carry_the_room_pattern() {
        let auth = Auth::secret("s3cret");
        let token = auth.token("lt-x-1", 1, "lt:*").unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.validate_exp = true;
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"s3cret"),
            &validation,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "lt-x-1");
        assert_eq!(data.claims["rooms"][0], "lt:*");
    }
}
