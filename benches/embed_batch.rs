//! Batched API embeddings: how many `/v1/embeddings` calls a semantic-tier miss costs, and what
//! the batching wait adds to a miss, at concurrency 1, 16 and 64.
//!
//! Two deja instances in one process, each in front of its own fake OpenAI upstream (chat
//! answers at once; embeddings are 1536-d unit vectors, answered at once or after a fixed
//! latency per call): "batched" runs the defaults (`embedding.max_batch` 32,
//! `embedding.batch_wait_ms` 2), "unbatched" sends every prompt in a call of its own
//! (`max_batch` 1, `batch_wait_ms` 0). Closed loop, every request a miss with its own
//! namespace (so the index stays small and only the embedding path differs); the two are
//! interleaved A B B A in each cell so a drift of the shared machine affects both alike.
//!
//! `cargo bench --bench embed_batch -- [--quick]`. Prints markdown; nothing is asserted but
//! correctness (status 200, `x-deja-cache: miss`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use deja::clock::SystemClock;
use deja::config::{Config, Secret};
use deja::server::RunningServer;

const CONCURRENCY: [usize; 3] = [1, 16, 64];
/// The fake's embedding latency per call: at once, and closer to a real API.
const EMBED_LATENCY_MS: [u64; 2] = [0, 20];
const DIM: usize = 1536;
const TARGET_CALLS_PER_MISS: f64 = 0.2;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (measure, warmup) = if quick {
        (Duration::from_secs(2), Duration::from_millis(300))
    } else {
        (Duration::from_secs(6), Duration::from_millis(500))
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores)
            .thread_name(name)
            .enable_all()
            .build()
            .expect("runtime")
    };
    // Servers and load generator on runtimes of their own, as in benches/proxy_load.rs.
    let servers_rt = runtime("bench-srv");
    let load_rt = runtime("bench-gen");

    println!("# Batched API embeddings\n");
    println!(
        "- command: `cargo bench --bench embed_batch{}`",
        if quick { " -- --quick" } else { "" }
    );
    println!(
        "- machine: {cores} CPUs (nproc); load average at start: {}",
        load_average()
    );
    println!(
        "- {:.1} s measured per cell in two interleaved blocks per variant (A B B A), each after \
         {:.1} s of warm-up; closed loop, each worker one keep-alive connection, every request \
         a miss (unique prompt, own namespace); {DIM}-d vectors from the fake.\n",
        measure.as_secs_f64(),
        warmup.as_secs_f64()
    );

    let batched = servers_rt.block_on(Side::start(32, 2));
    let unbatched = servers_rt.block_on(Side::start(1, 0));

    println!(
        "| embedding latency | concurrency | variant | misses/s | embedding calls / miss | prompts / call | miss p50 (ms) | miss p99 (ms) | p50 / p99 vs unbatched |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut verdicts = Vec::new();
    for latency in EMBED_LATENCY_MS {
        for side in [&batched, &unbatched] {
            side.fake.latency_ms.store(latency, Ordering::Relaxed);
        }
        for concurrency in CONCURRENCY {
            let (mut with, mut without) = (Cell::default(), Cell::default());
            for is_batched in [true, false, false, true] {
                let (side, into) = if is_batched {
                    (&batched, &mut with)
                } else {
                    (&unbatched, &mut without)
                };
                into.add(load_rt.block_on(closed_loop(side, concurrency, warmup, measure / 2)));
            }
            with.latencies.sort_unstable();
            without.latencies.sort_unstable();
            for (name, cell) in [("batched", &with), ("unbatched", &without)] {
                let ratio = if name == "batched" {
                    format!(
                        "{:.2} / {:.2}",
                        pct_ms(&with.latencies, 0.5) / pct_ms(&without.latencies, 0.5),
                        pct_ms(&with.latencies, 0.99) / pct_ms(&without.latencies, 0.99)
                    )
                } else {
                    "1 (baseline)".into()
                };
                println!(
                    "| {latency} ms | {concurrency} | {name} | {:.0} | {:.3} | {:.1} | {:.2} | {:.2} | {ratio} |",
                    cell.latencies.len() as f64 / cell.seconds,
                    cell.calls as f64 / cell.latencies.len() as f64,
                    cell.inputs as f64 / cell.calls.max(1) as f64,
                    pct_ms(&cell.latencies, 0.5),
                    pct_ms(&cell.latencies, 0.99),
                );
            }
            if concurrency == 64 {
                let per_miss = with.calls as f64 / with.latencies.len() as f64;
                verdicts.push((latency, per_miss));
            }
        }
    }
    println!();
    for (latency, per_miss) in verdicts {
        println!(
            "- target: embedding calls per miss < {TARGET_CALLS_PER_MISS} at 64 concurrent misses \
             (embedding latency {latency} ms): {per_miss:.3} → **{}**",
            if per_miss < TARGET_CALLS_PER_MISS {
                "met"
            } else {
                "not met"
            }
        );
    }
    println!("\nload average at the end: {}", load_average());

    servers_rt.block_on(async {
        batched.deja.shutdown().await;
        unbatched.deja.shutdown().await;
    });
    load_rt.shutdown_timeout(Duration::from_secs(5));
    servers_rt.shutdown_timeout(Duration::from_secs(5));
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn pct_ms(sorted_ns: &[u64], q: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted_ns.len() as f64 * q).ceil() as usize).clamp(1, sorted_ns.len());
    sorted_ns[rank - 1] as f64 / 1e6
}

