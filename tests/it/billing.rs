//! Every upstream call a key with limits makes is settled from what it really used: cached
//! and bypassed requests, JSON and streams (with or without `include_usage`), Responses, and
//! relayed paths. A key with a budget cannot reach a model deja has no price for.

use std::time::Duration;

use crate::support::admin::{key, managed};
use crate::support::fake_upstream::{CHAT_PATH, RESPONSES_PATH};
use crate::support::proxy::{Harness, Reply, ask, ask_stream};
use deja::config::{KeyConfig, Price};
use serde_json::{Value, json};

const TPM: u64 = 1_000_000;

fn limited(id: &str) -> KeyConfig {
    let mut key = key(id, &secret(id));
    key.tpm = TPM;
    key
}

fn secret(id: &str) -> String {
    format!("sk-deja-{id}-secret")
}

/// A long question of one-letter words: its real token count (one a word, as the fake
/// upstream counts) is far above the body-size estimate (four bytes a token).
fn long_question(tag: &str) -> String {
    format!("{tag} {}", "x ".repeat(400).trim_end())
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Prompt words of a chat body (system and user messages), as the fake upstream counts them.
fn prompt_words(body: &Value) -> u64 {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| words(m["content"].as_str().unwrap()))
        .sum()
}

async fn post(h: &Harness, id: &str, path: &str, body: &Value) -> Reply {
    let request = h
        .client
        .post(h.url(path))
        .bearer_auth(secret(id))
        .json(body);
    Reply::read(request.send().await.expect("proxy answers")).await
}

