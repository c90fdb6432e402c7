//! Section 3: semantic hits with the local embedder. Each worker asks its own rewording of the
//! stored question (the same words with a different number of trailing spaces, so the exact
//! keys differ and no two workers coalesce, while the embedding is the same), so every request
//! is an exact miss, an embedding and a semantic lookup. Interleaved with the bare server, like
//! section 1. Skipped, saying why, when the model is not on disk (`scripts/fetch-model.sh`).

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};

use super::{
    CHAT_PATH, CONCURRENCY, Expect, HIT_PROMPT, Plan, Servers, Target, cache_header, chat_body,
    http_client, interleaved, pct_us, send_whole, uri,
};
use deja::clock::SystemClock;
use deja::config::{Config, EmbeddingProvider};

/// A rewording the local model scores well above the threshold below.
const PARAPHRASE: &str = "What is the capital city of France?";
const THRESHOLD: f32 = 0.85;

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2")
}

pub async fn semantic_section(servers: &Servers, plan: Plan) {
    println!("## 3. Semantic hits with the local embedder (all-MiniLM-L6-v2, CPU)\n");
    let dir = model_dir();
    if !dir.join("model.safetensors").exists() {
        println!(
            "Skipped: no model in {} (run `scripts/fetch-model.sh`).\n",
            dir.display()
        );
        return;
    }
    let store = tempfile::tempdir().expect("tempdir");
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.upstream.base_url = format!("http://{}/v1", servers.upstream.addr);
    config.cache.dir = store.path().join("cache");
    config.cache.similarity_threshold = THRESHOLD;
    config.embedding.provider = EmbeddingProvider::Local;
    config.embedding.model_dir = dir;
    config.validate().expect("valid config");
    let deja = deja::server::start(config, Arc::new(SystemClock))
        .await
        .expect("deja with the local embedder starts");

    let client = http_client(1);
    let target_uri = uri(deja.addr, CHAT_PATH);
    let (status, _, _) = send_whole(&client, &target_uri, chat_body(HIT_PROMPT, false)).await;
    assert_eq!(status, StatusCode::OK);
    let (_, headers, _) = send_whole(&client, &target_uri, chat_body(PARAPHRASE, false)).await;
    let matched = headers.get("x-deja-match").map(HeaderValue::as_bytes);
    if cache_header(&headers) != "hit" || matched != Some(&b"semantic"[..]) {
        println!(
            "Skipped: {PARAPHRASE:?} was not a semantic hit for {HIT_PROMPT:?} (best similarity \
             {:?}).\n",
            headers.get("x-deja-best-similarity")
        );
        deja.shutdown().await;
        return;
    }
    let similarity = headers
        .get("x-deja-similarity")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string();
    drop(client);

    println!(
        "Stored {HIT_PROMPT:?}; each worker asks {PARAPHRASE:?} (similarity {similarity}, \
         threshold {THRESHOLD}) with its own number of trailing spaces, so every request embeds \
         its prompt and searches the index; every response was checked for \
         `x-deja-match: semantic`. Baseline: the bare server of section 1, interleaved.\n"
    );
    println!(
        "| concurrency | server | requests/s | p50 (µs) | p99 (µs) | p99.9 (µs) | server CPU/request (µs) | throughput vs bare |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let bodies: Vec<Bytes> = (0..CONCURRENCY[CONCURRENCY.len() - 1])
        .map(|i| chat_body(&format!("{PARAPHRASE}{}", " ".repeat(i + 1)), false))
        .collect();
    let bare = Target {
        uri: uri(servers.bare.addr, CHAT_PATH),
        method: Method::POST,
        body: bodies[0].clone(),
        expect: Expect::Anything,
        per_worker: None,
    };
    let semantic = Target {
        uri: target_uri,
        method: Method::POST,
        body: bodies[0].clone(),
        expect: Expect::Semantic,
        per_worker: Some(Arc::new(bodies)),
    };
    let targets = [
        ("bare hyper (baseline)", &bare),
        ("deja semantic hit", &semantic),
    ];
    for concurrency in CONCURRENCY {
        let loads = interleaved(&targets, concurrency, plan).await;
        let bare_rate = loads[0].rate();
        for (i, (name, load)) in targets.iter().map(|t| t.0).zip(loads.iter()).enumerate() {
            let ratio = if i == 0 {
                "1 (baseline)".to_string()
            } else {
                format!("{:.4}", load.rate() / bare_rate)
            };
            println!(
                "| {concurrency} | {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {ratio} |",
                load.rate(),
                pct_us(&load.latencies_ns, 0.5),
                pct_us(&load.latencies_ns, 0.99),
                pct_us(&load.latencies_ns, 0.999),
                load.server_cpu_per_request_us(),
            );
        }
    }
    println!(
        "\nA semantic hit is an embedding (a forward pass of the model on this CPU) plus a \
         lookup; the embedding dominates, and concurrent prompts are batched.\n"
    );
    deja.shutdown().await;
    drop(store);
}
