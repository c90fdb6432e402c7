//! The vector index at scale: one scope of N unit vectors (N up to 10^6), measuring build rate,
//! resident memory per entry, search latency p50/p99, recall@1 against brute-force exact search
//! over the same data, and live insert latency. With `--baseline`, the f32 hnsw_rs graph the
//! index used before its int8 codes is built from the same vectors in the same process and
//! measured alongside (same parameters, searches in alternating rounds), and the ratios are
//! printed.
//!
//! `cargo bench --bench index_scale -- SIZES DIMS [--queries 200] [--m 16[,32]]
//! [--efc 100[,200]] [--ef 64,128] [--inserts 200] [--latent 32] [--baseline] [--sled]
//! [--min-entries 4096]`, e.g.
//! `-- 100000 1536 --latent 32 --baseline --sled`. Each `--ef` value (search breadth) is
//! measured on the same build, one row each; each `--m` and `--efc` value gets its own build. Queries are stored vectors plus noise
//! (cosine ≈ 0.96 to their source), which is what a cache hit looks like. `--latent N` makes
//! embedding-like vectors of intrinsic dimension N (`common/vectors.rs`); without it they are
//! uniform (HNSW's worst case). `--sled` keeps the f32 vectors the index re-scores from in a
//! sled tree, encoded as the store encodes them, as in deja (else in memory).
//!
//! The int8 index is built as deja builds it: `VectorIndex::insert` returns at once (the
//! response path's cost: "insert call", µs) and the index worker adds the vectors to the graph
//! in the background; the build rate is entries over the time until the index settles. The
//! worker runs at nice +19, so on a busy machine that rate falls. hnsw_rs's figures are its
//! own parallel insert on the calling thread.
//!
//! Memory is the growth of VmRSS over each build, with the data set (and sled) already
//! allocated and not counted, per entry; and the growth over the second half of the build per
//! entry of that half (what one more entry costs). The int8 index is built first, by the live insert path (flat,
//! then a graph at `hnsw_min_entries`), so the baseline cannot reuse memory it freed; the
//! rows it copies when its flat scan turns into a graph (4096 × dim × 4 bytes) are freed but
//! stay counted, so its figure errs high.

#[path = "common/rss.rs"]
mod rss;
#[path = "common/vectors.rs"]
mod vectors;

use std::sync::Arc;
use std::time::Instant;

use deja::cache::index::{HnswParams, IndexSettings, VectorIndex, VectorSource};
use deja::cache::key::Hash32;
use hnsw_rs::prelude::{DistDot, Hnsw};
use vectors::{VectorKind, brute_force, near_queries, pct};

const K: usize = 4;
/// What the f32 graph fetched beyond `k` (its over-fetch past dead ids).
const BASELINE_OVERFETCH: usize = 10;
/// Search rounds, alternating between the two indexes.
const ROUNDS: usize = 3;

struct Args {
    sizes: Vec<usize>,
    dims: Vec<usize>,
    queries: usize,
    inserts: usize,
    ms: Vec<usize>,
    efcs: Vec<usize>,
    ef: Vec<usize>,
    latent: usize,
    baseline: bool,
    sled: bool,
    /// `cache.hnsw_min_entries`: below it a scope is scanned (flat), from it a graph.
    min_entries: usize,
}

/// The store's stand-in in memory: every vector, row-major, id = row.
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

/// The vectors in sled, keyed and encoded as `cache::store` keeps them (scope ‖ f32 LE).
struct Sled {
    _dir: tempfile::TempDir,
    tree: sled::Tree,
}

