//! Start-up cost: how long `Cache::open` (open sled + rebuild the vector index) takes for N
//! stored entries, for a few ways of spreading them over scopes.
//!
//! `cargo bench --bench startup -- [ENTRIES] [DIM]` (defaults 10000 and 1536). Prints a table;
//! the baseline in the same run opens the same store and reads every vector without building
//! an index (sled alone), so the index rebuild's share is visible.
//!
//! `--per-scope=N` measures only that spread.
//!
//! `-- ENTRIES DIM --restart [--keep=DIR]`: one scope of ENTRIES; builds its graph once, dumps it, then
//! starts a fresh process that opens the cache and answers a semantic lookup, and reports
//! the time from spawning that process to the hit, with its resident memory per entry. Then
//! the same after 1000 more entries were stored without a dump (a crash): they are replayed.
//! Before the dump, the built cache answers `--queries=200` near queries (a stored vector plus
//! noise) through `Cache::lookup_semantic` at each `--ef=LIST` search breadth: latency, and
//! recall@1 against brute force over the same vectors. `--m=N --efc=N` set the graph's shape
//! (defaults: the shipped `cache.hnsw_m`, `cache.hnsw_ef_construction`). Vectors are uniform
//! random unit vectors, or with `--latent=N` embedding-like ones of intrinsic dimension N
//! (`benches/common/vectors.rs`).

#[path = "common/rss.rs"]
mod rss;
#[path = "common/vectors.rs"]
mod vectors;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use deja::cache::Cache;
use deja::cache::entry::Entry;
use deja::cache::store::Store;
use deja::clock::SystemClock;
use deja::config::CacheConfig;
use vectors::{Truth, VectorKind};

fn main() {
    let all: Vec<String> = std::env::args().collect();
    let args: Vec<String> = all
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .collect();
    let entries: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let dim: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1536);
    let option = |name: &str| all.iter().find_map(|a| a.strip_prefix(name));
    let kind = VectorKind::new(
        dim,
        option("--latent=").map_or(0, |v| v.parse().expect("--latent=N")),
    );
    let shipped = CacheConfig::default();
    let shape = restart::Shape {
        m: option("--m=").map_or(shipped.hnsw_m, |v| v.parse().expect("--m=N")),
        ef_construction: option("--efc=").map_or(shipped.hnsw_ef_construction, |v| {
            v.parse().expect("--efc=N")
        }),
    };
    let probe = restart::Probe {
        queries: option("--queries=").map_or(200, |v| v.parse().expect("--queries=N")),
        ef: option("--ef=").map_or(vec![shipped.hnsw_ef_search], |v| {
            v.split(',')
                .map(|x| x.parse().expect("--ef=LIST"))
                .collect()
        }),
    };
    // The phases of `--restart` run in processes of their own (`--phase=`, `--dir=`).
    if let (Some(phase), Some(dir)) = (option("--phase="), option("--dir=")) {
        let dir = Path::new(dir);
        return match phase {
            "build" => restart::build(dir, entries, &kind, shape, &probe),
            "late" => restart::add_late(dir, &kind, shape),
            _ => restart::open_only(dir, &kind, shape),
        };
    }
    if all.iter().any(|a| a == "--restart") {
        let keep = option("--keep=").map(std::path::PathBuf::from);
        return restart::run(entries, &kind, shape, &probe, keep);
    }
    println!("start-up with {entries} entries, {dim}-d vectors");
    println!(
        "| scopes | entries/scope | sled open + read vectors (ms) | Cache::open incl. index rebuild (ms) |"
    );
    println!("|---|---|---|---|");
    // `--per-scope=N` runs one spread only (a large store is slow to fill four times).
    let spreads = match all.iter().find_map(|a| a.strip_prefix("--per-scope=")) {
        Some(n) => vec![n.parse().expect("--per-scope=N")],
        None => vec![1, 10, 100, entries],
    };
    for per_scope in spreads {
        let scopes = entries / per_scope;
        let dir = tempfile::tempdir().expect("tempdir");
        fill(dir.path(), entries, per_scope, &kind, None);
        let config = CacheConfig {
            dir: dir.path().to_path_buf(),
            ..CacheConfig::default()
        };
        // Baseline: open the same store and read every vector, without building an index.
        let started = Instant::now();
        let store = Store::open(dir.path()).expect("open");
        let read = store.vectors().filter(Result::is_ok).count();
        assert_eq!(read, entries);
        drop(store);
        let sled_ms = started.elapsed().as_secs_f64() * 1000.0;

        let started = Instant::now();
        let cache = Cache::open(&config, "bench", Arc::new(SystemClock)).expect("open");
        let open_ms = started.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(cache.indexed(), entries);
        println!("| {scopes} | {per_scope} | {sled_ms:.0} | {open_ms:.0} |");
    }
}

/// The seed of the stored vectors' sequence.
const FILL_SEED: u64 = 7;

