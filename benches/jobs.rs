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

fn main() {
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
    runtime.block_on(async move {
        let upstream = upstream(latency).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".parse().expect("addr");
        config.upstream.base_url = format!("http://{upstream}/v1");
        config.cache.dir = dir.path().join("cache");
        config.cache.semantic = false;
        config.jobs.concurrency = c;
        let proxy = deja::edge::server::start(config, std::sync::Arc::new(SystemClock))
            .await
            .expect("deja starts");
        let bench = Bench {
            base: format!("http://{}", proxy.addr),
            client: reqwest::Client::builder().no_proxy().build().expect("client"),
        };
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
        let mut job_ms = Vec::new();
        for i in 0..100 {
            let start = Instant::now();
            bench.sync_one(&ask("low-sync", i)).await;
            sync_ms.push(start.elapsed().as_secs_f64() * 1000.0);
            let start = Instant::now();
            let id = bench.submit(&ask("low-job", i)).await;
            bench.wait(&id, Duration::from_micros(500)).await;
            job_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        sync_ms.sort_by(f64::total_cmp);
        job_ms.sort_by(f64::total_cmp);

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