/// The key's remaining tokens once its last call has been settled (the settlement runs when
/// the response body is let go, just after the client has read it).
async fn settled_remaining(h: &Harness, id: &str, expected: u64) -> u64 {
    let mut remaining = 0;
    for _ in 0..100 {
        let stats = h.admin("GET", "/admin/stats", None).await.json();
        let key = stats["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id)
            .cloned()
            .unwrap();
        remaining = key["remaining_tokens"].as_u64().unwrap();
        if remaining == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    remaining
}

fn total(usage: &Value) -> u64 {
    let field = |a: &str, b: &str| usage[a].as_u64().or(usage[b].as_u64()).unwrap();
    field("prompt_tokens", "input_tokens") + field("completion_tokens", "output_tokens")
}

#[tokio::test]
async fn bypassed_json_answers_settle_their_real_usage() {
    let h = managed(vec![limited("stored"), limited("several")], |_| {}).await;
    for (id, field, value) in [("stored", "store", json!(true)), ("several", "n", json!(2))] {
        let mut body = ask(&long_question(id));
        body[field] = value;
        let reply = post(&h, id, CHAT_PATH, &body).await;
        assert_eq!((reply.status, reply.cache_status()), (200, "bypass"));
        let used = total(&reply.json()["usage"]);
        assert_eq!(
            settled_remaining(&h, id, TPM - used).await,
            TPM - used,
            "{id}"
        );
    }
}

#[tokio::test]
async fn streams_without_include_usage_are_settled_and_the_client_sees_no_usage() {
    let h = managed(vec![limited("cached"), limited("bypassed")], |_| {}).await;
    for id in ["cached", "bypassed"] {
        let mut body = ask_stream(&long_question(id), false);
        if id == "bypassed" {
            body["store"] = json!(true);
        }
        let reply = post(&h, id, CHAT_PATH, &body).await;
        let expected_cache = if id == "cached" { "miss" } else { "bypass" };
        assert_eq!((reply.status, reply.cache_status()), (200, expected_cache));
        // deja asked for the usage chunk; the client, who did not, gets the stream without it.
        let sent: Value =
            serde_json::from_slice(&h.upstream.last_request(CHAT_PATH).unwrap().body).unwrap();
        assert_eq!(sent["stream_options"]["include_usage"], true);
        assert!(reply.ends_with_done(), "{}", reply.text);
        for chunk in reply.chunks() {
            assert!(chunk.get("usage").is_none(), "{chunk}");
            assert_eq!(
                chunk["choices"].as_array().map(Vec::len),
                Some(1),
                "{chunk}"
            );
        }
        let used = prompt_words(&body) + words(&reply.content());
        assert_eq!(
            settled_remaining(&h, id, TPM - used).await,
            TPM - used,
            "{id}"
        );
    }
    // The stored stream carries usage, so a JSON repeat is a hit.
    let repeat = post(&h, "cached", CHAT_PATH, &ask(&long_question("cached"))).await;
    assert_eq!(repeat.cache_status(), "hit");
}

/// A chained Responses call (`previous_response_id`) bypasses the cache; its stream still
/// settles the real usage, read from `response.completed`.
#[tokio::test]
async fn a_bypassed_responses_stream_settles_from_its_completed_event() {
    let h = managed(vec![limited("alice")], |_| {}).await;
    let first = json!({"model": "gpt-4o-mini", "input": long_question("alice")});
    let first = post(&h, "alice", RESPONSES_PATH, &first).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let first = first.json();
    let used_first = total(&first["usage"]);
    let body = json!({"model": "gpt-4o-mini", "input": long_question("again"), "stream": true,
        "previous_response_id": first["id"]});
    let reply = post(&h, "alice", RESPONSES_PATH, &body).await;
    assert_eq!((reply.status, reply.cache_status()), (200, "bypass"));
    let completed = reply
        .chunks()
        .into_iter()
        .find(|event| event["type"] == "response.completed")
        .expect("a completed event");
    let used = used_first + total(&completed["response"]["usage"]);
    assert_eq!(settled_remaining(&h, "alice", TPM - used).await, TPM - used);
}

#[tokio::test]
async fn relayed_calls_cost_their_usage_or_their_size() {
    let h = managed(vec![limited("alice")], |_| {}).await;
    // The fake upstream echoes unknown paths: a JSON answer without usage, so the charge is the
    // documented one, the body's size / 4.
    let body = json!({"model": "omni-moderation-latest", "input": long_question("alice")});
    let size = serde_json::to_vec(&body).unwrap().len() as u64;
    let reply = post(&h, "alice", "/v1/moderations", &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let charged = size.div_ceil(4);
    assert_eq!(
        settled_remaining(&h, "alice", TPM - charged).await,
        TPM - charged
    );
    // Reading costs nothing.
    let listed = h
        .client
        .get(h.url("/v1/models"))
        .bearer_auth(secret("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    assert_eq!(
        settled_remaining(&h, "alice", TPM - charged).await,
        TPM - charged
    );
}

#[tokio::test]
async fn a_budget_refuses_what_deja_cannot_price() {
    let mut alice = key("alice", &secret("alice"));
    alice.budget_usd = Some(10.0);
    let h = managed(vec![alice], |c| {
        let price = Price {
            input_per_mtok: 1.0,
            output_per_mtok: 1.0,
        };
        c.pricing.insert("gpt-4o-mini".into(), price);
    })
    .await;
    let mut unpriced = ask("What is the capital of France?");
    unpriced["model"] = json!("gpt-unlisted");
    let refused = post(&h, "alice", CHAT_PATH, &unpriced).await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    let error = &refused.json()["error"];
    assert_eq!(error["code"], "model_not_priced");
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["param"], "model");
    assert!(error["message"].as_str().unwrap().contains("gpt-unlisted"));
    // A relayed call names no model deja reads: refused as well, before going upstream.
    let relayed = post(&h, "alice", "/v1/moderations", &json!({"input": "hi"})).await;
    assert_eq!(relayed.status, 403, "{}", relayed.text);
    assert_eq!(h.upstream.calls(CHAT_PATH), 0);
    assert_eq!(h.upstream.calls("/v1/moderations"), 0);
    // Priced models still pass.
    assert_eq!(
        post(&h, "alice", CHAT_PATH, &ask("hello")).await.status,
        200
    );
}

#[tokio::test]
async fn a_default_price_charges_unlisted_models() {
    let mut alice = key("alice", &secret("alice"));
    alice.budget_usd = Some(1000.0);
    let h = managed(vec![alice], |c| {
        // A dollar a token keeps the arithmetic readable.
        let price = Price {
            input_per_mtok: 1_000_000.0,
            output_per_mtok: 1_000_000.0,
        };
        c.pricing.insert("*".into(), price);
    })
    .await;
    let mut body = ask("What is the capital of France?");
    body["model"] = json!("gpt-unlisted");
    let reply = post(&h, "alice", CHAT_PATH, &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let cost = total(&reply.json()["usage"]) as f64;
    let mut spent = 0.0;
    for _ in 0..100 {
        let stats = h.admin("GET", "/admin/stats", None).await.json();
        spent = stats["keys"][0]["spent_usd"].as_f64().unwrap();
        if (spent - cost).abs() < 1e-6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!((spent - cost).abs() < 1e-6, "spent {spent}, cost {cost}");
}