/// Fills a store with `entries` vectors of `kind`, `per_scope` to a scope, each shown to
/// `truth` (if any) with its id.
fn fill(
    dir: &Path,
    entries: usize,
    per_scope: usize,
    kind: &VectorKind,
    mut truth: Option<&mut Truth>,
) {
    let store = Store::open(dir).expect("store");
    store.set_meta("embedder", "bench").expect("meta");
    let mut rng = fastrand::Rng::with_seed(FILL_SEED);
    let response = format!(
        r#"{{"object":"chat.completion","choices":[{{"message":{{"content":"{}"}}}}]}}"#,
        "x".repeat(600)
    );
    for i in 0..entries {
        let scope = ((i / per_scope) as u64).to_be_bytes();
        let mut scope_key = [0u8; 32];
        scope_key[..8].copy_from_slice(&scope);
        let mut exact = [0u8; 32];
        exact[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let vector = kind.next(&mut rng);
        let entry = Entry {
            scope: scope_key,
            exact,
            model: "gpt-4o-mini".into(),
            created_ms: 0,
            expires_ms: u64::MAX,
            has_usage: true,
            response: response.clone(),
            prompt: None,
            owner: Default::default(),
        };
        let (id, _) = store.insert(&entry, Some(&vector)).expect("insert");
        if let Some(truth) = truth.as_deref_mut() {
            truth.see(id, &vector);
        }
    }
    store.flush().expect("flush");
}

mod restart {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    use deja::cache::key::Hash32;
    use deja::cache::{NewEntry, Requirements};

    use std::collections::HashMap;

    use super::vectors::{near, pct, query_sources};
    use super::*;

    const LATE: usize = 1000;
    const NEEDS: Requirements = Requirements {
        max_age_ms: None,
        needs_usage: false,
    };

    /// The graph's build parameters.
    #[derive(Clone, Copy)]
    pub struct Shape {
        pub m: usize,
        pub ef_construction: usize,
    }

    /// What to ask the built cache before it is dumped.
    pub struct Probe {
        pub queries: usize,
        pub ef: Vec<usize>,
    }

    /// Each phase runs in a new process, so the memory one phase leaves behind (the allocator
    /// keeps what the build freed) cannot slow the next one down. `keep` leaves the filled
    /// store and its dump in that directory (a temporary one otherwise).
    pub fn run(
        entries: usize,
        kind: &VectorKind,
        shape: Shape,
        probe: &Probe,
        keep: Option<std::path::PathBuf>,
    ) {
        let dim = kind.dim();
        println!(
            "restart with one scope of {entries} entries, {dim}-d {}, M={} ef_construction={}",
            kind.describe(),
            shape.m,
            shape.ef_construction
        );
        let temp = tempfile::tempdir().expect("tempdir");
        let dir = keep.unwrap_or_else(|| temp.path().to_path_buf());
        let ef: Vec<String> = probe.ef.iter().map(usize::to_string).collect();
        let status = phase("build", &dir, kind, shape, entries)
            .arg(format!("--queries={}", probe.queries))
            .arg(format!("--ef={}", ef.join(",")))
            .status()
            .expect("build phase");
        assert!(status.success(), "build phase failed");
        println!(
            "| start | spawn → first semantic lookup answered (s) | Cache::open (s) | RSS/entry (bytes) |"
        );
        println!("|---|---|---|---|");
        child(&dir, kind, shape, "from dump");
        let status = phase("late", &dir, kind, shape, 0)
            .stdout(Stdio::null())
            .status()
            .expect("late phase");
        assert!(status.success(), "late phase failed");
        child(&dir, kind, shape, &format!("dump + {LATE} stored after it"));
    }

    /// This bench as a child process running `phase` on `dir`.
    fn phase(phase: &str, dir: &Path, kind: &VectorKind, shape: Shape, entries: usize) -> Command {
        let mut command = Command::new(std::env::current_exe().expect("exe"));
        command
            .args([entries.to_string(), kind.dim().to_string()])
            .arg(format!("--phase={phase}"))
            .arg(format!("--dir={}", dir.display()))
            .arg(format!("--latent={}", kind.latent()))
            .arg(format!("--m={}", shape.m))
            .arg(format!("--efc={}", shape.ef_construction));
        command
    }

    /// Fills the store, builds the graph (the cold start), probes it, dumps it.
    pub fn build(dir: &Path, entries: usize, kind: &VectorKind, shape: Shape, probe: &Probe) {
        let started = Instant::now();
        let mut truth = Truth::new(queries(kind, entries, probe.queries), kind.dim());
        fill(dir, entries, entries, kind, Some(&mut truth));
        println!("fill sled: {:.1} s", started.elapsed().as_secs_f64());
        let config = config(dir, shape);
        let started = Instant::now();
        let cache = Cache::open(&config, "bench", Arc::new(SystemClock)).expect("open");
        let built = started.elapsed().as_secs_f64();
        println!(
            "cold open (graph built): {built:.1} s ({:.0} inserts/s)",
            entries as f64 / built
        );
        search(&cache, &config, truth, probe);
        let started = Instant::now();
        assert_eq!(cache.dump_index(true), 1);
        println!("dump: {:.1} s", started.elapsed().as_secs_f64());
    }

    /// Opens from the dump, stores `LATE` more entries, and stops without dumping (a crash
    /// after the store's flush), so the next start replays them.
    pub fn add_late(dir: &Path, kind: &VectorKind, shape: Shape) {
        let cache = Cache::open(&config(dir, shape), "bench", Arc::new(SystemClock)).expect("open");
        let mut rng = fastrand::Rng::with_seed(99);
        for i in 0..LATE {
            let mut exact = [0xee; 32];
            exact[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let new = NewEntry {
                scope: Hash32([0; 32]),
                exact: Hash32(exact),
                model: "gpt-4o-mini".into(),
                response: "{}".into(),
                has_usage: true,
                vector: Some(kind.next(&mut rng)),
                prompt: None,
                owner: Default::default(),
            };
            cache.insert(new).expect("insert");
        }
        cache.flush().expect("flush");
    }

    /// `count` near queries over the vectors `fill` will store: their sources are found by
    /// generating the same sequence once more, so no copy of all vectors is kept.
    fn queries(kind: &VectorKind, entries: usize, count: usize) -> Vec<Vec<f32>> {
        let sources = query_sources(entries, count);
        let wanted: std::collections::HashSet<usize> = sources.iter().copied().collect();
        let mut rng = fastrand::Rng::with_seed(FILL_SEED);
        let mut found = HashMap::new();
        for i in 0..entries {
            let vector = kind.next(&mut rng);
            if wanted.contains(&i) {
                found.insert(i, vector);
            }
        }
        let mut rng = fastrand::Rng::with_seed(5);
        sources.iter().map(|i| near(&mut rng, &found[i])).collect()
    }

    /// Near queries through `lookup_semantic` at each search breadth: latency and recall@1
    /// against the exact nearest stored vector.
    fn search(cache: &Cache, config: &CacheConfig, truth: Truth, probe: &Probe) {
        let (queries, truth) = truth.finish();
        println!("| ef_search | lookup p50 (µs) | lookup p99 (µs) | recall@1 |");
        println!("|---|---|---|---|");
        for &ef in &probe.ef {
            cache.retune(&CacheConfig {
                hnsw_ef_search: ef,
                ..config.clone()
            });
            let mut times = Vec::with_capacity(queries.len());
            let mut right = 0;
            for (query, best) in queries.iter().zip(&truth) {
                let started = Instant::now();
                let found = cache
                    .lookup_semantic(&Hash32([0; 32]), query, "", 0.9, NEEDS)
                    .expect("lookup");
                times.push(started.elapsed().as_secs_f64() * 1e6);
                right += usize::from(found.hit.map(|hit| hit.id) == Some(*best));
            }
            println!(
                "| {ef} | {:.0} | {:.0} | {:.3} |",
                pct(&times, 0.5),
                pct(&times, 0.99),
                right as f64 / queries.len() as f64
            );
        }
        cache.retune(config);
    }

    fn config(dir: &Path, shape: Shape) -> CacheConfig {
        CacheConfig {
            dir: dir.to_path_buf(),
            hnsw_m: shape.m,
            hnsw_ef_construction: shape.ef_construction,
            ..CacheConfig::default()
        }
    }

    /// Runs the `open` phase in a new process and prints its row.
    fn child(dir: &Path, kind: &VectorKind, shape: Shape, label: &str) {
        let started = Instant::now();
        let mut child = phase("open", dir, kind, shape, 0)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        let to_hit = started.elapsed().as_secs_f64();
        child.wait().expect("wait");
        println!("| {label} | {to_hit:.1} | {} |", line.trim());
    }

    /// The child: open, look up the first stored vector, report.
    pub fn open_only(dir: &Path, kind: &VectorKind, shape: Shape) {
        // Where the start-up time goes: deja's own log lines, on stderr.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "deja=debug".into()),
            )
            .with_writer(std::io::stderr)
            .try_init();
        let rss = rss::rss_bytes();
        let started = Instant::now();
        let cache = Cache::open(&config(dir, shape), "bench", Arc::new(SystemClock)).expect("open");
        let open_s = started.elapsed().as_secs_f64();
        let query = kind.next(&mut fastrand::Rng::with_seed(7));
        let found = cache
            .lookup_semantic(&Hash32([0; 32]), &query, "", 0.99, NEEDS)
            .expect("lookup");
        let per_entry = rss::rss_bytes().saturating_sub(rss) as f64 / cache.indexed() as f64;
        let hit = if found.hit.is_some() {
            ""
        } else {
            " (lookup missed)"
        };
        println!("{open_s:.1}{hit} | {per_entry:.0}");
    }
}
