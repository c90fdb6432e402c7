//! Throughput at the capacity cap: inserts (each evicting the least recently used entry) and
//! exact hits (each moving the entry to the recent end), against the same cache without a
//! cap in the same run.
//!
//! `cargo bench --bench capacity -- [CAP] [DIM]` (defaults 20000 and 384). Each entry is its
//! own scope (one conversation each), so no graph build is timed; answers are ~700 bytes.
//! The two caches are measured in alternating rounds, so load from other jobs on the machine
//! hits both alike.

use std::sync::Arc;
use std::time::Instant;

use deja::cache::index::normalize;
use deja::cache::key::Hash32;
use deja::cache::{Cache, NewEntry, Requirements};
use deja::clock::SystemClock;
use deja::config::CacheConfig;

const ROUNDS: usize = 7;
const INSERTS: usize = 1000;
const HITS: usize = 10_000;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let cap = args.first().copied().unwrap_or(20_000);
    let dim = args.get(1).copied().unwrap_or(384);
    println!(
        "cap {cap} entries, {dim}-d vectors; {ROUNDS} alternating rounds of {INSERTS} inserts \
         and {HITS} exact hits per cache; medians"
    );
    let dirs = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let caches: Vec<Cache> = dirs
        .iter()
        .zip([0, cap as u64])
        .map(|(dir, max_entries)| {
            let config = CacheConfig {
                dir: dir.path().to_path_buf(),
                max_entries,
                ..CacheConfig::default()
            };
            let cache = Cache::open(&config, "bench", Arc::new(SystemClock)).expect("open");
            let mut rng = fastrand::Rng::with_seed(1);
            for i in 0..cap {
                cache.insert(entry(i, dim, &mut rng)).expect("fill");
            }
            cache
        })
        .collect();
    let needs = Requirements {
        max_age_ms: None,
        needs_usage: false,
    };
    let mut rng = fastrand::Rng::with_seed(2);
    let mut inserts = [Vec::new(), Vec::new()];
    let mut hits = [Vec::new(), Vec::new()];
    let mut next = cap;
    for _ in 0..ROUNDS {
        for (c, cache) in caches.iter().enumerate() {
            let started = Instant::now();
            for i in next..next + INSERTS {
                cache.insert(entry(i, dim, &mut rng)).expect("insert");
            }
            inserts[c].push(INSERTS as f64 / started.elapsed().as_secs_f64());
        }
        next += INSERTS;
        for (c, cache) in caches.iter().enumerate() {
            let started = Instant::now();
            for _ in 0..HITS {
                // Keys stored this round: recent in both caches, so never evicted yet.
                let i = next - INSERTS + rng.usize(..INSERTS);
                let hit = cache.lookup_exact(&key(i), needs).expect("lookup");
                assert!(hit.is_some());
            }
            hits[c].push(HITS as f64 / started.elapsed().as_secs_f64());
        }
    }
    println!("| cache | inserts/s | exact hits/s | entries after |");
    println!("|---|---|---|---|");
    for (c, label) in ["no cap", "at the cap"].iter().enumerate() {
        println!(
            "| {label} | {:.0} | {:.0} | {} |",
            median(&inserts[c]),
            median(&hits[c]),
            caches[c].entries()
        );
    }
    println!(
        "capped / uncapped: inserts {:.2}, hits {:.2}",
        median(&inserts[1]) / median(&inserts[0]),
        median(&hits[1]) / median(&hits[0])
    );
}

fn median(rates: &[f64]) -> f64 {
    let mut sorted = rates.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn key(i: usize) -> Hash32 {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&(i as u64).to_be_bytes());
    Hash32(key)
}

fn entry(i: usize, dim: usize, rng: &mut fastrand::Rng) -> NewEntry {
    let mut vector: Vec<f32> = (0..dim).map(|_| rng.f32() - 0.5).collect();
    normalize(&mut vector);
    NewEntry {
        scope: Hash32(blake3::hash(&(i as u64).to_be_bytes()).into()),
        exact: key(i),
        model: "gpt-4o-mini".into(),
        response: format!(
            r#"{{"choices":[{{"message":{{"content":"{}"}}}}]}}"#,
            "x".repeat(650)
        ),
        has_usage: true,
        vector: Some(vector),
        prompt: None,
        owner: Default::default(),
    }
}
