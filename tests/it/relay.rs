//! Everything that is not cached is relayed faithfully; deja's own failures are
//! OpenAI-shaped errors with the right status.

use std::time::Duration;

use crate::support::fake_upstream::{CHAT_PATH, ChatMode};
use crate::support::proxy::{Harness, KEY_A, Reply, ask};
use serde_json::Value;

#[tokio::test]
async fn unknown_paths_are_relayed_with_method_query_headers_and_body() {
    let h = Harness::start().await;
    let response = h
        .client
        .put(h.url("/v1/some/new/endpoint?limit=2&after=x"))
        .bearer_auth(KEY_A)
        .header("openai-beta", "assistants=v2")
        .header("x-deja-namespace", "stays-here")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .body("raw body bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-fake-upstream"], "echo");
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/v1/some/new/endpoint");
    assert_eq!(echo["query"], "limit=2&after=x");
    assert_eq!(echo["body"], "raw body bytes");
    let headers = &echo["headers"];
    assert_eq!(headers["authorization"], format!("Bearer {KEY_A}"));
    assert_eq!(headers["openai-beta"], "assistants=v2");
    assert!(
        headers.get("x-deja-namespace").is_none(),
        "deja's headers stop here"
    );
    assert!(
        headers.get("x-hop").is_none(),
        "hop-by-hop headers are dropped"
    );
}

#[tokio::test]
async fn configured_upstream_key_replaces_the_callers() {
    let h = Harness::with(|c| c.upstream.api_key = Some(deja::config::Secret::new("sk-upstream")))
        .await;
    h.client
        .get(h.url("/v1/models"))
        .bearer_auth("sk-caller")
        .send()
        .await
        .unwrap();
    let seen = h.upstream.last_request("/v1/models").unwrap();
    assert_eq!(seen.headers["authorization"], "Bearer sk-upstream");
}

#[tokio::test]
async fn malformed_json_is_a_400_and_never_reaches_upstream() {
    let h = Harness::start().await;
    for body in ["{not json", "[1,2]", ""] {
        let reply = Reply::read(
            h.client
                .post(h.url("/v1/chat/completions"))
                .bearer_auth(KEY_A)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, 400, "{body:?}");
        let error = &reply.json()["error"];
        assert_eq!(error["type"], "invalid_request_error");
        assert!(error["message"].as_str().unwrap().contains("JSON"));
    }
    assert_eq!(h.upstream.calls(CHAT_PATH), 0);
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let h = Harness::with(|c| c.server.max_body_bytes = 1024).await;
    let big = ask(&"word ".repeat(400));
    let reply = h.chat(&big).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["error"]["code"], "request_too_large");
    let relayed = h
        .client
        .post(h.url("/v1/files"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(relayed.status(), 413);
    assert_eq!(h.upstream.total_calls(), 0);
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let h = Harness::with(|c| c.upstream.base_url = format!("http://127.0.0.1:{port}/v1")).await;
    let reply = h.chat(&ask("hello?")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"]["code"], "upstream_unreachable");
    let relayed = h.client.get(h.url("/v1/models")).send().await.unwrap();
    assert_eq!(relayed.status(), 502);
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let h = Harness::with(|c| c.upstream.timeout_secs = 0.5).await;
    h.upstream
        .set_chat_mode(ChatMode::StallBeforeHeaders(Duration::from_secs(3)));
    let reply = h.chat(&ask("hello?")).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.json()["error"]["code"], "upstream_timeout");
}

#[tokio::test]
async fn paths_outside_v1_are_404() {
    let h = Harness::start().await;
    let reply = Reply::read(h.client.get(h.url("/v2/models")).send().await.unwrap()).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    assert_eq!(h.upstream.total_calls(), 0);
}
