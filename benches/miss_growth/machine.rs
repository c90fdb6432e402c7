//! Runtimes, thread and process CPU time, the load average, the command line.

use super::*;

pub(crate) fn runtime(name: &str, workers: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The calling thread's id (`/proc/thread-self` links to `PID/task/TID`).
pub(crate) fn own_tid() -> u32 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds of one thread of this process (`schedstat`: nanoseconds on a CPU).
pub(crate) fn thread_cpu(tid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |ns| ns / 1e9)
}

/// CPU seconds of the whole process (user + system, in clock ticks of 1/100 s).
pub(crate) fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub(crate) fn command() -> String {
    let extra: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if extra.is_empty() {
        "cargo bench --bench miss_growth".into()
    } else {
        format!("cargo bench --bench miss_growth -- {}", extra.join(" "))
    }
}

pub(crate) fn parse() -> Args {
    let mut args = Args {
        entries: 100_000,
        connections: 16,
        dim: 1536,
        latent: 32,
        modes: vec![false, true],
        ef_search: None,
        m: None,
        ef_construction: None,
        settle_secs: 600,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().and_then(|v| v.parse().ok()).expect("a number");
        match arg.as_str() {
            "--entries" => args.entries = value(),
            "--connections" => args.connections = value(),
            "--dim" => args.dim = value(),
            "--latent" => args.latent = value(),
            "--ef-search" => args.ef_search = Some(value()),
            "--m" => args.m = Some(value()),
            "--efc" => args.ef_construction = Some(value()),
            "--settle-secs" => args.settle_secs = value(),
            "--only" => {
                args.modes = match it.next().as_deref() {
                    Some("on") => vec![true],
                    Some("off") => vec![false],
                    other => panic!("--only on|off, not {other:?}"),
                }
            }
            _ => {}
        }
    }
    args
}
