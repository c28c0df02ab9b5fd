//! RLIMIT_NOFILE: every load connection is a file descriptor (and every
//! spawned server inherits the limit).

/// The (soft, hard) limit on open files.
pub fn nofile() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return (1024, 1024);
    }
    (lim.rlim_cur, lim.rlim_max)
}

/// Raises the soft limit to `want` — to the hard limit at most, unless the
/// process may raise that too (CAP_SYS_RESOURCE). Returns the soft limit now
/// in force.
pub fn raise_nofile(want: u64) -> u64 {
    let (soft, hard) = nofile();
    if soft >= want {
        return soft;
    }
    let set = |cur: u64, max: u64| {
        let lim = libc::rlimit {
            rlim_cur: cur as libc::rlim_t,
            rlim_max: max as libc::rlim_t,
        };
        // SAFETY: setrlimit reads the struct it is given.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 }
    };
    if want > hard && set(want, want) {
        return want;
    }
    let target = want.min(hard);
    if set(target, hard) { target } else { soft }
}

/// File descriptors a process keeps for itself besides its connections.
pub const RESERVED_FDS: u64 = 200;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_never_lowers() {
        let (soft, hard) = nofile();
        assert!(raise_nofile(soft.min(hard)) >= soft.min(hard));
        assert!(nofile().0 >= soft);
    }
}
