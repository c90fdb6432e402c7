//! The job queue against the synchronous path, in the same run, over loopback HTTP/1.1:
//!
//! 1. Throughput: N distinct chat requests (all misses, cache on, semantic tier off) against
//!    an upstream with a fixed latency, sent synchronously by C clients, and as N jobs (C
//!    submitters, `jobs.concurrency` = C) until the last is finished. Rounds alternate
//!    (sync, jobs, jobs, sync) so a drift of the shared machine affects both alike.
//! 2. Delay at low load: one request at a time, synchronous vs submit-and-poll (the job is
//!    polled every 0.5 ms, so the figure includes up to that much polling slack).
//!
//! `cargo bench --bench jobs -- [N] [C] [LATENCY_MS]` (defaults 2000 16 20). Prints a
//! markdown table; nothing is asserted but correctness (status codes, finished jobs).
//!
//! With `--redis` (a `redis-server` on PATH): the same two figures for the queue in Redis
//! (`[redis]`, shared by replicas) against the sled queue, in the same run, instead of jobs
//! against the synchronous path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use deja::clock::SystemClock;
use deja::config::Config;

/// A chat completion as the API returns it, after `latency`.
async fn upstream(latency: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |_request: Request<Incoming>| async move {
                    tokio::time::sleep(latency).await;
                    let body = json!({
                        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000,
                        "model": "gpt-4o-mini-2024-07-18",
                        "choices": [{"index": 0, "message": {"role": "assistant",
                            "content": "a short answer", "refusal": null, "annotations": []},
                            "logprobs": null, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
                        "service_tier": "default", "system_fingerprint": "fp_bench"
                    });
                    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(response)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn ask(tag: &str, i: usize) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("{tag} question {i}")}]})
}

struct Bench {
    base: String,
    client: reqwest::Client,
}

impl Bench {
    async fn sync_one(&self, body: &Value) {
        let response = self
            .client
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth("sk-bench")
            .json(body)
            .send()
            .await
            .expect("sync");
        assert_eq!(response.status(), 200);
        response.bytes().await.expect("body");
    }

    async fn submit(&self, body: &Value) -> String {
        let response = self
            .client
            .post(format!("{}/v1/async/chat/completions", self.base))
            .bearer_auth("sk-bench")
            .json(body)
            .send()
            .await
            .expect("submit");
        assert_eq!(response.status(), 202);
        let job: Value = response.json().await.expect("job");
        job["id"].as_str().expect("id").to_string()
    }

    async fn wait(&self, id: &str, every: Duration) {
        loop {
            let job: Value = self
                .client
                .get(format!("{}/v1/async/jobs/{id}", self.base))
                .bearer_auth("sk-bench")
                .send()
                .await
                .expect("poll")
                .json()
                .await
                .expect("json");
            match job["status"].as_str() {
                Some("queued" | "running") => tokio::time::sleep(every).await,
                Some("succeeded") => return,
                other => panic!("job {id} ended {other:?}: {job}"),
            }
        }
    }

    /// Requests per second, synchronously with `c` clients.
    async fn sync_rate(&self, tag: &str, n: usize, c: usize) -> f64 {
        let start = Instant::now();
        futures_util::stream::iter(0..n)
            .map(|i| async move { self.sync_one(&ask(tag, i)).await })
            .buffer_unordered(c)
            .collect::<Vec<_>>()
            .await;
        n as f64 / start.elapsed().as_secs_f64()
    }