// === the fake upstream ===

/// Chat answers at once; embeddings after `latency_ms` per call, counted.
struct Fake {
    latency_ms: AtomicU64,
    calls: AtomicU64,
    inputs: AtomicU64,
    completion: Bytes,
}

impl Fake {
    fn new() -> Fake {
        let completion = json!({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_764_000_000,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
                "message": {"role": "assistant", "content": "Paris.", "refusal": null}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}
        });
        Fake {
            latency_ms: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            inputs: AtomicU64::new(0),
            completion: Bytes::from(completion.to_string()),
        }
    }

    async fn answer(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        let body = request
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        if path != "/v1/embeddings" {
            return json_response(self.completion.clone());
        }
        let request: Value = serde_json::from_slice(&body).unwrap_or_default();
        let inputs: Vec<&str> = match &request["input"] {
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            Value::String(text) => vec![text.as_str()],
            _ => Vec::new(),
        };
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inputs
            .fetch_add(inputs.len() as u64, Ordering::Relaxed);
        let latency = self.latency_ms.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": vector(text)}))
            .collect();
        let tokens = inputs.len() * 8;
        let answer = json!({"object": "list", "data": data, "model": request["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}});
        json_response(Bytes::from(answer.to_string()))
    }
}

/// A unit vector that depends on the text only.
fn vector(text: &str) -> Vec<f32> {
    let seed = blake3::hash(text.as_bytes());
    let mut first8 = [0u8; 8];
    first8.copy_from_slice(&seed.as_bytes()[..8]);
    let mut rng = fastrand::Rng::with_seed(u64::from_le_bytes(first8));
    let mut v: Vec<f32> = (0..DIM).map(|_| rng.f32() - 0.5).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

fn json_response(body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

async fn serve(fake: Arc<Fake>) -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let fake = fake.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let fake = fake.clone();
                    async move { Ok::<_, Infallible>(fake.answer(request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

// === one side: deja and its fake ===

struct Side {
    fake: Arc<Fake>,
    deja: RunningServer,
    uri: Uri,
    /// Holds the sled store.
    _dir: tempfile::TempDir,
}

impl Side {
    async fn start(max_batch: usize, batch_wait_ms: u64) -> Side {
        let fake = Arc::new(Fake::new());
        let upstream = serve(fake.clone()).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".parse().expect("addr");
        config.upstream.base_url = format!("http://{upstream}/v1");
        config.cache.dir = dir.path().join("cache");
        config.embedding.api_key = Some(Secret::new("sk-bench-embeddings"));
        config.embedding.max_batch = max_batch;
        config.embedding.batch_wait_ms = batch_wait_ms;
        config.validate().expect("valid config");
        let deja = deja::server::start(config, Arc::new(SystemClock))
            .await
            .expect("deja starts");
        let uri = format!("http://{}/v1/chat/completions", deja.addr)
            .parse()
            .expect("uri");
        Side {
            fake,
            deja,
            uri,
            _dir: dir,
        }
    }
}

// === load ===

static PROMPTS: AtomicU64 = AtomicU64::new(0);

fn miss(uri: &Uri) -> Request<Full<Bytes>> {
    let n = PROMPTS.fetch_add(1, Ordering::Relaxed);
    let body = json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": format!("Question {n}: what is the capital of France?")}
        ]
    });
    Request::post(uri.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, "Bearer sk-bench-tenant")
        .header("x-deja-namespace", format!("n{n}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request")
}

#[derive(Default)]
struct Cell {
    latencies: Vec<u64>,
    seconds: f64,
    calls: u64,
    inputs: u64,
}

impl Cell {
    fn add(&mut self, other: Cell) {
        self.latencies.extend(other.latencies);
        self.seconds += other.seconds;
        self.calls += other.calls;
        self.inputs += other.inputs;
    }
}

/// `concurrency` workers send misses back to back; the requests started in the measured
/// window count, and the embedding calls the fake saw in it.
async fn closed_loop(side: &Side, concurrency: usize, warmup: Duration, measure: Duration) -> Cell {
    let start = Instant::now();
    let window = (start + warmup, start + warmup + measure);
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let uri = side.uri.clone();
        workers.spawn(async move {
            let client: HttpClient = Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build_http();
            let mut latencies = Vec::new();
            loop {
                let sent = Instant::now();
                if sent >= window.1 {
                    break;
                }
                let response = client.request(miss(&uri)).await.expect("response");
                assert_eq!(response.status(), StatusCode::OK);
                let cache = response.headers().get("x-deja-cache").cloned();
                assert_eq!(cache.as_ref().map(|v| v.as_bytes()), Some(&b"miss"[..]));
                response.into_body().collect().await.expect("body");
                if sent >= window.0 {
                    latencies.push(sent.elapsed().as_nanos() as u64);
                }
            }
            latencies
        });
    }
    let counters = || {
        (
            side.fake.calls.load(Ordering::Relaxed),
            side.fake.inputs.load(Ordering::Relaxed),
        )
    };
    tokio::time::sleep_until(window.0.into()).await;
    let before = counters();
    tokio::time::sleep_until(window.1.into()).await;
    let after = counters();
    let mut cell = Cell {
        seconds: measure.as_secs_f64(),
        calls: after.0 - before.0,
        inputs: after.1 - before.1,
        ..Cell::default()
    };
    while let Some(latencies) = workers.join_next().await {
        cell.latencies.extend(latencies.expect("worker"));
    }
    cell
}
