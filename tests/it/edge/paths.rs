//! Paths with more than one spelling: refused with a 400 before anything goes upstream.

use serde_json::json;

use super::raw_request;
use crate::support::admin::{key, managed};
use crate::support::fake_upstream::CHAT_PATH;
use crate::support::proxy::{Harness, KEY_A, ask};

const ALICE: &str = "sk-deja-alice-secret";

/// Other spellings of `/v1/chat/completions`.
const CHAT_SPELLINGS: [&str; 5] = [
    "/v1//chat/completions",
    "/v1/chat/completions/",
    "/v1/chat//completions",
    "/v1/chat/%63ompletions",
    "/v1/%63hat/completions",
];

fn assert_refused(reply: &super::RawReply, path: &str) {
    assert_eq!(reply.status, 400, "{path}: {}", reply.head);
    let error = &reply.json()["error"];
    assert_eq!(error["type"], "invalid_request_error", "{path}");
    assert!(
        error["message"].as_str().unwrap().contains("path"),
        "{path}"
    );
    assert!(error.get("param").is_some() && error.get("code").is_some());
}

#[tokio::test]
async fn dot_segments_never_reach_the_upstream_with_dejas_key() {
    let h = managed(vec![key("alice", ALICE)], |_| {}).await;
    let auth = format!("Bearer {ALICE}");
    for path in [
        "/v1/../secret",
        "/v1/%2e%2e/secret",
        "/v1/%2E%2e/v1/models",
        "/v1/.%2e/secret",
        "/v1/./models",
        "/v1/models/..",
        "/v1/models/%2e%2E",
    ] {
        let reply = raw_request(h.proxy.addr, "GET", path, &[("Authorization", &auth)], "").await;
        assert_refused(&reply, path);
    }
    assert_eq!(h.upstream.total_calls(), 0, "{:?}", h.upstream.requests());
    // Canonical paths (and dots in the query) still go through.
    let reply = raw_request(
        h.proxy.addr,
        "GET",
        "/v1/models?after=..%2F..",
        &[("Authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(h.upstream.requests()[0].path, "/v1/models");
}

#[tokio::test]
async fn other_spellings_of_the_chat_route_are_not_an_uncached_path() {
    let h = Harness::start().await;
    let body = ask("What is the capital of France?").to_string();
    let auth = format!("Bearer {KEY_A}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    for _ in 0..2 {
        let reply = raw_request(
            h.proxy.addr,
            "POST",
            "/v1/chat/completions",
            &headers,
            &body,
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.head);
    }
    assert_eq!(h.upstream.calls(CHAT_PATH), 1, "the repeat is a hit");
    let calls = h.upstream.total_calls();
    for path in CHAT_SPELLINGS {
        let reply = raw_request(h.proxy.addr, "POST", path, &headers, &body).await;
        assert_refused(&reply, path);
    }
    assert_eq!(
        h.upstream.total_calls(),
        calls,
        "{:?}",
        h.upstream.requests()
    );
}

#[tokio::test]
async fn other_spellings_of_the_chat_route_do_not_escape_limits() {
    let mut alice = key("alice", ALICE);
    // Smaller than any request: the chat route refuses every call of this key.
    alice.tpm = 1;
    let h = managed(vec![alice], |_| {}).await;
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        .to_string();
    let auth = format!("Bearer {ALICE}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let reply = raw_request(
        h.proxy.addr,
        "POST",
        "/v1/chat/completions",
        &headers,
        &body,
    )
    .await;
    assert_eq!(reply.status, 429, "{}", reply.body);
    assert_eq!(h.upstream.calls(CHAT_PATH), 0);
    let calls = h.upstream.total_calls();
    for path in CHAT_SPELLINGS {
        let reply = raw_request(h.proxy.addr, "POST", path, &headers, &body).await;
        assert_refused(&reply, path);
    }
    assert_eq!(
        h.upstream.total_calls(),
        calls,
        "{:?}",
        h.upstream.requests()
    );
}