    /// Jobs per second from the first submission to the last finished job.
    async fn job_rate(&self, tag: &str, n: usize, c: usize) -> f64 {
        let start = Instant::now();
        let ids: Vec<String> = futures_util::stream::iter(0..n)
            .map(|i| async move { self.submit(&ask(tag, i)).await })
            .buffered(c)
            .collect()
            .await;
        // Jobs finish roughly in order: waiting on each in turn costs few polls.
        for id in &ids {
            self.wait(id, Duration::from_millis(5)).await;
        }
        n as f64 / start.elapsed().as_secs_f64()
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// deja on `upstream` with `c` workers; with `redis`, its queue is that Redis.
async fn start_proxy(
    upstream: SocketAddr,
    dir: &std::path::Path,
    c: usize,
    redis: Option<String>,
) -> (deja::server::RunningServer, Bench) {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.upstream.base_url = format!("http://{upstream}/v1");
    config.cache.dir = dir.join("cache");
    config.cache.semantic = false;
    config.jobs.concurrency = c;
    config.redis = redis.map(|url| deja::config::RedisConfig {
        url,
        ..Default::default()
    });
    let proxy = deja::server::start(config, std::sync::Arc::new(SystemClock))
        .await
        .expect("deja starts");
    let bench = Bench {
        base: format!("http://{}", proxy.addr),
        client: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client"),
    };
    (proxy, bench)
}

/// Milliseconds from submission until a poll sees the job done, `n` jobs one at a time.
async fn job_delays(bench: &Bench, tag: &str, n: usize) -> Vec<f64> {
    let mut ms = Vec::new();
    for i in 0..n {
        let start = Instant::now();
        let id = bench.submit(&ask(tag, i)).await;
        bench.wait(&id, Duration::from_micros(500)).await;
        ms.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    ms
}

/// A `redis-server` on a free loopback port, as the tests start it (no persistence).
struct RedisServer {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = tempfile::tempdir().expect("tempdir");
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer {
            child,
            url: format!("redis://127.0.0.1:{port}"),
            _dir: dir,
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() {
    let redis = std::env::args().any(|a| a == "--redis");
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(2000);
    let c = args.get(1).copied().unwrap_or(16);
    let latency = Duration::from_millis(args.get(2).copied().unwrap_or(20) as u64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if redis {
        runtime.block_on(against_redis(n, c, latency));
        runtime.shutdown_timeout(Duration::from_secs(1));
        return;
    }
    runtime.block_on(async move {
        let upstream = upstream(latency).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let (proxy, bench) = start_proxy(upstream, dir.path(), c, None).await;
        // Warm-up.
        bench.sync_rate("warm", 200, c).await;
        bench.job_rate("warmjob", 200, c).await;

        let mut sync = Vec::new();
        let mut jobs = Vec::new();
        for (round, first_sync) in [true, false, false, true].into_iter().enumerate() {
            let tag = format!("round{round}");
            if first_sync {
                sync.push(bench.sync_rate(&tag, n, c).await);
            } else {
                jobs.push(bench.job_rate(&tag, n, c).await);
            }
        }
        let (sync_rate, job_rate) = (
            sync.iter().sum::<f64>() / sync.len() as f64,
            jobs.iter().sum::<f64>() / jobs.len() as f64,
        );

        let mut sync_ms = Vec::new();
        for i in 0..100 {
            let start = Instant::now();
            bench.sync_one(&ask("low-sync", i)).await;
            sync_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        sync_ms.sort_by(f64::total_cmp);
        let job_ms = job_delays(&bench, "low-job", 100).await;

        println!("## Jobs against the synchronous path ({n} misses, {c} clients/workers, upstream {latency:?})\n");
        println!("| | synchronous | jobs | ratio |");
        println!("|---|---|---|---|");
        println!(
            "| throughput (req/s, mean of 2 rounds each, A B B A) | {sync_rate:.0} | {job_rate:.0} | {:.2} |",
            job_rate / sync_rate
        );
        for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
            let (s, j) = (percentile(&sync_ms, p), percentile(&job_ms, p));
            println!(
                "| one at a time, {name} (ms; job = submit until a poll sees it done) | {s:.2} | {j:.2} | +{:.2} ms |",
                j - s
            );
        }
        println!("\nrounds: sync {sync:.0?}, jobs {jobs:.0?}");
        proxy.shutdown().await;
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
}

/// `--redis`: the sled queue (one deja) against the Redis queue (a deja with `[redis]`, its
/// own cache dir, the same upstream), rounds alternating (sled, Redis, Redis, sled).
async fn against_redis(n: usize, c: usize, latency: Duration) {
    let redis = RedisServer::start();
    let upstream = upstream(latency).await;
    let (local_dir, shared_dir) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (local_proxy, local) = start_proxy(upstream, local_dir.path(), c, None).await;
    let (shared_proxy, shared) =
        start_proxy(upstream, shared_dir.path(), c, Some(redis.url.clone())).await;
    local.job_rate("warm-local", 200, c).await;
    shared.job_rate("warm-shared", 200, c).await;

    // The synchronous path with `[redis]` also pays for sharing the cache (publishing each
    // miss, leases): measured too, so the queue's own share of the difference shows.
    let (mut sled, mut stream, mut sync_alone, mut sync_shared) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (round, on_sled) in [true, false, false, true].into_iter().enumerate() {
        let tag = format!("round{round}");
        if on_sled {
            sled.push(local.job_rate(&tag, n, c).await);
            sync_alone.push(local.sync_rate(&format!("sync{tag}"), n, c).await);
        } else {
            stream.push(shared.job_rate(&tag, n, c).await);
            sync_shared.push(shared.sync_rate(&format!("sync{tag}"), n, c).await);
        }
    }
    let mean = |rates: &[f64]| rates.iter().sum::<f64>() / rates.len() as f64;
    let (sled_rate, stream_rate) = (mean(&sled), mean(&stream));
    let (alone_rate, shared_rate) = (mean(&sync_alone), mean(&sync_shared));
    let mut sled_ms = job_delays(&local, "low-local-a", 50).await;
    let mut stream_ms = job_delays(&shared, "low-shared-a", 50).await;
    stream_ms.extend(job_delays(&shared, "low-shared-b", 50).await);
    sled_ms.extend(job_delays(&local, "low-local-b", 50).await);
    sled_ms.sort_by(f64::total_cmp);
    stream_ms.sort_by(f64::total_cmp);

    println!(
        "## The sled queue against the Redis queue ({n} misses, {c} clients/workers, upstream {latency:?})\n"
    );
    println!("| | sled queue (no `[redis]`) | Redis queue (`[redis]`) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| throughput (jobs/s, mean of 2 rounds each, A B B A) | {sled_rate:.0} | {stream_rate:.0} | {:.2} |",
        stream_rate / sled_rate
    );
    println!(
        "| synchronous path, same deja (req/s, same rounds) | {alone_rate:.0} | {shared_rate:.0} | {:.2} |",
        shared_rate / alone_rate
    );
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        let (a, b) = (percentile(&sled_ms, p), percentile(&stream_ms, p));
        println!(
            "| one at a time, {name} (ms, submit until a poll sees it done) | {a:.2} | {b:.2} | {:+.2} ms |",
            b - a
        );
    }
    println!(
        "\nrounds: sled {sled:.0?}, redis {stream:.0?}; sync {sync_alone:.0?}, sync with [redis] {sync_shared:.0?}"
    );
    local_proxy.shutdown().await;
    shared_proxy.shutdown().await;
}
