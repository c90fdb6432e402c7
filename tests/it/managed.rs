//! Managed mode: deja keys, per-key limits under concurrency, budgets, tenants of keys.

use std::time::Duration;

use crate::support::admin::{UPSTREAM_KEY, key, managed};
use crate::support::fake_upstream::CHAT_PATH;
use crate::support::proxy::{Harness, Reply, ask};
use deja::config::Price;
use futures_util::future::join_all;
use serde_json::{Value, json};

const ALICE: &str = "sk-deja-alice-secret";
const BOB: &str = "sk-deja-bob-secret";
const CAROL: &str = "sk-deja-carol-secret";

async fn chat(h: &Harness, secret: &str, body: &Value) -> Reply {
    Reply::read(h.chat_with(secret, &[], body).await).await
}

fn error_of(reply: &Reply) -> (String, String) {
    let error = &reply.json()["error"];
    (
        error["type"].as_str().unwrap_or_default().into(),
        error["code"].as_str().unwrap_or_default().into(),
    )
}

#[tokio::test]
async fn unknown_key_gets_401_in_openai_shape_and_never_reaches_upstream() {
    let h = managed(vec![key("alice", ALICE)], |_| {}).await;
    for secret in ["sk-deja-mallory", UPSTREAM_KEY] {
        let reply = chat(&h, secret, &ask("hello")).await;
        assert_eq!(reply.status, 401, "{}", reply.text);
        assert_eq!(
            error_of(&reply),
            ("invalid_request_error".into(), "invalid_api_key".into())
        );
        assert!(
            !reply.text.contains(secret),
            "the key is echoed: {}",
            reply.text
        );
    }
    let anonymous = h
        .client
        .get(h.url("/v1/models"))
        .send()
        .await
        .expect("answers");
    assert_eq!(anonymous.status(), 401);
    assert_eq!(h.upstream.total_calls(), 0);
    assert_eq!(chat(&h, ALICE, &ask("hello")).await.status, 200);
}

