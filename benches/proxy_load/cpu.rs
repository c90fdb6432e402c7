//! CPU time per thread, read from /proc, so each side's cost can be told apart.

use super::*;

/// One thread's counters.
#[derive(Clone, Copy)]
pub(crate) struct ThreadStat {
    /// Part of the load generator (its runtime's threads and the main thread driving it).
    pub(crate) generator: bool,
    /// The fake upstream's own runtime (`--upstream-runtime`).
    pub(crate) upstream: bool,
    pub(crate) cpu_ns: u64,
    /// Voluntary + involuntary context switches.
    pub(crate) switches: u64,
}

/// Counters of every thread of this process, by thread id.
pub(crate) fn thread_stats() -> HashMap<u32, ThreadStat> {
    let pid = std::process::id();
    let mut out = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        let read = |name: &str| std::fs::read_to_string(task.path().join(name)).ok();
        let comm = read("comm").unwrap_or_default();
        let schedstat =
            read("schedstat").and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
        let cpu_ns = schedstat.or_else(|| {
            // utime + stime in clock ticks (100 Hz), after the parenthesised command name.
            let stat = read("stat")?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some(ticks * 10_000_000)
        });
        let switches = read("status").map_or(0, |status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum()
        });
        if let Some(cpu_ns) = cpu_ns {
            let generator = tid == pid || comm.starts_with("bench-gen");
            out.insert(
                tid,
                ThreadStat {
                    generator,
                    upstream: comm.starts_with("bench-up"),
                    cpu_ns,
                    switches,
                },
            );
        }
    }
    out
}

/// What the threads did since `before`: CPU seconds of the servers and of the load
/// generator, and the servers' context switches.
pub(crate) fn spent_since(before: &HashMap<u32, ThreadStat>) -> (f64, f64, u64) {
    let (mut servers, mut generator, mut switches) = (0u64, 0u64, 0u64);
    for (tid, now) in thread_stats() {
        let (cpu_before, switches_before) =
            before.get(&tid).map_or((0, 0), |b| (b.cpu_ns, b.switches));
        let cpu = now.cpu_ns.saturating_sub(cpu_before);
        if now.generator {
            generator += cpu;
        } else {
            servers += cpu;
            switches += now.switches.saturating_sub(switches_before);
        }
    }
    (servers as f64 / 1e9, generator as f64 / 1e9, switches)
}

/// CPU seconds of the fake upstream's own runtime since `before` (0 without
/// `--upstream-runtime`).
pub(crate) fn upstream_spent_since(before: &HashMap<u32, ThreadStat>) -> f64 {
    let ns: u64 = thread_stats()
        .into_iter()
        .filter(|(_, now)| now.upstream)
        .map(|(tid, now)| {
            now.cpu_ns
                .saturating_sub(before.get(&tid).map_or(0, |b| b.cpu_ns))
        })
        .sum();
    ns as f64 / 1e9
}
