//! Herald's shared vocabulary: the wire protocol's frames and codes, room
//! names and patterns, the room policy, JWT verification and configuration.
//!
//! Everything here is plain data and pure functions; no I/O beyond reading a
//! configuration file, so every other crate can depend on it.

pub mod auth;
pub mod config;
pub mod policy;
pub mod protocol;
pub mod rooms;

/// A random identifier of `bytes` random bytes, hex-encoded (epochs, node id
/// suffixes, generated secrets).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // The OS random source failing is not recoverable in any useful way; fall
    // back to the clock so that an id is still unlikely to repeat.
    if getrandom::fill(&mut buf).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (nanos >> ((i % 16) * 8)) as u8;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
