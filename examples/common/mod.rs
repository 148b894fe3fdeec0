//! Helpers shared by the benchmark examples (each example includes this file as its own `common` module).

/// Raise the soft open-files limit to the hard limit; returns the new soft limit. Child processes (the servers
/// under test) inherit it.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
pub fn raise_fd_limit() -> u64 {
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 1024;
        }
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur as u64
    }
}

/// The 1, 5 and 15 minute load averages as printed in a benchmark's header ("" if unreadable).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
