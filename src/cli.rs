//! The command line: subcommands and the flags that override configuration.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use herald_common::config::LogFormat;

/// Herald: a horizontally scalable real-time WebSocket gateway.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about)]
pub struct Cli {
    /// Configuration file (TOML); overridden by HERALD_* variables and flags.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Where standalone keeps its database and generated secrets.
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Log format: human or json.
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Gateway and API in one process, nothing else needed (the default).
    Standalone(ServeArgs),
    /// A cluster gateway node (serves /ws; needs HERALD_REDIS_URL).
    Gateway(ServeArgs),
    /// A cluster API node (serves /v1; needs HERALD_REDIS_URL).
    Api(ServeArgs),
    /// Mint a token signed with the configured secret.
    Token(TokenArgs),
}

/// Flags of the serving subcommands.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:8080; api: 127.0.0.1:8081).
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: Option<String>,

    /// This node's id (default: hostname plus a random suffix).
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
}

/// Flags of `herald token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    pub sub: String,

    /// Comma-separated roles.
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,

    /// Comma-separated room patterns the user may join (`rooms` claim).
    #[arg(long, value_delimiter = ',')]
    pub rooms: Vec<String>,

    /// Comma-separated room patterns the user may publish to (`publish`).
    #[arg(long, value_delimiter = ',')]
    pub publish: Vec<String>,

    /// Lifetime: a number with s, m, h or d (default 1h).
    #[arg(long, default_value = "1h")]
    pub ttl: String,
}

/// Parses `90s`, `15m`, `1h`, `7d` (or plain seconds) into seconds.
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number.parse().map_err(|_| format!("invalid ttl {text:?}"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("invalid ttl unit in {text:?} (use s, m, h or d)")),
    };
    n.checked_mul(scale)
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("invalid ttl {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("90"), Ok(90));
        assert_eq!(parse_ttl("15m"), Ok(900));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("2d"), Ok(172_800));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
