//! Miss throughput as one scope grows: every request a miss in ONE scope (same tenant, model
//! and system prompt; a distinct last user message each), from 0 to `--entries` stored
//! answers, with the semantic tier off and then on, in the same run.
//!
//! `cargo bench --bench miss_growth -- [--entries 100000] [--connections 16] [--dim 1536]
//! [--latent 32] [--only off|on] [--ef-search N] [--settle-secs 600]`
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

#[path = "common/vectors.rs"]
mod vectors;

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
use vectors::{VectorKind, pct};

const WINDOW: Duration = Duration::from_secs(1);
const BANDS: usize = 10;

struct Args {
    entries: usize,
    connections: usize,
    dim: usize,
    latent: usize,
    modes: Vec<bool>,
    /// `cache.hnsw_ef_search`; the shipped default when absent.
    ef_search: Option<usize>,
    settle_secs: usize,
}

fn main() {
    let args = parse();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let started = Instant::now();
    println!("# Miss throughput as one scope grows\n");
    println!("- command: `{}`", command());
    println!(
        "- {} misses in one scope, {} connections (closed loop), {}-d embedding-like vectors \
         (intrinsic dimension {}), fake upstream answering at once; ef_search {}; {cores} \
         CPUs, load average at start {}",
        args.entries,
        args.connections,
        args.dim,
        args.latent,
        args.ef_search
            .unwrap_or(deja::config::CacheConfig::default().hnsw_ef_search),
        load_average()
    );
    let servers = runtime("bench-srv", cores);
    let load = runtime("bench-gen", cores);
    let fake = servers.block_on(Fake::start(args.dim, args.latent));
    let mut runs = Vec::new();
    for &semantic in &args.modes {
        let dir = tempfile::tempdir().expect("tempdir");
        let deja = servers.block_on(start_deja(fake.addr, dir.path(), semantic, args.ef_search));
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

// === the fake upstream ===

/// Chat answers from memory; embedding answers built on the `fake-embed` thread.
struct Fake {
    addr: SocketAddr,
    embed_tid: u32,
    stop: tokio::sync::watch::Sender<bool>,
    embeddings: Arc<AtomicU64>,
}

/// One `/v1/embeddings` request's body (its inputs and encoding are read on the embedding
/// thread, so their cost counts as the fake's), and where its answer goes.
type EmbedJob = (Bytes, oneshot::Sender<Bytes>);

impl Fake {
    async fn start(dim: usize, latent: usize) -> Fake {
        let (jobs, inbox) = mpsc::channel::<EmbedJob>();
        let (tid_tx, tid_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("fake-embed".into())
            .spawn(move || embed_thread(&inbox, dim, latent, &tid_tx))
            .expect("embed thread");
        let embed_tid = tid_rx.recv().expect("embed thread id");
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let embeddings = Arc::new(AtomicU64::new(0));
        let counter = embeddings.clone();
        let chat = Bytes::from(chat_answer());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        let (jobs, chat, counter) = (jobs.clone(), chat.clone(), counter.clone());
                        tokio::spawn(async move {
                            let service = service_fn(move |request| {
                                answer(request, jobs.clone(), chat.clone(), counter.clone())
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    _ = stopped.changed() => break,
                }
            }
        });
        Fake {
            addr,
            embed_tid,
            stop,
            embeddings,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
    }

    /// CPU seconds the embedding thread has used.
    fn embed_cpu(&self) -> f64 {
        thread_cpu(self.embed_tid)
    }
}

async fn answer(
    request: Request<Incoming>,
    jobs: mpsc::Sender<EmbedJob>,
    chat: Bytes,
    embeddings: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_string();
    let post = request.method() == Method::POST;
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json = |status: StatusCode, bytes: Bytes| {
        let mut response = Response::new(Full::new(bytes));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        Ok(response)
    };
    match (post, path.as_str()) {
        (true, "/v1/chat/completions") => json(StatusCode::OK, chat),
        (true, "/v1/embeddings") => {
            embeddings.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            let _ = jobs.send((body, tx));
            json(StatusCode::OK, rx.await.unwrap_or_default())
        }
        _ => json(StatusCode::NOT_FOUND, Bytes::from_static(b"{}")),
    }
}

/// Builds embedding answers as the API does: one item per input (a string or an array of
/// them, as deja batches prompts), `encoding_format` float or base64 (little-endian f32s).
fn embed_thread(
    inbox: &mpsc::Receiver<EmbedJob>,
    dim: usize,
    latent: usize,
    tid: &mpsc::Sender<u32>,
) {
    let _ = tid.send(own_tid());
    let kind = VectorKind::new(dim, latent);
    while let Ok((request, reply)) = inbox.recv() {
        let request: serde_json::Value = serde_json::from_slice(&request).unwrap_or_default();
        let inputs: Vec<&str> = match &request["input"] {
            serde_json::Value::Array(items) => items.iter().filter_map(|v| v.as_str()).collect(),
            one => vec![one.as_str().unwrap_or_default()],
        };
        let base64 = request["encoding_format"] == "base64";
        let data: Vec<serde_json::Value> = inputs
            .iter()
            .enumerate()
            .map(|(index, input)| {
                let seed = u64::from_le_bytes(
                    blake3::hash(input.as_bytes()).as_bytes()[..8]
                        .try_into()
                        .expect("8 bytes"),
                );
                let vector = kind.next(&mut fastrand::Rng::with_seed(seed));
                let embedding = if base64 {
                    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    json!(vector)
                };
                json!({"object": "embedding", "index": index, "embedding": embedding})
            })
            .collect();
        let tokens: usize = inputs.iter().map(|i| i.split_whitespace().count()).sum();
        let body = json!({
            "object": "list",
            "data": data,
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        });
        let _ = reply.send(Bytes::from(body.to_string()));
    }
}

fn chat_answer() -> String {
    json!({
        "id": "chatcmpl-missgrowth000000000000000000",
        "object": "chat.completion",
        "created": 1_764_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "An answer of a few words.", "refusal": null},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 24, "completion_tokens": 7, "total_tokens": 31},
        "service_tier": "default",
        "system_fingerprint": "fp_bench0000"
    })
    .to_string()
}

// === deja ===

async fn start_deja(
    upstream: SocketAddr,
    dir: &std::path::Path,
    semantic: bool,
    ef_search: Option<usize>,
) -> RunningServer {
    let mut config = Config::default();
    if let Some(ef) = ef_search {
        config.cache.hnsw_ef_search = ef;
    }
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

// === the load ===

#[derive(Default, Clone)]
struct Window {
    /// Seconds since the run started, at the window's end.
    at: f64,
    seconds: f64,
    entries: u64,
    latencies_us: Vec<f64>,
    process_cpu: f64,
    embed_cpu: f64,
    pending: usize,
    deferred: usize,
}

struct Run {
    semantic: bool,
    windows: Vec<Window>,
    /// When each band of `entries / BANDS` misses was complete, and the embedding CPU then.
    bands: Vec<(Instant, f64)>,
    band_latencies: Vec<Vec<f64>>,
    embed_calls: u64,
    not_miss: u64,
}

struct Shared {
    issued: AtomicUsize,
    done: AtomicU64,
    not_miss: AtomicU64,
    window: Mutex<Vec<f64>>,
    band_latencies: Vec<Mutex<Vec<f64>>>,
    bands: Mutex<Vec<(Instant, f64)>>,
}

async fn drive(deja: &RunningServer, fake: &Fake, args: &Args, semantic: bool) -> Run {
    let band = (args.entries / BANDS).max(1);
    let shared = Arc::new(Shared {
        issued: AtomicUsize::new(0),
        done: AtomicU64::new(0),
        not_miss: AtomicU64::new(0),
        window: Mutex::new(Vec::new()),
        band_latencies: (0..BANDS).map(|_| Mutex::new(Vec::new())).collect(),
        bands: Mutex::new(Vec::new()),
    });
    let uri: http::Uri = format!("http://{}/v1/chat/completions", deja.addr)
        .parse()
        .expect("uri");
    let embed_calls_before = fake.embeddings.load(Ordering::Relaxed);
    let started = Instant::now();
    shared.bands.lock().push((started, fake.embed_cpu()));
    let embed_tid = fake.embed_tid;
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let (shared, uri, entries) = (shared.clone(), uri.clone(), args.entries);
        tasks.push(tokio::spawn(async move {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build(connector);
            loop {
                let n = shared.issued.fetch_add(1, Ordering::Relaxed);
                if n >= entries {
                    break;
                }
                let sent = Instant::now();
                let response = client.request(post(&uri, n)).await.expect("response");
                let status = response.status();
                let miss = response
                    .headers()
                    .get("x-deja-cache")
                    .is_some_and(|v| v == "miss");
                let _ = response.into_body().collect().await.expect("body");
                let us = sent.elapsed().as_secs_f64() * 1e6;
                assert_eq!(status, StatusCode::OK);
                if !miss {
                    shared.not_miss.fetch_add(1, Ordering::Relaxed);
                }
                shared.window.lock().push(us);
                shared.band_latencies[(n / band).min(BANDS - 1)]
                    .lock()
                    .push(us);
                let done = shared.done.fetch_add(1, Ordering::Relaxed) + 1;
                if done % band as u64 == 0 {
                    shared
                        .bands
                        .lock()
                        .push((Instant::now(), thread_cpu(embed_tid)));
                }
            }
        }));
    }
    let windows = sample(deja, fake, &shared, args.entries as u64, started).await;
    for task in tasks {
        task.await.expect("load task");
    }
    let band_latencies = shared
        .band_latencies
        .iter()
        .map(|l| std::mem::take(&mut *l.lock()))
        .collect();
    let bands = shared.bands.lock().clone();
    Run {
        semantic,
        windows,
        bands,
        band_latencies,
        embed_calls: fake.embeddings.load(Ordering::Relaxed) - embed_calls_before,
        not_miss: shared.not_miss.load(Ordering::Relaxed),
    }
}

/// One row per window until every request is answered.
async fn sample(
    deja: &RunningServer,
    fake: &Fake,
    shared: &Shared,
    entries: u64,
    started: Instant,
) -> Vec<Window> {
    let cache = deja.app.cache.clone().expect("cache");
    let mut windows = Vec::new();
    let (mut last, mut cpu, mut embed) = (started, process_cpu(), fake.embed_cpu());
    loop {
        tokio::time::sleep(WINDOW.saturating_sub(last.elapsed())).await;
        let now = Instant::now();
        let latencies = std::mem::take(&mut *shared.window.lock());
        let (cpu_now, embed_now) = (process_cpu(), fake.embed_cpu());
        let backlog = cache.index_backlog();
        let window = Window {
            at: (now - started).as_secs_f64(),
            seconds: (now - last).as_secs_f64(),
            entries: shared.done.load(Ordering::Relaxed),
            latencies_us: latencies,
            process_cpu: cpu_now - cpu,
            embed_cpu: embed_now - embed,
            pending: backlog.pending,
            deferred: backlog.deferred,
        };
        eprintln!(
            "{:>6.1} s  {:>7} entries  {:>6.0} misses/s  p99 {:>7.0} µs  cores {:.2}  \
             pending {} deferred {}",
            window.at,
            window.entries,
            window.latencies_us.len() as f64 / window.seconds,
            pct(&window.latencies_us, 0.99),
            window.process_cpu / window.seconds,
            window.pending,
            window.deferred,
        );
        let finished = window.entries >= entries;
        windows.push(window);
        (last, cpu, embed) = (now, cpu_now, embed_now);
        if finished {
            return windows;
        }
    }
}

fn post(uri: &http::Uri, n: usize) -> Request<Full<Bytes>> {
    let body = json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": format!("Question {n}: what should I know about topic {n}?")}
        ]
    });
    Request::post(uri.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, "Bearer sk-bench-tenant")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request")
}

