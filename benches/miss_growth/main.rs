//! Miss throughput as one scope grows: every request a miss in ONE scope (same tenant, model
//! and system prompt; a distinct last user message each), from 0 to `--entries` stored
//! answers, with the semantic tier off and then on, in the same run.
//!
//! `cargo bench --bench miss_growth -- [--entries 100000] [--connections 16] [--dim 1536]
//! [--latent 32] [--only off|on] [--ef-search N] [--m N] [--efc N] [--settle-secs 600]`
//!
//! A fake upstream answers at once: a fixed chat completion, and from `/v1/embeddings` an
//! embedding-like vector of `--dim` dimensions (see `common/vectors.rs`; seeded by the input
//! text, so a repeat gets the same vector). The fake builds each embedding answer (vector and
//! JSON) on a thread of its own whose CPU time is read per window: that is the embedding cost
//! a real API would bear on its own machines, reported separately and taken out in the
//! "adjusted" rate: the run is CPU-bound on a shared machine, so removing X CPU-seconds frees
//! X / cores seconds of wall time. deja's own side of the embedding (the HTTP call, parsing
//! 1536 numbers) stays in.
//!
//! Closed loop over `--connections` keep-alive connections (HTTP/1.1, loopback). Per
//! 1-second window: misses/s, p50/p99/max latency, CPU of the whole process (cores busy), the
//! fake's embedding CPU, and with the semantic tier on the index backlog (vectors waiting for
//! their graph, searched exactly meanwhile, and deferred ones waiting in the store only).
//! Per tenth of the run (size band): both rates and their ratio. After the semantic run, the
//! time the index worker needed to take in what was left. Figures are printed, never asserted;
//! every response is checked for status 200 and `x-deja-cache: miss`.

#[path = "../common/vectors.rs"]
mod vectors;

mod fake;
mod load;
mod machine;
mod report;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

use deja::clock::SystemClock;
use deja::config::Config;
use deja::server::RunningServer;
use fake::*;
use load::*;
use machine::*;
use report::*;
use vectors::{VectorKind, pct};

pub(crate) const WINDOW: Duration = Duration::from_secs(1);
pub(crate) const BANDS: usize = 10;

pub(crate) struct Args {
    pub(crate) entries: usize,
    pub(crate) connections: usize,
    pub(crate) dim: usize,
    pub(crate) latent: usize,
    pub(crate) modes: Vec<bool>,
    /// `cache.hnsw_ef_search`, `hnsw_m` and `hnsw_ef_construction`; the shipped defaults
    /// when absent.
    pub(crate) ef_search: Option<usize>,
    pub(crate) m: Option<usize>,
    pub(crate) ef_construction: Option<usize>,
    pub(crate) settle_secs: usize,
}

fn main() {
    let args = parse();
    let defaults = cache_config(&args);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let started = Instant::now();
    println!("# Miss throughput as one scope grows\n");
    println!("- command: `{}`", command());
    println!(
        "- {} misses in one scope, {} connections (closed loop), {}-d embedding-like vectors \
         (intrinsic dimension {}), fake upstream answering at once; HNSW M {}, \
         ef_construction {}, ef_search {}; {cores} CPUs, load average at start {}",
        args.entries,
        args.connections,
        args.dim,
        args.latent,
        defaults.hnsw_m,
        defaults.hnsw_ef_construction,
        defaults.hnsw_ef_search,
        load_average()
    );
    let servers = runtime("bench-srv", cores);
    let load = runtime("bench-gen", cores);
    let fake = servers.block_on(Fake::start(args.dim, args.latent));
    let mut runs = Vec::new();
    for &semantic in &args.modes {
        let dir = tempfile::tempdir().expect("tempdir");
        let deja = servers.block_on(start_deja(fake.addr, dir.path(), semantic, &args));
        let run = load.block_on(drive(&deja, &fake, &args, semantic));
        let settle = semantic.then(|| {
            let cache = deja.app.cache.clone().expect("cache");
            let started = Instant::now();
            let settled = cache.settle_index(Duration::from_secs(args.settle_secs as u64));
            let indexed = cache.indexed();
            // Every miss must have been embedded and indexed, or the "on" run measured
            // something else (an embedding answer deja could not read skips the semantic tier).
            assert_eq!(
                indexed, args.entries,
                "every stored entry has its vector in the index"
            );
            (
                started.elapsed(),
                settled,
                cache.index_deferred_total(),
                indexed,
            )
        });
        servers.block_on(deja.shutdown());
        drop(dir);
        print_windows(&run);
        if let Some((took, settled, deferred, indexed)) = settle {
            println!(
                "After the last request the index worker took {:.1} s to put every vector \
                 into the graph (settled: {settled}); {deferred} vectors had waited in the \
                 store only (deferred) during the run; {indexed} vectors indexed.\n",
                took.as_secs_f64()
            );
        }
        runs.push(run);
    }
    print_bands(&runs, cores);
    servers.block_on(fake.stop());
    load.shutdown_timeout(Duration::from_secs(5));
    servers.shutdown_timeout(Duration::from_secs(5));
    println!(
        "\nwhole run: {:.0} s; load average at the end: {}",
        started.elapsed().as_secs_f64(),
        load_average()
    );
}

// === deja ===

/// The cache's defaults with the HNSW parameters the command line sets.
fn cache_config(args: &Args) -> deja::config::CacheConfig {
    let mut cache = deja::config::CacheConfig::default();
    cache.hnsw_ef_search = args.ef_search.unwrap_or(cache.hnsw_ef_search);
    cache.hnsw_m = args.m.unwrap_or(cache.hnsw_m);
    cache.hnsw_ef_construction = args.ef_construction.unwrap_or(cache.hnsw_ef_construction);
    cache
}

async fn start_deja(
    upstream: SocketAddr,
    dir: &std::path::Path,
    semantic: bool,
    args: &Args,
) -> RunningServer {
    let mut config = Config {
        cache: cache_config(args),
        ..Config::default()
    };
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.upstream.base_url = format!("http://{upstream}/v1");
    config.cache.dir = dir.join("cache");
    config.cache.semantic = semantic;
    config.validate().expect("valid config");
    let deja = deja::server::start(config, Arc::new(SystemClock))
        .await
        .expect("deja starts");
    assert!(deja.app.cache.is_some(), "deja opened its cache");
    deja
}
