//! Vector index: exact (flat) search against HNSW within one scope, to choose
//! `cache.hnsw_min_entries`, plus HNSW build rate and recall@1 against the flat search.
//!
//! `cargo bench --bench index -- [DIM]` (default 1536). Random unit vectors; queries are stored
//! vectors plus noise (cosine ≈ 0.96 to their source), which is what a cache hit looks like.
//! The flat search is the baseline measured in the same run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use deja::cache::index::{IndexSettings, VectorIndex, VectorSource, normalize};
use deja::cache::key::Hash32;

const QUERIES: usize = 200;

/// The exact vectors the index re-scores from (sled, in deja).
struct Rows(HashMap<u64, Vec<f32>>);

impl VectorSource for Rows {
    fn vector(&self, id: u64) -> Option<Vec<f32>> {
        self.0.get(&id).cloned()
    }
}

fn main() {
    let dim: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1536);
    println!("one scope, {dim}-d vectors, {QUERIES} near queries");
    println!(
        "| entries | flat p50 (µs) | flat p99 (µs) | hnsw build (inserts/s) | hnsw p50 (µs) | hnsw p99 (µs) | hnsw recall@1 vs flat |"
    );
    println!("|---|---|---|---|---|---|---|");
    let scope = Hash32([1; 32]);
    for entries in [512, 2048, 8192] {
        let mut rng = fastrand::Rng::with_seed(entries as u64);
        let rows: Vec<(u64, Vec<f32>)> = (0..entries as u64)
            .map(|id| (id, unit(&mut rng, dim)))
            .collect();
        let queries: Vec<Vec<f32>> = (0..QUERIES)
            .map(|i| {
                let source = &rows[(i * 7919) % entries].1;
                let mut q: Vec<f32> = source
                    .iter()
                    .map(|x| x + (rng.f32() - 0.5) * 0.3 / (dim as f32).sqrt() * 2.0)
                    .collect();
                normalize(&mut q);
                q
            })
            .collect();

        let source = Arc::new(Rows(rows.iter().cloned().collect()));
        let flat = VectorIndex::new(
            IndexSettings {
                hnsw_min_entries: usize::MAX,
                ..IndexSettings::default()
            },
            source.clone(),
        );
        flat.load(scope, rows.clone());
        let (flat_times, flat_ids) = run(&flat, scope, &queries);

        let started = Instant::now();
        let graph = VectorIndex::new(
            IndexSettings {
                hnsw_min_entries: 1,
                ..IndexSettings::default()
            },
            source,
        );
        graph.load(scope, rows);
        let build_rate = entries as f64 / started.elapsed().as_secs_f64();
        let (graph_times, graph_ids) = run(&graph, scope, &queries);
        let recall = flat_ids
            .iter()
            .zip(&graph_ids)
            .filter(|(a, b)| a == b)
            .count() as f64
            / QUERIES as f64;
        println!(
            "| {entries} | {:.0} | {:.0} | {build_rate:.0} | {:.0} | {:.0} | {recall:.3} |",
            pct(&flat_times, 0.5),
            pct(&flat_times, 0.99),
            pct(&graph_times, 0.5),
            pct(&graph_times, 0.99),
        );
    }
}

fn run(index: &VectorIndex, scope: Hash32, queries: &[Vec<f32>]) -> (Vec<f64>, Vec<u64>) {
    let mut times = Vec::with_capacity(queries.len());
    let mut ids = Vec::with_capacity(queries.len());
    for query in queries {
        let started = Instant::now();
        let found = index.search(scope, query, 4);
        times.push(started.elapsed().as_secs_f64() * 1e6);
        ids.push(found.first().map_or(u64::MAX, |c| c.id));
    }
    (times, ids)
}

fn pct(times: &[f64], q: f64) -> f64 {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn unit(rng: &mut fastrand::Rng, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim).map(|_| rng.f32() - 0.5).collect();
    normalize(&mut v);
    v
}