// === reports ===

fn print_windows(run: &Run) {
    let name = if run.semantic { "on" } else { "off" };
    println!("\n## Semantic tier {name}: per 1-second window\n");
    println!(
        "{} requests answered, {} not a miss; {} embedding calls to the fake.\n",
        run.windows.last().map_or(0, |w| w.entries),
        run.not_miss,
        run.embed_calls
    );
    println!(
        "| t (s) | entries | misses/s | p50 (ms) | p99 (ms) | max (ms) | cores busy | fake embedding CPU (ms) | index pending | index deferred |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for w in &run.windows {
        println!(
            "| {:.0} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {} | {} |",
            w.at,
            w.entries,
            w.latencies_us.len() as f64 / w.seconds,
            pct(&w.latencies_us, 0.5) / 1e3,
            pct(&w.latencies_us, 0.99) / 1e3,
            pct(&w.latencies_us, 1.0) / 1e3,
            w.process_cpu / w.seconds,
            w.embed_cpu * 1e3,
            w.pending,
            w.deferred,
        );
    }
    let worst = run
        .windows
        .iter()
        .filter(|w| !w.latencies_us.is_empty())
        .map(|w| (pct(&w.latencies_us, 0.99), w.at))
        .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
    let over = run
        .windows
        .iter()
        .filter(|w| pct(&w.latencies_us, 0.99) > 50_000.0)
        .count();
    println!(
        "\nWorst window p99: {:.2} ms (at {:.0} s); windows with p99 > 50 ms: {over} of {}. Run: \
         {:.1} s.\n",
        worst.0 / 1e3,
        worst.1,
        run.windows.len(),
        run.windows.last().map_or(0.0, |w| w.at),
    );
}

