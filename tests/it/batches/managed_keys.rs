//! Managed mode: batch calls need a deja key, and the lines a batch sends upstream count
//! against it as their synchronous calls would.

use super::*;
use crate::support::admin::{key, managed};
use deja::config::Price;

const ALICE: &str = "sk-deja-alice-secret";
const BOB: &str = "sk-deja-bob-secret";

fn error_of(body: &Value) -> (&str, &str) {
    let error = &body["error"];
    (
        error["type"].as_str().unwrap_or_default(),
        error["code"].as_str().unwrap_or_default(),
    )
}

/// A dollar a token for the lines' model; relayed calls (uploads) cost nothing.
fn priced(c: &mut deja::config::Config) {
    let price = |usd: f64| Price {
        input_per_mtok: usd * 1_000_000.0,
        output_per_mtok: usd * 1_000_000.0,
    };
    c.pricing.insert("gpt-4o-mini".into(), price(1.0));
    c.pricing.insert("*".into(), price(0.0));
}

async fn spent(h: &Harness, id: &str) -> f64 {
    let stats = h.admin("GET", "/admin/stats", None).await.json();
    let keys = stats["keys"].as_array().expect("keys");
    let key = keys.iter().find(|k| k["id"] == id).expect("the key");
    key["spent_usd"].as_f64().expect("spent")
}

#[tokio::test]
async fn batch_calls_without_a_known_key_get_401() {
    let h = managed(vec![key("alice", ALICE)], |_| {}).await;
    let file = upload(&h, ALICE, &jsonl(&[line("1", NEW_C)])).await;
    for secret in ["", "sk-deja-mallory"] {
        let (status, body) = create(&h, secret, &file).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(
            error_of(&body),
            ("invalid_request_error", "invalid_api_key")
        );
        for path in [
            "/v1/batches",
            "/v1/batches/batch_deja_0123",
            "/v1/files/file-deja-0123",
            "/v1/files/file-deja-0123/content",
        ] {
            let (status, text) = get(&h, secret, path).await;
            assert_eq!(status, 401, "{path}: {text}");
        }
    }
    assert_eq!(h.upstream.batches_created(), 0);
    let (status, body) = create(&h, ALICE, &file).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn each_line_sent_is_a_request_of_the_keys_rpm() {
    let mut alice = key("alice", ALICE);
    alice.rpm = 4;
    let h = managed(vec![alice], |_| {}).await;
    let four: Vec<Value> = (0..4)
        .map(|i| line(&format!("l{i}"), &format!("question number {i}")))
        .collect();
    // The upload is request 1: three are left, and the batch would send four.
    let file = upload(&h, ALICE, &jsonl(&four)).await;
    let (status, body) = create(&h, ALICE, &file).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(error_of(&body), ("requests", "rate_limit_exceeded"));
    assert_eq!(h.upstream.batches_created(), 0);
    // Nothing was taken by the refusal: an upload and a batch of two still fit.
    let file = upload(&h, ALICE, &jsonl(&four[..2])).await;
    let (status, body) = create(&h, ALICE, &file).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(h.upstream.batches_created(), 1);
    // And that was the minute's last request.
    let (status, _) = get(&h, ALICE, "/v1/batches").await;
    assert_eq!(status, 429);
}

#[tokio::test]
async fn a_batch_over_the_keys_tokens_or_budget_is_refused() {
    let mut alice = key("alice", ALICE);
    alice.tpm = 1000;
    let mut bob = key("bob", BOB);
    bob.budget_usd = Some(30.0);
    let h = managed(vec![alice, bob], priced).await;
    // Four lines of ~300 tokens each: more than a minute of alice's 1,000.
    let lines: Vec<Value> = (0..4)
        .map(|i| {
            let mut line = line(&format!("l{i}"), &format!("question number {i}"));
            line["body"]["max_tokens"] = json!(300);
            line
        })
        .collect();
    let file = upload(&h, ALICE, &jsonl(&lines)).await;
    let (status, body) = create(&h, ALICE, &file).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(error_of(&body), ("tokens", "rate_limit_exceeded"));
    // Two lines of ~40 prompt tokens at a dollar a token: more than bob's $30.
    let file = upload(&h, BOB, &jsonl(&[line("c", NEW_C), line("d", NEW_D)])).await;
    let (status, body) = create(&h, BOB, &file).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        error_of(&body),
        ("insufficient_quota", "insufficient_quota")
    );
    assert_eq!(h.upstream.batches_created(), 0);
    assert_eq!(h.upstream.calls("/v1/chat/completions"), 0);
}

