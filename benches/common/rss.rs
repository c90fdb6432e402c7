//! Resident memory from /proc (Linux), shared by the benches that report memory.

/// VmRSS of process `pid` (`"self"` for this one) in KiB; 0 when it cannot be read.
pub fn rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// This process's resident memory in bytes.
#[allow(dead_code)] // not every bench reports its own memory
pub fn rss_bytes() -> usize {
    rss_kib("self") as usize * 1024
}