#[tokio::test]
async fn deja_keys_never_travel_upstream() {
    let h = managed(vec![key("alice", ALICE)], |_| {}).await;
    let reply = Reply::read(
        h.client
            .post(h.url("/v1/chat/completions"))
            .header("api-key", ALICE)
            .json(&ask("hi"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(chat(&h, ALICE, &ask("hello")).await.status, 200);
    for request in h.upstream.requests() {
        let auth = request.headers.get("authorization").unwrap();
        assert_eq!(auth, &format!("Bearer {UPSTREAM_KEY}"));
        assert!(request.headers.get("api-key").is_none());
        let all = format!("{:?}", request.headers);
        assert!(!all.contains(ALICE));
    }
}

#[tokio::test]
async fn requests_per_minute_hold_under_concurrency() {
    let mut alice = key("alice", ALICE);
    alice.rpm = 5;
    let h = managed(vec![alice], |_| {}).await;
    h.upstream.set_latency(Duration::from_millis(100));
    let replies = join_all((0..20).map(|i| {
        let h = &h;
        async move { chat(h, ALICE, &ask(&format!("question number {i:02}"))).await }
    }))
    .await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let limited: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!((ok, limited.len()), (5, 15));
    assert_eq!(h.upstream.calls(CHAT_PATH), 5);
    for reply in limited {
        assert_eq!(
            error_of(reply),
            ("requests".into(), "rate_limit_exceeded".into())
        );
        let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=12).contains(&retry), "retry-after {retry}");
        assert_eq!(reply.header("x-ratelimit-limit-requests"), Some("5"));
        assert_eq!(reply.header("x-ratelimit-remaining-requests"), Some("0"));
        assert!(reply.header("x-ratelimit-reset-requests").is_some());
    }
    // The bucket refills at 5 a minute: one request every 12 s.
    h.clock.advance(Duration::from_secs(12));
    assert_eq!(chat(&h, ALICE, &ask("after a while")).await.status, 200);
    assert_eq!(chat(&h, ALICE, &ask("too soon")).await.status, 429);
}

#[tokio::test]
async fn hits_count_toward_requests_but_not_tokens() {
    let mut alice = key("alice", ALICE);
    alice.rpm = 4;
    // One estimate (body/4 + max_tokens) fits; after the real usage is settled, a second
    // miss does not.
    alice.tpm = 150;
    let h = managed(vec![alice], |_| {}).await;
    let mut question = ask("What is the capital of France?");
    question["max_tokens"] = json!(100);
    let first = chat(&h, ALICE, &question).await;
    assert_eq!((first.status, first.cache_status()), (200, "miss"));
    for _ in 0..2 {
        let hit = chat(&h, ALICE, &question).await;
        assert_eq!(
            (hit.status, hit.cache_status()),
            (200, "hit"),
            "{}",
            hit.text
        );
    }
    let mut other = ask("What is the capital of Spain?");
    other["max_tokens"] = json!(100);
    let refused = chat(&h, ALICE, &other).await;
    assert_eq!(refused.status, 429, "{}", refused.text);
    assert_eq!(
        error_of(&refused),
        ("tokens".into(), "rate_limit_exceeded".into())
    );
    assert!(refused.header("x-ratelimit-remaining-tokens").is_some());
    // That was request 4 of 4 this minute: a fifth is refused even though it would hit.
    let fifth = chat(&h, ALICE, &question).await;
    assert_eq!(fifth.status, 429);
    assert_eq!(error_of(&fifth).0, "requests");
    assert_eq!(h.upstream.calls(CHAT_PATH), 1);
}

#[tokio::test]
async fn tokens_per_minute_hold_under_concurrency() {
    let mut alice = key("alice", ALICE);
    alice.tpm = 1000;
    let h = managed(vec![alice], |_| {}).await;
    // Overlapping calls: every reservation is made before any is settled.
    h.upstream.set_latency(Duration::from_millis(300));
    let bodies: Vec<Value> = (0..10)
        .map(|i| {
            let mut body = ask(&format!("question number {i:02}"));
            body["max_tokens"] = json!(200);
            body
        })
        .collect();
    let estimate = serde_json::to_vec(&bodies[0]).unwrap().len().div_ceil(4) + 200;
    let replies = join_all(bodies.iter().map(|body| chat(&h, ALICE, body))).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    assert_eq!(ok, 1000 / estimate, "estimate {estimate}");
    assert!(replies.iter().all(|r| r.status == 200 || r.status == 429));
    assert_eq!(h.upstream.calls(CHAT_PATH), ok);
}

#[tokio::test]
async fn budget_is_enforced_and_settled_from_real_usage() {
    let mut alice = key("alice", ALICE);
    alice.budget_usd = Some(40.0);
    let h = managed(vec![alice], |c| {
        // A dollar a token keeps the arithmetic readable.
        let price = Price {
            input_per_mtok: 1_000_000.0,
            output_per_mtok: 1_000_000.0,
        };
        c.pricing.insert("gpt-4o-mini".into(), price);
    })
    .await;
    let first = chat(&h, ALICE, &ask("What is the capital of France?")).await;
    assert_eq!(first.status, 200);
    let usage = &first.json()["usage"];
    let cost =
        usage["prompt_tokens"].as_f64().unwrap() + usage["completion_tokens"].as_f64().unwrap();
    let stats = h.admin("GET", "/admin/stats", None).await.json();
    let spent = stats["keys"][0]["spent_usd"].as_f64().unwrap();
    assert!((spent - cost).abs() < 1e-6, "spent {spent}, cost {cost}");
    // The next estimate (~45 tokens of prompt) no longer fits in what is left.
    let refused = chat(&h, ALICE, &ask("What is the capital of Spain?")).await;
    assert_eq!(refused.status, 429, "{}", refused.text);
    assert_eq!(
        error_of(&refused),
        ("insufficient_quota".into(), "insufficient_quota".into())
    );
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!(retry <= 24 * 3600);
    // A hit costs nothing and is still served.
    let hit = chat(&h, ALICE, &ask("What is the capital of France?")).await;
    assert_eq!((hit.status, hit.cache_status()), (200, "hit"));
}

#[tokio::test]
async fn keys_share_entries_only_within_their_tenant() {
    let mut alice = key("alice", ALICE);
    alice.tenant = Some("team-a".into());
    let mut bob = key("bob", BOB);
    bob.tenant = Some("team-a".into());
    let carol = key("carol", CAROL);
    let h = managed(vec![alice, bob, carol], |_| {}).await;
    let question = ask("What is the capital of France?");
    assert_eq!(chat(&h, ALICE, &question).await.cache_status(), "miss");
    assert_eq!(chat(&h, BOB, &question).await.cache_status(), "hit");
    assert_eq!(chat(&h, CAROL, &question).await.cache_status(), "miss");
}

#[tokio::test]
async fn a_key_namespace_confines_its_requests() {
    let mut alice = key("alice", ALICE);
    alice.tenant = Some("team-a".into());
    alice.namespace = Some("support".into());
    let mut bob = key("bob", BOB);
    bob.tenant = Some("team-a".into());
    let h = managed(vec![alice, bob], |_| {}).await;
    let question = ask("What is the capital of France?");
    assert_eq!(chat(&h, ALICE, &question).await.cache_status(), "miss");
    assert_eq!(chat(&h, BOB, &question).await.cache_status(), "miss");
    // Bob naming alice's namespace in the header still cannot reach her entries.
    let reply = Reply::read(
        h.chat_with(BOB, &[("x-deja-namespace", "support")], &question)
            .await,
    )
    .await;
    assert_eq!(reply.cache_status(), "miss");
    assert_eq!(chat(&h, ALICE, &question).await.cache_status(), "hit");
}
