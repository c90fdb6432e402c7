//! Load on the whole proxy, over loopback HTTP/1.1:
//!
//! 1. Hit path: exact cache hits against a bare hyper server that answers every POST with the
//!    same bytes from memory (the baseline), closed loop at concurrency 1, 16 and 64.
//! 2. Miss path: the latency deja adds in front of a fake upstream (fixed latency 0 and 50 ms),
//!    every request a miss (cache on, semantic tier off), open loop at a fixed rate; and the
//!    time to first byte of a streamed miss; then what that added time is made of, probed
//!    under the same background load through deja and straight to the upstream
//!    (`proxy_load/stream.rs`, `--only=stream`).
//!
//! `cargo bench --bench proxy_load -- [--quick] [--profile[=C]] [--only=hit|miss|stream|semantic]`. Prints markdown tables; each
//! figure for deja has its baseline measured in the same run, interleaved (A B B A) so a drift
//! of the shared machine affects both alike. `--quick` shortens every cell; `--profile[=C]`
//! runs only deja's exact hits at concurrency C (default 16) for 15 s, to run under a profiler. Timing targets are
//! reported, never asserted; only correctness (status 200, `x-deja-cache`) is asserted.
//!
//! Everything listens on 127.0.0.1 only; every server is stopped and both runtimes are shut
//! down before the process exits.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use deja::clock::SystemClock;
use deja::config::Config;
use deja::edge::server::RunningServer;

#[path = "proxy_load/semantic.rs"]
mod semantic;
#[path = "proxy_load/stream.rs"]
mod stream;

const CHAT_PATH: &str = "/v1/chat/completions";
const CONCURRENCY: [usize; 3] = [1, 16, 64];
/// Fixed rate of the open-loop miss runs.
const MISS_RATE: f64 = 1000.0;
/// Latencies of the fake upstream for the miss runs.
const UPSTREAM_LATENCY_MS: [u64; 2] = [0, 50];
/// The fake upstream's stream: this many chunks, this far apart, then `data: [DONE]`.
const STREAM_CHUNKS: usize = 20;
const STREAM_GAP: Duration = Duration::from_millis(5);
const TARGET_HIT_RATIO: f64 = 0.60;
const TARGET_P99_US: f64 = 1000.0;
const AUTHORIZATION: &str = "Bearer sk-bench-tenant";

type Body = UnsyncBoxBody<Bytes, Infallible>;
type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Cell durations.
#[derive(Clone, Copy)]
struct Plan {
    /// Measured time per cell (split over its two interleaved blocks).
    measure: Duration,
    /// Warm-up before each block (new connections, pools, caches).
    warmup: Duration,
}

fn main() {
    let started = Instant::now();
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let profile = args.iter().find_map(|a| match a.strip_prefix("--profile") {
        Some("") => Some(16),
        Some(c) => c.strip_prefix('=')?.parse::<usize>().ok(),
        None => None,
    });
    let plan = if quick {
        Plan {
            measure: Duration::from_secs(2),
            warmup: Duration::from_millis(250),
        }
    } else {
        Plan {
            measure: Duration::from_secs(5),
            warmup: Duration::from_millis(500),
        }
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());

    print_header(&args, cores, quick, plan);

    // Servers (bare, fake upstream, deja) and the load generator get a runtime each, so the
    // CPU time of each side can be told apart; they still share the same cores.
    let servers_rt = runtime("bench-srv", cores);
    let load_rt = runtime("bench-gen", cores);

    let servers = servers_rt.block_on(Servers::start());
    println!(
        "deja hit body: {} bytes (captured from a real hit at start-up; the bare server returns \
         these bytes).\n",
        servers.hit_body.len()
    );

    if let Some(concurrency) = profile {
        load_rt.block_on(profile_hits(&servers, concurrency));
    } else {
        // `--only=hit|miss|stream|semantic` runs one section.
        let only = args.iter().find_map(|a| a.strip_prefix("--only="));
        let runs = |section: &str| only.is_none_or(|only| only == section);
        if runs("hit") {
            load_rt.block_on(hit_section(&servers, plan));
        }
        if runs("miss") {
            load_rt.block_on(miss_section(&servers, plan));
        }
        if runs("stream") {
            load_rt.block_on(stream::stream_section(&servers, plan));
        }
        if runs("semantic") {
            load_rt.block_on(semantic::semantic_section(&servers, plan));
        }
    }

    servers_rt.block_on(servers.stop());
    load_rt.shutdown_timeout(Duration::from_secs(5));
    servers_rt.shutdown_timeout(Duration::from_secs(5));
    println!(
        "\nwhole run: {:.0} s; load average at the end: {}; every server stopped, runtimes \
         shut down.",
        started.elapsed().as_secs_f64(),
        load_average()
    );
}

