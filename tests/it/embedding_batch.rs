//! With the `openai` embedder, prompts waiting at the same time share one `/embeddings` call,
//! each still gets its own vector, and a call's failure stays with that call's prompts: an
//! input past the model's window fails only itself, other keys' prompts go in calls of their
//! own.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::fake_upstream::script::Scripted;
use crate::support::fake_upstream::{
    CHAT_PATH, EMBED_DIM, EMBEDDINGS_PATH, EmbedMode, RecordedRequest,
};
use crate::support::proxy::{Harness, KEY_A, KEY_B, Reply, ask};
use futures_util::future::join_all;
use serde_json::Value;

/// Prompts sent at once: the figure of issue 15 (calls per miss below 0.2 at 64).
const CONCURRENT: usize = 64;

/// A wide window and slow calls, so that prompts sent together share calls however the test
/// machine schedules them: what is tested is that they do, not how fast. (An idle embedder
/// sends the first prompt alone at once; the others queue while that call is out.)
async fn batching_harness() -> Harness {
    let h = Harness::with(|c| c.embedding.batch_wait_ms = 200).await;
    h.upstream.set_embed_latency(Duration::from_millis(100));
    h
}

fn basis(i: usize) -> Vec<f32> {
    let mut v = vec![0.0; EMBED_DIM];
    v[i] = 1.0;
    v
}

/// The `input` array of each embeddings call.
fn inputs(request: &RecordedRequest) -> Vec<String> {
    let body: Value = serde_json::from_slice(&request.body).expect("JSON body");
    body["input"]
        .as_array()
        .expect("an input array")
        .iter()
        .map(|text| text.as_str().expect("text input").to_owned())
        .collect()
}

fn embedding_calls(h: &Harness) -> Vec<RecordedRequest> {
    let requests = h.upstream.requests();
    requests
        .into_iter()
        .filter(|r| r.path == EMBEDDINGS_PATH)
        .collect()
}

async fn all_at_once(h: &Harness, key: &str, prompts: &[String]) -> Vec<Reply> {
    join_all(
        prompts
            .iter()
            .map(|p| async move { Reply::read(h.chat_with(key, &[], &ask(p)).await).await }),
    )
    .await
}

#[tokio::test]
async fn concurrent_misses_share_embedding_calls_and_keep_their_own_vectors() {
    let h = batching_harness().await;
    // Question i and its rewording have vector i, orthogonal to every other question's.
    let questions: Vec<String> = (0..CONCURRENT).map(|i| format!("question {i}")).collect();
    for (i, question) in questions.iter().enumerate() {
        h.upstream.set_embedding(question, basis(i));
        h.upstream.set_embedding(&format!("reworded {i}"), basis(i));
    }

    let replies = all_at_once(&h, KEY_A, &questions).await;
    for reply in &replies {
        assert_eq!((reply.status, reply.cache_status()), (200, "miss"));
    }
    let calls = embedding_calls(&h);
    let per_miss = calls.len() as f64 / CONCURRENT as f64;
    assert!(
        per_miss < 0.2,
        "{} embedding calls for {CONCURRENT} concurrent misses",
        calls.len()
    );
    let mut embedded: Vec<String> = calls.iter().flat_map(inputs).collect();
    embedded.sort();
    let mut expected = questions.clone();
    expected.sort();
    assert_eq!(embedded, expected, "every prompt embedded once");
    assert_eq!(h.cache().indexed(), CONCURRENT);

    // Each entry was indexed under its own question's vector: the rewording of question i
    // finds question i's answer.
    let rewordings: Vec<String> = (0..CONCURRENT).map(|i| format!("reworded {i}")).collect();
    let hits = all_at_once(&h, KEY_A, &rewordings).await;
    for (i, (hit, first)) in hits.iter().zip(&replies).enumerate() {
        assert_eq!(hit.header("x-deja-match"), Some("semantic"), "reworded {i}");
        assert_eq!(hit.content(), first.content(), "reworded {i}");
    }
    assert_eq!(h.upstream.calls(CHAT_PATH), CONCURRENT);
}

#[tokio::test]
async fn a_prompt_past_the_window_fails_alone_in_its_batch() {
    let h = batching_harness().await;
    h.upstream.set_embed_mode(EmbedMode::Window(40));
    let long = "Here is a long description of our refund policy and shipping rules. ".repeat(5);
    let prompts: Vec<String> = (0..8)
        .map(|i| match i {
            0 | 5 => format!("{long} Question {i}?"),
            _ => format!("Short question {i}?"),
        })
        .collect();

    let replies = all_at_once(&h, KEY_A, &prompts).await;
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!((reply.status, reply.cache_status()), (200, "miss"));
        let skipped = reply.header("x-deja-semantic-skipped");
        if i == 0 || i == 5 {
            assert_eq!(skipped, Some("too-long"), "prompt {i}");
        } else {
            assert_eq!(skipped, None, "prompt {i} was embedded");
        }
    }
    assert_eq!(
        h.cache().indexed(),
        6,
        "the short prompts got their vectors"
    );
    // A long prompt shared a call with short ones: that call was refused, and its prompts
    // were sent again one by one.
    let calls: Vec<Vec<String>> = embedding_calls(&h).iter().map(inputs).collect();
    let mixed = calls
        .iter()
        .position(|call| call.len() > 1 && call.iter().any(|p| p.starts_with(&long)))
        .expect("a call mixing long and short prompts");
    for prompt in &calls[mixed] {
        let alone = calls.iter().filter(|call| call == &&vec![prompt.clone()]);
        assert_eq!(alone.count(), 1, "{prompt:?} sent again alone");
    }
}

#[tokio::test]
async fn a_failed_call_is_a_miss_for_its_prompts_only() {
    let h = batching_harness().await;
    h.upstream.script(
        EMBEDDINGS_PATH,
        [Scripted::error(500, "the first call fails")],
    );
    let prompts: Vec<String> = (0..8).map(|i| format!("question {i}")).collect();
    for reply in all_at_once(&h, KEY_A, &prompts).await {
        assert_eq!((reply.status, reply.cache_status()), (200, "miss"));
    }
    // The prompts of the failed call have no vector; every other prompt has one. (The first
    // prompt usually goes alone, as the embedder is idle, and the others in later calls.)
    let failed = inputs(&embedding_calls(&h)[0]).len();
    assert_eq!(h.cache().indexed(), prompts.len() - failed);
}

#[tokio::test]
async fn prompts_of_different_keys_never_share_a_call() {
    // No key of deja's own: each caller's key pays for its own prompts.
    let h = batching_harness().await;
    let of = |key: &str| -> Vec<String> { (0..8).map(|i| format!("{key} asks {i}")).collect() };
    let (a, b) = (of(KEY_A), of(KEY_B));
    let (ra, rb) = tokio::join!(all_at_once(&h, KEY_A, &a), all_at_once(&h, KEY_B, &b));
    assert!(ra.iter().chain(&rb).all(|r| r.cache_status() == "miss"));

    let calls = embedding_calls(&h);
    let mut seen = HashSet::new();
    for call in &calls {
        let auth = call.headers["authorization"].to_str().unwrap().to_owned();
        let key = auth.strip_prefix("Bearer ").expect("bearer");
        for input in inputs(call) {
            assert!(input.starts_with(key), "{input:?} sent with {key}'s key");
            seen.insert(input);
        }
    }
    assert_eq!(seen.len(), a.len() + b.len());
    assert!(
        calls.len() <= 6,
        "{} calls: prompts were batched",
        calls.len()
    );
}