impl Sled {
    fn fill(data: &Data, n: usize) -> Sled {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new()
            .path(dir.path())
            .flush_every_ms(Some(200))
            .open()
            .expect("sled");
        let tree = db.open_tree("vectors").expect("tree");
        for id in 0..n {
            let mut bytes = vec![1u8; 32];
            for x in &data.rows[id * data.dim..][..data.dim] {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
            tree.insert((id as u64).to_be_bytes(), bytes)
                .expect("insert");
        }
        tree.flush().expect("flush");
        Sled { _dir: dir, tree }
    }
}

impl VectorSource for Sled {
    fn vector(&self, id: u64) -> Option<Vec<f32>> {
        let bytes = self.tree.get(id.to_be_bytes()).ok()??;
        Some(
            bytes
                .get(32..)?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }
}

fn main() {
    let args = parse();
    println!(
        "one scope, {} near queries, k={K}, re-scoring from {}, {ROUNDS} search rounds",
        args.queries,
        if args.sled { "sled" } else { "memory" }
    );
    println!(
        "| vectors | entries | dim | index | M | ef_construction | build (inserts/s) | RSS/entry (bytes) | RSS/entry, 2nd half (bytes) | ef_search | search p50 (µs) | search p99 (µs) | recall@1 | insert call p50 (µs) | insert call p99 (µs) | graph inserts/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
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

/// One index's figures.
#[derive(Default)]
struct Figures {
    build_rate: f64,
    rss_per_entry: f64,
    /// RSS growth over the second half of the build, per entry: the cost of one more entry,
    /// without the one-off costs of the start (the flat scan's copy into the graph).
    rss_marginal: f64,
    /// Per ef: search times (µs) and correct top-1 answers.
    searches: Vec<(Vec<f64>, usize)>,
    /// Insert call times (µs), and graph inserts per second.
    inserts: Vec<f64>,
    graph_rate: f64,
}

fn run(args: &Args, n: usize, dim: usize, params: HnswParams) {
    let started_run = Instant::now();
    let kind = VectorKind::new(dim, args.latent);
    let mut rng = fastrand::Rng::with_seed((n * 31 + dim) as u64);
    let mut rows = Vec::with_capacity((n + args.inserts) * dim);
    for _ in 0..n + args.inserts {
        rows.extend(kind.next(&mut rng));
    }
    let data = Arc::new(Data { dim, rows });
    let queries = near_queries(&mut rng, &data.rows[..n * dim], dim, args.queries);
    let truth = brute_force(&data.rows[..n * dim], dim, &queries);
    let source: Arc<dyn VectorSource> = if args.sled {
        Arc::new(Sled::fill(&data, n + args.inserts))
    } else {
        data.clone()
    };
    let row = |id: usize| &data.rows[id * dim..][..dim];

    let index = VectorIndex::new(
        IndexSettings {
            params,
            hnsw_min_entries: args.min_entries,
            ..IndexSettings::default()
        },
        source.clone(),
    );
    let scope = Hash32([1; 32]);
    let mut compact = Figures::default();
    let rss_before = rss::rss_bytes();
    let mut rss_half = 0;
    let started = Instant::now();
    for id in 0..n {
        if id == n / 2 {
            settle(&index);
            rss_half = rss::rss_bytes();
        }
        index.insert(scope, id as u64, row(id));
    }
    settle(&index);
    compact.build_rate = n as f64 / started.elapsed().as_secs_f64();
    let rss_after = rss::rss_bytes();
    compact.rss_per_entry = rss_after.saturating_sub(rss_before) as f64 / n as f64;
    compact.rss_marginal = rss_after.saturating_sub(rss_half) as f64 / (n - n / 2) as f64;

    let mut f32_figures = Figures::default();
    let baseline = args.baseline.then(|| {
        let rss_before = rss::rss_bytes();
        let hnsw = Hnsw::<f32, DistDot>::new(params.m, n, 16, params.ef_construction, DistDot);
        let slices: Vec<(&[f32], usize)> = (0..n).map(|id| (row(id), id)).collect();
        let started = Instant::now();
        let (first, second) = (slices[..n / 2].to_vec(), slices[n / 2..].to_vec());
        hnsw.parallel_insert_slice(&first);
        let rss_half = rss::rss_bytes();
        hnsw.parallel_insert_slice(&second);
        f32_figures.build_rate = n as f64 / started.elapsed().as_secs_f64();
        drop((slices, first, second));
        let rss_after = rss::rss_bytes();
        f32_figures.rss_per_entry = rss_after.saturating_sub(rss_before) as f64 / n as f64;
        f32_figures.rss_marginal = rss_after.saturating_sub(rss_half) as f64 / (n - n / 2) as f64;
        hnsw
    });

    for &ef in &args.ef {
        index.set_ef_search(ef);
        let mut times = [Vec::new(), Vec::new()];
        let mut right = [0, 0];
        for round in 0..ROUNDS {
            for (query, &best) in queries.iter().zip(&truth) {
                let started = Instant::now();
                let found = index.search(scope, query, K);
                times[0].push(started.elapsed().as_secs_f64() * 1e6);
                if round == 0 {
                    right[0] += usize::from(found.first().map(|c| c.id) == Some(best as u64));
                }
            }
            let Some(hnsw) = &baseline else { continue };
            for (query, &best) in queries.iter().zip(&truth) {
                let fetch = K + BASELINE_OVERFETCH;
                let started = Instant::now();
                let found = hnsw.search(query, fetch, ef.max(fetch));
                times[1].push(started.elapsed().as_secs_f64() * 1e6);
                if round == 0 {
                    right[1] += usize::from(found.first().map(|c| c.d_id) == Some(best));
                }
            }
        }
        let [compact_times, f32_times] = times;
        compact.searches.push((compact_times, right[0]));
        f32_figures.searches.push((f32_times, right[1]));
    }

    let started = Instant::now();
    for id in n..n + args.inserts {
        let call = Instant::now();
        index.insert(scope, id as u64, row(id));
        compact.inserts.push(call.elapsed().as_secs_f64() * 1e6);
    }
    settle(&index);
    compact.graph_rate = args.inserts as f64 / started.elapsed().as_secs_f64();
    if let Some(hnsw) = &baseline {
        for id in n..n + args.inserts {
            let call = Instant::now();
            hnsw.insert_slice((row(id), id));
            f32_figures.inserts.push(call.elapsed().as_secs_f64() * 1e6);
        }
        let mean = f32_figures.inserts.iter().sum::<f64>() / args.inserts.max(1) as f64;
        f32_figures.graph_rate = 1e6 / mean;
    }

    let vectors = match args.latent {
        0 => "uniform".to_string(),
        latent => format!("latent {latent}"),
    };
    let mut labelled = vec![("int8 graph", &compact)];
    if baseline.is_some() {
        labelled.push(("f32 hnsw_rs", &f32_figures));
    }
    for (label, figures) in &labelled {
        for (&ef, (times, right)) in args.ef.iter().zip(&figures.searches) {
            println!(
                "| {vectors} | {n} | {dim} | {label} | {} | {} | {:.0} | {:.0} | {:.0} | {ef} | {:.0} | {:.0} | {:.3} | {:.1} | {:.1} | {:.0} |",
                params.m,
                params.ef_construction,
                figures.build_rate,
                figures.rss_per_entry,
                figures.rss_marginal,
                pct(times, 0.5),
                pct(times, 0.99),
                *right as f64 / queries.len() as f64,
                pct(&figures.inserts, 0.5),
                pct(&figures.inserts, 0.99),
                figures.graph_rate,
            );
        }
    }
    if baseline.is_some() {
        for (&ef, ((c, _), (b, _))) in args
            .ef
            .iter()
            .zip(compact.searches.iter().zip(&f32_figures.searches))
        {
            println!(
                "int8 / f32 at {n} × {dim}, M {}, ef_construction {}, ef {ef}: RSS/entry {:.2}, search p50 {:.2}, p99 {:.2}, build rate {:.2}, graph inserts {:.2}",
                params.m,
                params.ef_construction,
                compact.rss_per_entry / f32_figures.rss_per_entry,
                pct(c, 0.5) / pct(b, 0.5),
                pct(c, 0.99) / pct(b, 0.99),
                compact.build_rate / f32_figures.build_rate,
                compact.graph_rate / f32_figures.graph_rate,
            );
        }
    }
    // What one search's exact re-scoring reads cost: K + 4 vectors from the source.
    let mut reads = Vec::new();
    for i in 0..queries.len() {
        let started = Instant::now();
        for j in 0..K + 4 {
            std::hint::black_box(source.vector(((i * 7919 + j * 104_729) % n) as u64));
        }
        reads.push(started.elapsed().as_secs_f64() * 1e6);
    }
    println!(
        "re-score reads ({} vectors from {}): p50 {:.1} µs, p99 {:.1} µs per search; run {:.0} s",
        K + 4,
        if args.sled { "sled" } else { "memory" },
        pct(&reads, 0.5),
        pct(&reads, 0.99),
        started_run.elapsed().as_secs_f64()
    );
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
        baseline: false,
        sled: false,
        min_entries: IndexSettings::default().hnsw_min_entries,
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
            "--baseline" => args.baseline = true,
            "--sled" => args.sled = true,
            "--min-entries" => args.min_entries = value(),
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

/// Waits for the index worker to put every vector into the graph.
fn settle(index: &VectorIndex) {
    assert!(
        index.settle(std::time::Duration::from_secs(3600)),
        "the index settled"
    );
}
