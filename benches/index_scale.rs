//! The vector index at scale: one scope of N unit vectors (N up to 10^6), measuring bulk
//! build rate, live inserts, search latency p50/p99, recall@1 against brute-force exact
//! search over the same data, and resident memory per entry.
//!
//! `cargo bench --bench index_scale -- SIZES DIMS [--queries 200] [--m 16[,32]]
//! [--efc 200[,100]] [--ef 64,128] [--inserts 200] [--latent 64]`, e.g. `-- 10000,100000
//! 384,1536`. Each `--ef` value (search breadth) is measured on the same build, one row each;
//! each `--m` and `--efc` value gets its own build. Every run stops by itself; its duration is
//! printed with the row. Vectors are uniformly random (HNSW's worst case) or, with
//! `--latent N`, embedding-like (`common/vectors.rs`). Queries are stored vectors plus noise
//! (cosine ≈ 0.96 to their source), which is what a cache hit looks like.
//!
//! Live inserts go through `VectorIndex::insert`, which returns at once (the response path's
//! cost, p50/p99 in µs); the index worker then adds them to the graph in the background, and
//! its rate is the number of inserts over the time until the index settles. The worker runs at
//! a lower priority (nice +10), so on a busy machine that rate falls; the bulk build rate
//! (`load`, a parallel insert on the calling thread) is the graph's own insert cost.
//!
//! Memory is the growth of VmRSS (/proc/self/status) from just before the index's input is
//! copied to just after the build, with the data set (the store's stand-in, which a restored
//! graph replays from) already allocated and not counted. Freed build buffers the allocator
//! keeps count, so the figure errs high.

#[path = "common/rss.rs"]
mod rss;
#[path = "common/vectors.rs"]
mod vectors;

use std::sync::Arc;
use std::time::Instant;

use deja::cache::index::{HnswParams, IndexSettings, VectorIndex, VectorSource};
use deja::cache::key::Hash32;
use vectors::{VectorKind, brute_force, near_queries, pct};

const K: usize = 4;

struct Args {
    sizes: Vec<usize>,
    dims: Vec<usize>,
    queries: usize,
    inserts: usize,
    ms: Vec<usize>,
    efcs: Vec<usize>,
    ef: Vec<usize>,
    latent: usize,
}

/// The stand-in for sled: every vector, row-major, id = row.
struct Data {
    dim: usize,
    rows: Vec<f32>,
}

impl VectorSource for Data {
    fn vector(&self, id: u64) -> Option<Vec<f32>> {
        let start = usize::try_from(id).ok()? * self.dim;
        self.rows.get(start..start + self.dim).map(<[f32]>::to_vec)
    }
}

fn main() {
    let args = parse();
    println!(
        "one scope, {} near queries, k={K}, {}",
        args.queries,
        VectorKind::new(1, args.latent).describe()
    );
    println!(
        "| entries | dim | M | ef_construction | build (inserts/s) | RSS/entry (bytes) | ef_search | search p50 (µs) | search p99 (µs) | recall@1 | insert call p50 (µs) | insert call p99 (µs) | background inserts/s | run (s) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &dim in &args.dims {
        for &n in &args.sizes {
            for &m in &args.ms {
                for &ef_construction in &args.efcs {
                    let params = HnswParams {
                        m,
                        ef_construction,
                        ..HnswParams::default()
                    };
                    run(&args, n, dim, params);
                }
            }
        }
    }
}

fn run(args: &Args, n: usize, dim: usize, params: HnswParams) {
    let started_run = Instant::now();
    let mut rng = fastrand::Rng::with_seed((n * 31 + dim) as u64);
    let kind = VectorKind::new(dim, args.latent);
    let mut rows = Vec::with_capacity((n + args.inserts) * dim);
    for _ in 0..n + args.inserts {
        rows.extend(kind.next(&mut rng));
    }
    let data = Arc::new(Data { dim, rows });
    let queries = near_queries(&mut rng, &data.rows[..n * dim], dim, args.queries);
    let truth = brute_force(&data.rows[..n * dim], dim, &queries);

    let index = VectorIndex::new(
        IndexSettings {
            params,
            ..IndexSettings::default()
        },
        data.clone(),
    );
    let scope = Hash32([1; 32]);
    // Measured before the bulk copy, which the index consumes (and frees, or keeps).
    let rss_before = rss::rss_bytes();
    let bulk: Vec<(u64, Vec<f32>)> = (0..n)
        .map(|id| (id as u64, data.rows[id * dim..][..dim].to_vec()))
        .collect();
    let started = Instant::now();
    index.load(scope, bulk);
    let build_rate = n as f64 / started.elapsed().as_secs_f64();
    let per_entry = rss::rss_bytes().saturating_sub(rss_before) as f64 / n as f64;

    let mut rows = Vec::new();
    for &ef in &args.ef {
        index.set_ef_search(ef);
        let mut times = Vec::with_capacity(queries.len());
        let mut right = 0;
        for (query, best) in queries.iter().zip(&truth) {
            let started = Instant::now();
            let found = index.search(scope, query, K);
            times.push(started.elapsed().as_secs_f64() * 1e6);
            right += usize::from(found.first().map(|c| c.id) == Some(*best as u64));
        }
        rows.push(format!(
            "| {n} | {dim} | {} | {} | {build_rate:.0} | {per_entry:.0} | {ef} | {:.0} | {:.0} | {:.3} |",
            params.m,
            params.ef_construction,
            pct(&times, 0.5),
            pct(&times, 0.99),
            right as f64 / queries.len() as f64,
        ));
    }
    let mut inserts = Vec::with_capacity(args.inserts);
    let started = Instant::now();
    for id in n..n + args.inserts {
        let call = Instant::now();
        index.insert(scope, id as u64, &data.rows[id * dim..][..dim]);
        inserts.push(call.elapsed().as_secs_f64() * 1e6);
    }
    assert!(
        index.settle(std::time::Duration::from_secs(3600)),
        "settled"
    );
    let background = args.inserts as f64 / started.elapsed().as_secs_f64();
    for row in rows {
        println!(
            "{row} {:.1} | {:.1} | {background:.0} | {:.0} |",
            pct(&inserts, 0.5),
            pct(&inserts, 0.99),
            started_run.elapsed().as_secs_f64(),
        );
    }
}

fn parse() -> Args {
    let mut args = Args {
        sizes: vec![10_000],
        dims: vec![384],
        queries: 200,
        inserts: 200,
        ms: vec![HnswParams::default().m],
        efcs: vec![HnswParams::default().ef_construction],
        ef: vec![HnswParams::default().ef_search],
        latent: 0,
    };
    let list = |v: &str| -> Vec<usize> { v.split(',').filter_map(|x| x.parse().ok()).collect() };
    let mut positional = 0;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().and_then(|v| v.parse().ok()).expect("a number");
        match arg.as_str() {
            "--queries" => args.queries = value(),
            "--inserts" => args.inserts = value(),
            "--m" => args.ms = list(&it.next().expect("a list")),
            "--efc" => args.efcs = list(&it.next().expect("a list")),
            "--latent" => args.latent = value(),
            "--ef" => args.ef = list(&it.next().expect("a list")),
            "--bench" => {}
            other if positional == 0 => {
                args.sizes = list(other);
                positional += 1;
            }
            other => {
                args.dims = list(other);
                positional += 1;
            }
        }
    }
    args
}
