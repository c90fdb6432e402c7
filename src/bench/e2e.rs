//! `deja bench quality --e2e`: the pairs through a running deja over HTTP, against a fake
//! upstream that counts its calls and answers each prompt with the prompt itself (so the
//! answer served tells which prompt it was generated for).
//!
//! Phase 1 sends every `a` with `Cache-Control: no-cache`, so each one goes upstream and is
//! stored, as in the in-process run (without it, an `a` close to an earlier one would hit and
//! never be stored). Phase 2 sends every `b` with `Cache-Control: no-store`, so a `b` is only
//! ever answered by an `a`. Phase 2 should then match the verified row of
//! `quality-NAME.json` at the same threshold, give or take coalesced twins. Requests go 32 at a
//! time, as concurrent clients would.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::metrics::{Judge, Pair, Verdict};
use crate::cache::verify::VerifyConfig;
use crate::clock::SystemClock;
use crate::config::Config;

const CONCURRENT_REQUESTS: usize = 32;

#[derive(Debug, Serialize)]
pub struct E2eReport {
    pub name: String,
    pub pairs: usize,
    pub threshold: f32,
    pub verify: VerifyConfig,
    /// Upstream calls while the `a`s were sent (one each, but for coalesced twins).
    pub store_calls: usize,
    /// Upstream calls while the `b`s were sent: the misses.
    pub query_calls: usize,
    /// `b`s answered by deja: exact, semantic and coalesced hits.
    pub exact: usize,
    pub semantic: usize,
    pub coalesced: usize,
    pub right: usize,
    /// Hits the file labels wrong.
    pub wrong: usize,
    /// Hits on a stored text the file does not label against the query.
    pub unlabelled: usize,
    /// Right hits on label-1 pairs / label-1 pairs.
    pub hit_rate: f64,
    /// Upstream calls the cache saved in phase 2: queries − calls.
    pub saved: usize,
    pub seconds: f64,
}