/// Per size band: both rates, the embedding cost and the ratio, raw and adjusted.
fn print_bands(runs: &[Run], cores: usize) {
    let off = runs.iter().find(|r| !r.semantic);
    let on = runs.iter().find(|r| r.semantic);
    println!("## Per size band (a tenth of the run each)\n");
    println!(
        "Adjusted: the semantic-on rate with the fake's embedding CPU taken out (band time minus \
         embedding CPU / {cores} cores).\n"
    );
    println!(
        "| entries | off misses/s | off p99 (ms) | on misses/s | on p99 (ms) | fake embedding CPU per miss (µs) | on adjusted misses/s | ratio on/off | ratio adjusted |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let rate = |run: Option<&Run>, i: usize| -> Option<(f64, f64, f64)> {
        let run = run?;
        let (start, embed_start) = *run.bands.get(i)?;
        let (end, embed_end) = *run.bands.get(i + 1)?;
        let n = run.band_latencies.get(i)?.len() as f64;
        let seconds = (end - start).as_secs_f64();
        let embed = embed_end - embed_start;
        Some((
            n / seconds,
            n / (seconds - embed / cores as f64),
            embed / n * 1e6,
        ))
    };
    let p99 = |run: Option<&Run>, i: usize| {
        run.and_then(|r| r.band_latencies.get(i))
            .map_or(f64::NAN, |l| pct(l, 0.99) / 1e3)
    };
    let band_size = runs.first().map_or(0, |r| {
        r.band_latencies.iter().map(Vec::len).sum::<usize>() / BANDS
    });
    for i in 0..BANDS {
        let off_rate = rate(off, i);
        let on_rate = rate(on, i);
        let fmt =
            |v: Option<f64>, digits: usize| v.map_or("–".into(), |v| format!("{v:.digits$}"));
        println!(
            "| {}–{} | {} | {:.2} | {} | {:.2} | {} | {} | {} | {} |",
            i * band_size,
            (i + 1) * band_size,
            fmt(off_rate.map(|r| r.0), 0),
            p99(off, i),
            fmt(on_rate.map(|r| r.0), 0),
            p99(on, i),
            fmt(on_rate.map(|r| r.2), 0),
            fmt(on_rate.map(|r| r.1), 0),
            fmt(off_rate.zip(on_rate).map(|(f, n)| n.0 / f.0), 2),
            fmt(off_rate.zip(on_rate).map(|(f, n)| n.1 / f.0), 2),
        );
    }
}

// === machine ===

fn runtime(name: &str, workers: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The calling thread's id (`/proc/thread-self` links to `PID/task/TID`).
fn own_tid() -> u32 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds of one thread of this process (`schedstat`: nanoseconds on a CPU).
fn thread_cpu(tid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |ns| ns / 1e9)
}

/// CPU seconds of the whole process (user + system, in clock ticks of 1/100 s).
fn process_cpu() -> f64 {
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

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn command() -> String {
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

fn parse() -> Args {
    let mut args = Args {
        entries: 100_000,
        connections: 16,
        dim: 1536,
        latent: 32,
        modes: vec![false, true],
        ef_search: None,
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
