//! Herald's shared vocabulary: the wire protocol's frames and codes, room
//! names and patterns, the room policy, JWT verification and configuration.
//!
//! Everything here is plain data and pure functions; no I/O beyond reading a
//! configuration file, so every other crate can depend on it.

pub mod auth;
pub mod config;
pub mod control;
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

/// Formats milliseconds since the Unix epoch as RFC 3339 UTC with
/// millisecond precision (`2026-11-23T11:42:08.723Z`).
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm), for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(super::rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(super::rfc3339_ms(1_795_434_128_723), "2026-11-23T11:42:08.723Z");
    }

    #[test]
    fn random_hex_has_the_asked_length() {
        assert_eq!(super::random_hex(8).len(), 16);
        assert_ne!(super::random_hex(8), super::random_hex(8));
    }
}