#[tokio::test]
async fn a_limited_keys_batch_too_large_to_read_is_refused_not_relayed() {
    let mut alice = key("alice", ALICE);
    alice.rpm = 100;
    let h = managed(vec![alice, key("bob", BOB)], |_| {}).await;
    let lines: Vec<Value> = (0..20)
        .map(|i| line(&format!("l{i}"), &format!("question number {i}")))
        .collect();
    let file = upload(&h, ALICE, &jsonl(&lines)).await;
    let mut config = (**h.proxy.app.config()).clone();
    config.server.max_body_bytes = 1024;
    h.proxy.app.replace_config(config);
    let (status, body) = create(&h, ALICE, &file).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "input_file_id");
    assert_eq!(h.upstream.batches_created(), 0);
    // A key without limits has nothing to count: its batch is relayed, as without keys.
    let (status, body) = create(&h, BOB, &file).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(h.upstream.batches_created(), 1);
}

#[tokio::test]
async fn a_budget_key_cannot_batch_an_unpriced_model() {
    let mut bob = key("bob", BOB);
    bob.budget_usd = Some(30.0);
    let h = managed(vec![key("alice", ALICE), bob], |_| {}).await;
    // Uploaded by a key without a budget (bob's own relayed upload has no price either).
    let file = upload(&h, ALICE, &jsonl(&[line("c", NEW_C)])).await;
    let (status, body) = create(&h, BOB, &file).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        error_of(&body),
        ("invalid_request_error", "model_not_priced")
    );
    assert_eq!(h.upstream.batches_created(), 0);
}

#[tokio::test]
async fn the_budget_is_settled_from_the_lines_real_usage_and_hits_are_free() {
    let mut alice = key("alice", ALICE);
    alice.budget_usd = Some(1_000_000.0);
    let h = managed(vec![alice], priced).await;
    h.upstream.set_deterministic(true);
    h.upstream.set_batch_polls(2);
    let hit = Reply::read(h.chat_with(ALICE, &[], &ask(CACHED_A)).await).await;
    assert_eq!(hit.status, 200);
    let before = spent(&h, "alice").await;
    let input = jsonl(&[
        line("a", CACHED_A),
        line("c", NEW_C),
        line("d", NEW_D),
        line("c-again", NEW_C),
    ]);
    let file = upload(&h, ALICE, &input).await;
    let (status, batch) = create(&h, ALICE, &file).await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["status"], "in_progress");
    // Reserved: the estimate of the two distinct lines sent (prompt ~ body / 4).
    let estimate: usize = [NEW_C, NEW_D]
        .iter()
        .map(|q| serde_json::to_vec(&ask(q)).unwrap().len().div_ceil(4))
        .sum();
    let reserved = spent(&h, "alice").await - before;
    assert!(
        (reserved - estimate as f64).abs() < 1e-6,
        "{reserved} vs {estimate}"
    );

    let id = batch["id"].as_str().unwrap();
    let done = loop {
        let (_, text) = get(&h, ALICE, &format!("/v1/batches/{id}")).await;
        let batch: Value = serde_json::from_str(&text).unwrap();
        if batch["status"] == "completed" {
            break batch;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (_, text) = get(
        &h,
        ALICE,
        &format!(
            "/v1/files/{}/content",
            done["output_file_id"].as_str().unwrap()
        ),
    )
    .await;
    let used: f64 = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["custom_id"] == "c" || l["custom_id"] == "d")
        .map(|l| {
            let usage = &l["response"]["body"]["usage"];
            usage["prompt_tokens"].as_f64().unwrap() + usage["completion_tokens"].as_f64().unwrap()
        })
        .sum();
    assert!((used - estimate as f64).abs() > 1.0, "a test that can tell");
    let settled = spent(&h, "alice").await - before;
    assert!((settled - used).abs() < 1e-6, "{settled} vs {used}");
}