fn runtime(name: &str, workers: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        // Blocking-pool threads stay for the whole run, so their CPU time stays countable.
        .thread_keep_alive(Duration::from_secs(3600))
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn print_header(args: &[String], cores: usize, quick: bool, plan: Plan) {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let load = load_average();
    let extra: Vec<&str> = args
        .iter()
        .skip(1)
        .map(String::as_str)
        .filter(|a| *a != "--bench")
        .collect();
    let command = if extra.is_empty() {
        "cargo bench --bench proxy_load".to_string()
    } else {
        format!("cargo bench --bench proxy_load -- {}", extra.join(" "))
    };
    println!("# deja proxy load\n");
    println!("- date: {}", utc_now());
    println!("- command: `{command}`");
    println!("- machine: {cores} CPUs (nproc), {model}; load average at start: {load}");
    println!(
        "- mode: {}; {:.1} s measured per cell in two interleaved blocks (A B B A), each after \
         {:.2} s of warm-up",
        if quick { "--quick" } else { "full" },
        plan.measure.as_secs_f64(),
        plan.warmup.as_secs_f64()
    );
    println!(
        "- the load generator runs in this process and shares the {cores} cores with the \
         servers (own tokio runtime, {cores} workers; servers' runtime: {cores} workers, like \
         deja's `#[tokio::main]`). Its CPU share is shown, and how many cores the process kept \
         busy (below {cores} means idle time or other processes on the machine); the \
         servers' CPU time per request is the steadier figure on a shared machine."
    );
    println!(
        "- deja runs in-process: no tracing subscriber (so no per-request log line), semantic \
         tier off, sled store in a temp dir, HTTP/1.1 keep-alive, loopback only.\n"
    );
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

// === servers ===

/// A hyper HTTP/1.1 server on 127.0.0.1:0; `stop` ends the accept loop and drops every
/// connection task.
struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start<H, F>(handler: H) -> Server
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        let handler = handler.clone();
                        connections.spawn(async move {
                            let service = service_fn(move |request| {
                                let response = handler(request);
                                async move { Ok::<_, Infallible>(response.await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                    _ = stopped.changed() => break,
                }
            }
            connections.shutdown().await;
        });
        Server { addr, stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A fake OpenAI upstream: `POST /v1/chat/completions` answers a fixed completion after a
/// settable latency, or (for `"stream":true`) a fixed SSE stream.
struct FakeUpstream {
    latency_ms: AtomicU64,
    completion: Bytes,
    chunks: Vec<Bytes>,
}

impl FakeUpstream {
    fn new() -> FakeUpstream {
        let content = "Caching repeated questions saves both time and money, because an answer \
                       that was already paid for can be served again in microseconds. "
            .repeat(5);
        let completion = json!({
            "id": "chatcmpl-fakeupstream0000000000000000",
            "object": "chat.completion",
            "created": 1_764_000_000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content.trim_end(), "refusal": null},
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": {"prompt_tokens": 24, "completion_tokens": 150, "total_tokens": 174},
            "service_tier": "default",
            "system_fingerprint": "fp_bench0000"
        });
        let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
            let chunk = json!({
                "id": "chatcmpl-fakeupstream0000000000000000",
                "object": "chat.completion.chunk",
                "created": 1_764_000_000,
                "model": "gpt-4o-mini-2024-07-18",
                "system_fingerprint": "fp_bench0000",
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
            });
            Bytes::from(format!("data: {chunk}\n\n"))
        };
        let mut chunks = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            json!(null),
        )];
        for word in content.split_whitespace().take(STREAM_CHUNKS - 2) {
            chunks.push(chunk(json!({"content": format!("{word} ")}), json!(null)));
        }
        chunks.push(chunk(json!({}), json!("stop")));
        chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
        FakeUpstream {
            latency_ms: AtomicU64::new(0),
            completion: Bytes::from(completion.to_string()),
            chunks,
        }
    }

    async fn answer(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        if request.method() != Method::POST || request.uri().path() != CHAT_PATH {
            return respond(
                StatusCode::NOT_FOUND,
                "application/json",
                Full::new(Bytes::from_static(b"{}")).boxed_unsync(),
            );
        }
        let body = match request.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let latency = self.latency_ms.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        if !contains(&body, b"\"stream\":true") {
            return respond(
                StatusCode::OK,
                "application/json",
                Full::new(self.completion.clone()).boxed_unsync(),
            );
        }
        let frames = futures_util::stream::unfold(0usize, move |i| {
            let upstream = self.clone();
            async move {
                let chunk = upstream.chunks.get(i)?.clone();
                if i > 0 {
                    tokio::time::sleep(STREAM_GAP).await;
                }
                Some((Ok::<_, Infallible>(Frame::data(chunk)), i + 1))
            }
        });
        respond(
            StatusCode::OK,
            "text/event-stream",
            StreamBody::new(frames).boxed_unsync(),
        )
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Everything the runs talk to.
struct Servers {
    upstream: Server,
    upstream_state: Arc<FakeUpstream>,
    deja: RunningServer,
    bare: Server,
    hit_body: Bytes,
    /// Holds the sled store; removed after deja has shut down.
    dir: tempfile::TempDir,
}

impl Servers {
    async fn start() -> Servers {
        let upstream_state = Arc::new(FakeUpstream::new());
        let state = upstream_state.clone();
        let upstream = Server::start(move |request| state.clone().answer(request)).await;

        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".parse().expect("addr");
        config.upstream.base_url = format!("http://{}/v1", upstream.addr);
        config.cache.dir = dir.path().join("cache");
        config.cache.semantic = false;
        config.validate().expect("valid config");
        let deja = deja::edge::server::start(config, Arc::new(SystemClock))
            .await
            .expect("deja starts");
        assert!(deja.app.cache.is_some(), "deja opened its cache");

        // Warm one entry, then capture the bytes of a real exact hit.
        let client = http_client(1);
        let uri = uri(deja.addr, CHAT_PATH);
        let body = chat_body(HIT_PROMPT, false);
        let (status, headers, _) = send_whole(&client, &uri, body.clone()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(cache_header(&headers), "miss", "first request is a miss");
        let (status, headers, hit_body) = send_whole(&client, &uri, body).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(cache_header(&headers), "hit", "second request is a hit");
        assert_eq!(
            headers.get("x-deja-match").map(HeaderValue::as_bytes),
            Some(&b"exact"[..])
        );
        drop(client);

        let bare_body = hit_body.clone();
        let bare = Server::start(move |request: Request<Incoming>| {
            let body = bare_body.clone();
            async move {
                // Read the request like any real server would.
                let _ = request.into_body().collect().await;
                respond(
                    StatusCode::OK,
                    "application/json",
                    Full::new(body).boxed_unsync(),
                )
            }
        })
        .await;
        Servers {
            upstream,
            upstream_state,
            deja,
            bare,
            hit_body,
            dir,
        }
    }

    async fn stop(self) {
        self.deja.shutdown().await;
        self.bare.stop().await;
        self.upstream.stop().await;
        drop(self.dir);
    }
}

// === requests ===

const HIT_PROMPT: &str = "What is the capital of France?";
/// Makes every miss prompt unique across the whole run.
static MISS_COUNTER: AtomicU64 = AtomicU64::new(0);

fn chat_body(question: &str, stream: bool) -> Bytes {
    let mut body = json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": question}
        ]
    });
    if stream {
        body["stream"] = json!(true);
    }
    Bytes::from(serde_json::to_vec(&body).expect("json"))
}

fn miss_body(stream: bool) -> Bytes {
    let n = MISS_COUNTER.fetch_add(1, Ordering::Relaxed);
    chat_body(
        &format!("Question {n}: what is the capital of France?"),
        stream,
    )
}

fn uri(addr: SocketAddr, path: &str) -> Uri {
    format!("http://{addr}{path}").parse().expect("uri")
}

/// A keep-alive HTTP/1.1 client; `idle` bounds the connections kept per host.
fn http_client(idle: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(idle)
        .build(connector)
}

fn post(uri: &Uri, body: Bytes) -> Request<Full<Bytes>> {
    Request::post(uri.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, AUTHORIZATION)
        .body(Full::new(body))
        .expect("request")
}

async fn send_whole(
    client: &HttpClient,
    uri: &Uri,
    body: Bytes,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let response = client.request(post(uri, body)).await.expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

fn cache_header(headers: &http::HeaderMap) -> &str {
    headers
        .get("x-deja-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<none>")
}

/// What a run expects of every response (besides status 200).
#[derive(Clone, Copy, PartialEq)]
enum Expect {
    Anything,
    Hit,
    Miss,
    /// A hit found by the semantic tier.
    Semantic,
}

/// Outcomes seen in a run.
#[derive(Default, Clone, Copy)]
struct Counts {
    total: u64,
    not_ok: u64,
    hit: u64,
    miss: u64,
    exact: u64,
    coalesced: u64,
    semantic: u64,
}

impl Counts {
    fn see(&mut self, status: StatusCode, headers: &http::HeaderMap) {
        self.total += 1;
        self.not_ok += u64::from(status != StatusCode::OK);
        match headers.get("x-deja-cache").map(HeaderValue::as_bytes) {
            Some(b"hit") => self.hit += 1,
            Some(b"miss") => self.miss += 1,
            _ => {}
        }
        match headers.get("x-deja-match").map(HeaderValue::as_bytes) {
            Some(b"exact") => self.exact += 1,
            Some(b"coalesced") => self.coalesced += 1,
            Some(b"semantic") => self.semantic += 1,
            _ => {}
        }
    }

    fn add(&mut self, other: Counts) {
        self.total += other.total;
        self.not_ok += other.not_ok;
        self.hit += other.hit;
        self.miss += other.miss;
        self.exact += other.exact;
        self.coalesced += other.coalesced;
        self.semantic += other.semantic;
    }

    fn check(&self, expect: Expect, what: &str) {
        assert_eq!(
            self.not_ok, 0,
            "{what}: {} responses were not 200",
            self.not_ok
        );
        match expect {
            Expect::Anything => {}
            Expect::Hit => assert_eq!(
                self.hit,
                self.total,
                "{what}: {} of {} responses lacked `x-deja-cache: hit`",
                self.total - self.hit,
                self.total
            ),
            Expect::Semantic => assert_eq!(
                self.semantic,
                self.total,
                "{what}: {} of {} responses lacked `x-deja-match: semantic`",
                self.total - self.semantic,
                self.total
            ),
            Expect::Miss => assert_eq!(
                self.miss,
                self.total,
                "{what}: {} of {} responses lacked `x-deja-cache: miss`",
                self.total - self.miss,
                self.total
            ),
        }
    }
}

// === CPU time per thread ===

/// One thread's counters.
#[derive(Clone, Copy)]
struct ThreadStat {
    /// Part of the load generator (its runtime's threads and the main thread driving it).
    generator: bool,
    cpu_ns: u64,
    /// Voluntary + involuntary context switches.
    switches: u64,
}

/// Counters of every thread of this process, by thread id.
fn thread_stats() -> HashMap<u32, ThreadStat> {
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
fn spent_since(before: &HashMap<u32, ThreadStat>) -> (f64, f64, u64) {
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

// === closed loop ===

/// One measured block or the sum of several.
#[derive(Default)]
struct Load {
    latencies_ns: Vec<u64>,
    seconds: f64,
    server_cpu: f64,
    generator_cpu: f64,
    server_switches: u64,
    counts: Counts,
}

impl Load {
    fn add(&mut self, other: Load) {
        self.latencies_ns.extend(other.latencies_ns);
        self.seconds += other.seconds;
        self.server_cpu += other.server_cpu;
        self.generator_cpu += other.generator_cpu;
        self.server_switches += other.server_switches;
        self.counts.add(other.counts);
    }

    fn rate(&self) -> f64 {
        self.latencies_ns.len() as f64 / self.seconds
    }

    fn server_switches_per_request(&self) -> f64 {
        self.server_switches as f64 / self.latencies_ns.len() as f64
    }

    fn server_cpu_per_request_us(&self) -> f64 {
        self.server_cpu / self.latencies_ns.len() as f64 * 1e6
    }

    /// Cores this process kept busy (servers + generator); what is missing to the machine's
    /// core count went idle or to other processes.
    fn cores_used(&self) -> f64 {
        (self.generator_cpu + self.server_cpu) / self.seconds
    }

    fn generator_share(&self) -> f64 {
        self.generator_cpu / (self.generator_cpu + self.server_cpu)
    }
}

/// What the closed loop sends.
#[derive(Clone)]
struct Target {
    uri: Uri,
    method: Method,
    body: Bytes,
    expect: Expect,
    /// A body per worker (worker `i` sends the `i`-th), instead of `body` for all.
    per_worker: Option<Arc<Vec<Bytes>>>,
}

impl Target {
    fn for_worker(&self, worker: usize) -> Target {
        let mut target = self.clone();
        if let Some(bodies) = &self.per_worker {
            target.body = bodies[worker % bodies.len()].clone();
        }
        target
    }

    fn request(&self) -> Request<Full<Bytes>> {
        Request::builder()
            .method(self.method.clone())
            .uri(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, AUTHORIZATION)
            .body(Full::new(self.body.clone()))
            .expect("request")
    }
}

/// `concurrency` workers, each with its own keep-alive connection, send requests back to back
/// for warm-up + `measure`; requests started inside the measured window are recorded.
async fn closed_loop(
    target: &Target,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
) -> Load {
    let start = Instant::now();
    let window = (start + warmup, start + warmup + measure);
    let mut workers = JoinSet::new();
    for worker in 0..concurrency {
        let target = target.for_worker(worker);
        workers.spawn(async move {
            // One connection per worker: its own pool, one request at a time.
            let client = http_client(1);
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut counts = Counts::default();
            loop {
                let sent = Instant::now();
                if sent >= window.1 {
                    break;
                }
                let response = client.request(target.request()).await.expect("response");
                counts.see(response.status(), response.headers());
                response.into_body().collect().await.expect("body");
                if sent >= window.0 {
                    latencies.push(sent.elapsed().as_nanos() as u64);
                }
            }
            (latencies, counts)
        });
    }
    tokio::time::sleep_until(window.0.into()).await;
    let before = thread_stats();
    tokio::time::sleep_until(window.1.into()).await;
    let (server_cpu, generator_cpu, server_switches) = spent_since(&before);
    let mut load = Load {
        seconds: measure.as_secs_f64(),
        server_cpu,
        generator_cpu,
        server_switches,
        ..Load::default()
    };
    while let Some(joined) = workers.join_next().await {
        let (latencies, counts) = joined.expect("worker");
        load.latencies_ns.extend(latencies);
        load.counts.add(counts);
    }
    load
}

fn pct_us(sorted_ns: &[u64], q: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted_ns.len() as f64 * q).ceil() as usize).clamp(1, sorted_ns.len());
    sorted_ns[rank - 1] as f64 / 1000.0
}

async fn hit_section(servers: &Servers, plan: Plan) {
    let body = chat_body(HIT_PROMPT, false);
    let bare = Target {
        uri: uri(servers.bare.addr, CHAT_PATH),
        method: Method::POST,
        body: body.clone(),
        expect: Expect::Anything,
        per_worker: None,
    };
    let hit = Target {
        uri: uri(servers.deja.addr, CHAT_PATH),
        method: Method::POST,
        body,
        expect: Expect::Hit,
        per_worker: None,
    };
    let health = Target {
        uri: uri(servers.deja.addr, "/healthz"),
        method: Method::GET,
        body: Bytes::new(),
        expect: Expect::Anything,
        per_worker: None,
    };
    let targets = [
        ("bare hyper (baseline)", &bare),
        ("deja exact hit", &hit),
        ("deja `GET /healthz` (listener + router only)", &health),
    ];

    println!("## 1. Hit path: closed loop, one keep-alive connection per worker\n");
    println!(
        "Each worker sends the same `POST {CHAT_PATH}` back to back; latency is per request \
         (send to last body byte). Every deja response was checked for `x-deja-cache: hit`. \
         `/healthz` is answered by deja's router before any cache work: it shows what the \
         listener alone costs (2-byte body). A hit first registers its exact key for \
         coalescing, so identical requests arriving during its lookup wait for it and are \
         answered from its entry (`x-deja-match: coalesced`); the last column counts both.\n"
    );
    println!(
        "| concurrency | server | requests/s | p50 (µs) | p99 (µs) | p99.9 (µs) | server CPU/request (µs) | server context switches/request | generator's CPU share | cores used | throughput vs bare | hits exact / coalesced |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut at16 = None;
    for concurrency in CONCURRENCY {
        let loads = interleaved(&targets, concurrency, plan).await;
        let bare_rate = loads[0].rate();
        for (i, ((name, target), load)) in targets.iter().zip(loads.iter()).enumerate() {
            let ratio = if i == 0 {
                "1 (baseline)".to_string()
            } else {
                format!("{:.2}", load.rate() / bare_rate)
            };
            let matched = if target.expect == Expect::Hit {
                format!("{} / {}", load.counts.exact, load.counts.coalesced)
            } else {
                String::new()
            };
            println!(
                "| {concurrency} | {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.2} | {:.0}% | {:.2} | {ratio} | {matched} |",
                load.rate(),
                pct_us(&load.latencies_ns, 0.5),
                pct_us(&load.latencies_ns, 0.99),
                pct_us(&load.latencies_ns, 0.999),
                load.server_cpu_per_request_us(),
                load.server_switches_per_request(),
                load.generator_share() * 100.0,
                load.cores_used(),
            );
        }
        if concurrency == 16 {
            let hit = &loads[1];
            at16 = Some((
                hit.rate() / bare_rate,
                pct_us(&hit.latencies_ns, 0.99),
                loads[0].server_cpu_per_request_us() / hit.server_cpu_per_request_us(),
            ));
        }
    }
    if let Some((ratio, p99, cpu_ratio)) = at16 {
        println!();
        println!(
            "- target: deja exact hits ≥ {:.0}% of the bare server's throughput at concurrency \
             16: {:.0}% → **{}** (by server CPU per request instead: {:.0}%)",
            TARGET_HIT_RATIO * 100.0,
            ratio * 100.0,
            verdict(ratio >= TARGET_HIT_RATIO),
            cpu_ratio * 100.0
        );
        println!(
            "- target: deja exact-hit p99 < 1 ms at concurrency 16: {p99:.0} µs → **{}**",
            verdict(p99 < TARGET_P99_US)
        );
    }
    println!();
}

/// Runs each target in two half-length blocks, interleaved (A B C C B A) so a drift of the
/// shared machine affects all alike; checks every response and sorts the latencies.
async fn interleaved(targets: &[(&str, &Target)], concurrency: usize, plan: Plan) -> Vec<Load> {
    let mut loads: Vec<Load> = targets.iter().map(|_| Load::default()).collect();
    let order: Vec<usize> = (0..targets.len()).chain((0..targets.len()).rev()).collect();
    for &i in &order {
        let block = closed_loop(targets[i].1, concurrency, plan.warmup, plan.measure / 2).await;
        loads[i].add(block);
    }
    for ((name, target), load) in targets.iter().zip(loads.iter_mut()) {
        load.counts.check(
            target.expect,
            &format!("{name} at concurrency {concurrency}"),
        );
        load.latencies_ns.sort_unstable();
    }
    loads
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "not met" }
}

/// Only deja's exact hits, for a profiler to attach to.
async fn profile_hits(servers: &Servers, concurrency: usize) {
    let target = Target {
        uri: uri(servers.deja.addr, CHAT_PATH),
        method: Method::POST,
        body: chat_body(HIT_PROMPT, false),
        expect: Expect::Hit,
        per_worker: None,
    };
    let mut load = closed_loop(
        &target,
        concurrency,
        Duration::from_secs(1),
        Duration::from_secs(15),
    )
    .await;
    load.counts.check(Expect::Hit, "profile");
    load.latencies_ns.sort_unstable();
    println!(
        "profile run: deja exact hits at concurrency {concurrency}: {:.0} requests/s, p50 {:.0} \
         µs, p99 {:.0} µs, server CPU/request {:.1} µs, server context switches/request {:.2}",
        load.rate(),
        pct_us(&load.latencies_ns, 0.5),
        pct_us(&load.latencies_ns, 0.99),
        load.server_cpu_per_request_us(),
        load.server_switches_per_request()
    );
}

// === open loop (misses) ===

/// Times of one request: to the first body byte, and to the end of the body.
struct Timing {
    first_byte_ns: u64,
    total_ns: u64,
    /// How late the request left compared with its schedule.
    lag_ns: u64,
}

#[derive(Default)]
struct OpenLoad {
    timings: Vec<Timing>,
    counts: Counts,
    seconds: f64,
}

/// Sends a new unique request every 1/`rate` s for warm-up + `measure`, whatever is still in
/// flight (open loop; the pooled client opens connections as needed). Latency is taken from
/// the moment each request is sent; its lag behind the schedule is reported separately.
async fn open_loop(
    client: &HttpClient,
    uri: &Uri,
    stream: bool,
    rate: f64,
    warmup: Duration,
    measure: Duration,
) -> OpenLoad {
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let (from, until) = (start + warmup, start + warmup + measure);
    let mut requests = JoinSet::new();
    for i in 0u32.. {
        let at = start + period * i;
        if at >= until {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let request = timed(client.clone(), post(uri, miss_body(stream)), stream, at);
        requests.spawn(async move {
            let (timing, counts) = request.await;
            (at >= from, timing, counts)
        });
    }
    let mut load = OpenLoad {
        seconds: measure.as_secs_f64(),
        ..OpenLoad::default()
    };
    while let Some(joined) = requests.join_next().await {
        let (measured, timing, counts) = joined.expect("request task");
        load.counts.add(counts);
        if measured {
            load.timings.push(timing);
        }
    }
    load
}

/// Sends `request` (due at `at`) and reads its body, timing the first byte and the end.
async fn timed(
    client: HttpClient,
    request: Request<Full<Bytes>>,
    stream: bool,
    at: Instant,
) -> (Timing, Counts) {
    let sent = Instant::now();
    let response = client.request(request).await.expect("response");
    let mut counts = Counts::default();
    counts.see(response.status(), response.headers());
    let mut body = response.into_body();
    let mut first_byte = None;
    let mut tail = Bytes::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            first_byte.get_or_insert_with(|| sent.elapsed());
            tail = data;
        }
    }
    let total = sent.elapsed();
    if stream {
        assert!(contains(&tail, b"data: [DONE]"), "stream ends with [DONE]");
    }
    let timing = Timing {
        first_byte_ns: first_byte.unwrap_or(total).as_nanos() as u64,
        total_ns: total.as_nanos() as u64,
        lag_ns: sent.saturating_duration_since(at).as_nanos() as u64,
    };
    (timing, counts)
}

/// Sorted figures of one side of a comparison.
struct Sample {
    first_byte: Vec<u64>,
    total: Vec<u64>,
    lag: Vec<u64>,
}

impl Sample {
    fn new(load: &OpenLoad) -> Sample {
        let sorted = |f: fn(&Timing) -> u64| {
            let mut v: Vec<u64> = load.timings.iter().map(f).collect();
            v.sort_unstable();
            v
        };
        Sample {
            first_byte: sorted(|t| t.first_byte_ns),
            total: sorted(|t| t.total_ns),
            lag: sorted(|t| t.lag_ns),
        }
    }
}

/// Runs the same open loop directly against the fake upstream and through deja, interleaved
/// A B B A.
async fn compare(servers: &Servers, stream: bool, plan: Plan) -> (Sample, Sample) {
    let direct_uri = uri(servers.upstream.addr, CHAT_PATH);
    let deja_uri = uri(servers.deja.addr, CHAT_PATH);
    let direct_client = http_client(256);
    let deja_client = http_client(256);
    let mut direct = OpenLoad::default();
    let mut via = OpenLoad::default();
    for via_deja in [false, true, true, false] {
        let (client, uri, into) = if via_deja {
            (&deja_client, &deja_uri, &mut via)
        } else {
            (&direct_client, &direct_uri, &mut direct)
        };
        let block = open_loop(
            client,
            uri,
            stream,
            MISS_RATE,
            plan.warmup,
            plan.measure / 2,
        )
        .await;
        into.timings.extend(block.timings);
        into.counts.add(block.counts);
        into.seconds += block.seconds;
    }
    let what = if stream { "streamed misses" } else { "misses" };
    direct
        .counts
        .check(Expect::Anything, &format!("direct {what}"));
    via.counts.check(Expect::Miss, &format!("deja {what}"));
    (Sample::new(&direct), Sample::new(&via))
}

async fn miss_section(servers: &Servers, plan: Plan) {
    println!("## 2. Miss path: latency added by deja\n");
    println!(
        "Open loop at a fixed {MISS_RATE:.0} requests/s (a new request every {:.0} ms whatever \
         is in flight, over a pooled keep-alive client), unique prompt per request (a counter \
         in the last user message), so every request through deja is a miss: exact lookup, \
         coalescing registration, upstream call, store in sled before answering. Semantic \
         tier off (no embedding call). \"direct\" calls the fake upstream itself. Added = \
         deja's percentile minus direct's percentile (a difference of percentiles, not a \
         percentile of per-request differences). Latency runs from sending to the last body \
         byte.\n",
        1000.0 / MISS_RATE
    );
    println!(
        "| upstream latency | requests (direct / deja) | direct p50 (µs) | direct p99 (µs) | deja p50 (µs) | deja p99 (µs) | added p50 (µs) | added p99 (µs) | p99 added < 1 ms | send lag p99 (µs) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for latency in UPSTREAM_LATENCY_MS {
        servers
            .upstream_state
            .latency_ms
            .store(latency, Ordering::Relaxed);
        let (direct, via) = compare(servers, false, plan).await;
        let added = |q| pct_us(&via.total, q) - pct_us(&direct.total, q);
        println!(
            "| {latency} ms | {} / {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.0} |",
            direct.total.len(),
            via.total.len(),
            pct_us(&direct.total, 0.5),
            pct_us(&direct.total, 0.99),
            pct_us(&via.total, 0.5),
            pct_us(&via.total, 0.99),
            added(0.5),
            added(0.99),
            verdict(added(0.99) < TARGET_P99_US),
            pct_us(&direct.lag, 0.99).max(pct_us(&via.lag, 0.99)),
        );
    }
    servers
        .upstream_state
        .latency_ms
        .store(0, Ordering::Relaxed);

    println!();
    println!(
        "### Streaming: time to first byte of a `\"stream\": true` miss\n\n\
         Same open loop ({MISS_RATE:.0} requests/s, unique prompts). The fake upstream answers \
         at once and streams {} SSE chunks {} ms apart, then `data: [DONE]`. TTFB runs from \
         sending to the first body byte (the first chunk); deja relays chunks as they arrive \
         and holds back only the final one until the answer is stored.\n",
        STREAM_CHUNKS,
        STREAM_GAP.as_millis()
    );
    println!(
        "| requests (direct / deja) | direct TTFB p50 (µs) | direct TTFB p99 (µs) | deja TTFB p50 (µs) | deja TTFB p99 (µs) | added TTFB p50 (µs) | added TTFB p99 (µs) | p99 added < 1 ms | whole stream p50 direct / deja (ms) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let (direct, via) = compare(servers, true, plan).await;
    let added = |q| pct_us(&via.first_byte, q) - pct_us(&direct.first_byte, q);
    println!(
        "| {} / {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.1} / {:.1} |",
        direct.first_byte.len(),
        via.first_byte.len(),
        pct_us(&direct.first_byte, 0.5),
        pct_us(&direct.first_byte, 0.99),
        pct_us(&via.first_byte, 0.5),
        pct_us(&via.first_byte, 0.99),
        added(0.5),
        added(0.99),
        verdict(added(0.99) < TARGET_P99_US),
        pct_us(&direct.total, 0.5) / 1000.0,
        pct_us(&via.total, 0.5) / 1000.0,
    );
}

// === dates ===

/// `YYYY-MM-DD HH:MM:SS UTC` without a date crate (civil-from-days, H. Hinnant).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