/// Runs one pair file end to end.
pub async fn run(name: &str, pairs: &[Pair], config: &Config) -> Result<E2eReport, String> {
    let started = Instant::now();
    let calls = Arc::new(AtomicUsize::new(0));
    let (upstream, fake) = fake_upstream(calls.clone()).await?;
    let dir = std::env::temp_dir().join(format!("deja-e2e-{}-{name}", std::process::id()));
    let mut config = config.clone();
    config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.upstream.base_url = format!("http://{upstream}/v1");
    config.upstream.api_key = None;
    config.cache.dir = dir.clone();
    config.cache.ttl_secs = 10 * 365 * 24 * 3600;
    let threshold = config.cache.similarity_threshold;
    let verify = config.cache.verify.clone();
    let server = crate::server::start(config, Arc::new(SystemClock))
        .await
        .map_err(|e| format!("starting deja: {e}"))?;
    let url = format!("http://{}/v1/chat/completions", server.addr);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;

    let send = |text: String, store: bool| {
        let (client, url) = (client.clone(), url.clone());
        async move { ask(&client, &url, &text, store).await }
    };
    let mut stored = futures_util::stream::iter(pairs.iter().map(|p| send(p.a.clone(), true)))
        .buffer_unordered(CONCURRENT_REQUESTS);
    while let Some(answer) = stored.next().await {
        answer?;
    }
    let store_calls = calls.load(Ordering::SeqCst);
    eprintln!(
        "  e2e: {} `a` requests, {store_calls} upstream calls",
        pairs.len()
    );

    let answers: Vec<Result<Served, String>> =
        futures_util::stream::iter(pairs.iter().map(|p| send(p.b.clone(), false)))
            .buffered(CONCURRENT_REQUESTS)
            .collect()
            .await;
    let query_calls = calls.load(Ordering::SeqCst) - store_calls;
    server.shutdown().await;
    fake.abort();
    let _ = std::fs::remove_dir_all(&dir);

    let judge = Judge::new(pairs);
    let mut report = E2eReport {
        name: name.into(),
        pairs: pairs.len(),
        threshold,
        verify,
        store_calls,
        query_calls,
        exact: 0,
        semantic: 0,
        coalesced: 0,
        right: 0,
        wrong: 0,
        unlabelled: 0,
        hit_rate: 0.0,
        saved: pairs.len().saturating_sub(query_calls),
        seconds: 0.0,
    };
    let mut right_label1 = 0;
    for (pair, served) in pairs.iter().zip(answers) {
        let served = served?;
        match served.matched.as_deref() {
            None => continue,
            Some("exact") => report.exact += 1,
            Some("semantic") => report.semantic += 1,
            Some(_) => report.coalesced += 1,
        }
        match judge.verdict(pair, &served.content) {
            Verdict::Right => {
                report.right += 1;
                right_label1 += usize::from(pair.label == 1);
            }
            Verdict::Wrong => report.wrong += 1,
            Verdict::Unlabelled => report.unlabelled += 1,
        }
    }
    let label1 = pairs.iter().filter(|p| p.label == 1).count();
    report.hit_rate = right_label1 as f64 / label1.max(1) as f64;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

impl E2eReport {
    pub fn markdown(&self) -> String {
        let hits = self.exact + self.semantic + self.coalesced;
        format!(
            "## deja bench quality --e2e: {}\n\n\
             {} pairs through a running deja (HTTP, threshold {:.2}, verification {}) and a \
             fake upstream. {:.0} s. Every `a` is sent with `Cache-Control: no-cache` (stored), \
             then every `b` with `no-store`; compare with the in-process row at this \
             threshold.\n\n\
             | | count |\n|---|---|\n\
             | upstream calls storing the `a`s | {} |\n\
             | `b` queries | {} |\n\
             | upstream calls for the `b`s (misses) | {} |\n\
             | upstream calls saved | {} ({:.1}%) |\n\
             | hits (exact / semantic / coalesced) | {hits} ({} / {} / {}) |\n\
             | right / wrong / unlabelled hits | {} / {} / {} |\n\
             | hit rate on label-1 pairs | {:.1}% |\n",
            self.name,
            self.pairs,
            self.threshold,
            if self.verify.enabled { "on" } else { "off" },
            self.seconds,
            self.store_calls,
            self.pairs,
            self.query_calls,
            self.saved,
            100.0 * self.saved as f64 / self.pairs.max(1) as f64,
            self.exact,
            self.semantic,
            self.coalesced,
            self.right,
            self.wrong,
            self.unlabelled,
            100.0 * self.hit_rate,
        )
    }
}

/// What deja answered to one prompt.
struct Served {
    /// `x-deja-match` of a hit; `None` for a miss.
    matched: Option<String>,
    content: String,
}

async fn ask(
    client: &reqwest::Client,
    url: &str,
    text: &str,
    store: bool,
) -> Result<Served, String> {
    let body = json!({
        "model": super::quality::MODEL,
        "messages": [
            {"role": "system", "content": super::quality::SYSTEM},
            {"role": "user", "content": text},
        ],
    });
    let control = if store { "no-cache" } else { "no-store" };
    let request = client
        .post(url)
        .header("authorization", "Bearer sk-deja-bench")
        .header("cache-control", control)
        .json(&body);
    let response = request.send().await.map_err(|e| format!("deja: {e}"))?;
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let hit = header(crate::wire::headers::CACHE.as_str()).as_deref() == Some("hit");
    let matched = if hit {
        header(crate::wire::headers::MATCH.as_str())
    } else {
        None
    };
    let json: Value = response.json().await.map_err(|e| format!("deja: {e}"))?;
    if !status.is_success() {
        return Err(format!("deja answered {status}: {json}"));
    }
    let content = json["choices"][0]["message"]["content"]
        .as_str()
        .ok_or("deja's answer has no content")?;
    Ok(Served {
        matched,
        content: content.to_string(),
    })
}

/// An OpenAI-shaped chat endpoint on a free local port that answers each prompt with itself.
async fn fake_upstream(
    calls: Arc<AtomicUsize>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), String> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| format!("fake upstream: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let calls = calls.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<Incoming>| {
                    let calls = calls.clone();
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let body = request.into_body().collect().await;
                        let body: Value = body
                            .ok()
                            .and_then(|b| serde_json::from_slice(&b.to_bytes()).ok())
                            .unwrap_or_default();
                        let prompt = body["messages"]
                            .as_array()
                            .and_then(|m| m.last())
                            .and_then(|m| m["content"].as_str())
                            .unwrap_or_default();
                        let answer = json!({
                            "id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
                            "model": body["model"],
                            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
                                "message": {"role": "assistant", "content": prompt}}],
                            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                        });
                        let response = hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(answer.to_string())));
                        Ok::<_, Infallible>(response.unwrap_or_default())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, task))
}
