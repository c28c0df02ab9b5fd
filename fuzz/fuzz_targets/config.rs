//! Fuzzes the configuration loader (`Config::from_toml`, PROTOCOL.md §3) on
//! any UTF-8 text, and whatever an accepted document goes through next.
//!
//! Checks that nothing panics (nor overflows the stack) for any input:
//! - `Config::from_toml` answers `Ok` or an `Err` with a non-empty message;
//! - for an accepted document, `Config::validate`, `apply_env` with no
//!   variables set, the room policy table (`Config::policies`) and its
//!   `lookup` of a few room names, and the redacting `Debug` impls all run;
//!   `apply_env` with nothing set changes no checked field, and `validate`
//!   gives the same answer before and after it.

#![no_main]

use herald_common::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut config = match Config::from_toml(text) {
        Ok(config) => config,
        Err(message) => {
            assert!(!message.is_empty(), "an error without a message for {text:?}");
            return;
        }
    };
    let valid = config.validate().is_ok();
    let before = format!("{config:?}");
    config.apply_env(|_| None).expect("no variables set cannot fail");
    assert_eq!(
        format!("{config:?}"),
        before,
        "apply_env with nothing set changed the config"
    );
    assert_eq!(config.validate().is_ok(), valid);

    let policies = config.policies();
    for room in ["broadcast", "user:alice", "chat:1", "a"] {
        let _ = policies.lookup(room);
    }
    // Every configured exact pattern names a room the table can look up.
    for entry in &config.rooms {
        let text = entry.pattern.to_string();
        let _ = policies.lookup(&text);
    }
});
