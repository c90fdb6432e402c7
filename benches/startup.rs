//! Start-up cost: how long `Cache::open` (open sled + rebuild the vector index) takes for N
//! stored entries, for a few ways of spreading them over scopes.
//!
//! `cargo bench --bench startup -- [ENTRIES] [DIM]` (defaults 10000 and 1536). Prints a table;
//! the baseline in the same run opens the same store and reads every vector without building
//! an index (sled alone), so the index rebuild's share is visible.

use std::sync::Arc;
use std::time::Instant;

use deja::cache::Cache;
use deja::cache::entry::Entry;
use deja::cache::index::normalize;
use deja::cache::store::Store;
use deja::clock::SystemClock;
use deja::config::CacheConfig;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let entries: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let dim: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1536);
    println!("start-up with {entries} entries, {dim}-d vectors");
    println!(
        "| scopes | entries/scope | sled open + read vectors (ms) | Cache::open incl. index rebuild (ms) |"
    );
    println!("|---|---|---|---|");
    for per_scope in [1, 10, 100, entries] {
        let scopes = entries / per_scope;
        let dir = tempfile::tempdir().expect("tempdir");
        fill(dir.path(), entries, per_scope, dim);
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

fn fill(dir: &std::path::Path, entries: usize, per_scope: usize, dim: usize) {
    let store = Store::open(dir).expect("store");
    store.set_meta("embedder", "bench").expect("meta");
    let mut rng = fastrand::Rng::with_seed(7);
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
        let mut vector: Vec<f32> = (0..dim).map(|_| rng.f32() - 0.5).collect();
        normalize(&mut vector);
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
        store.insert(&entry, Some(&vector)).expect("insert");
    }
    store.flush().expect("flush");
}
