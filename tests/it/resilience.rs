//! Upstream resilience and model routing against the real server and a scripted fake upstream:
//! which failures are retried and how long deja waits, that a started answer is never
//! retried, and that aliases and fallbacks reach the upstream and the cache as documented.

use std::time::{Duration, Instant};

use crate::support::fake_upstream::script::Scripted;
use crate::support::fake_upstream::{CHAT_PATH, EMBEDDINGS_PATH, FakeUpstream};
use crate::support::proxy::{Harness, KEY_A, Reply, ask, ask_stream};
use deja::config::Config;
use serde_json::{Value, json};

/// Fast retries for tests; each test adjusts what it checks.
fn quick_retries(c: &mut Config) {
    c.upstream.retry.max_attempts = 3;
    c.upstream.retry.initial_backoff_ms = 10;
    c.upstream.retry.max_backoff_ms = 20;
}

/// The models the upstream was asked for, in order.
fn models_seen(upstream: &FakeUpstream, path: &str) -> Vec<String> {
    upstream
        .requests()
        .iter()
        .filter(|r| r.path == path)
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            body["model"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

fn asking(model: &str, question: &str) -> Value {
    let mut body = ask(question);
    body["model"] = json!(model);
    body
}

#[tokio::test]
async fn rate_limit_then_success_is_retried_and_cached() {
    let h = Harness::with(quick_retries).await;
    h.upstream
        .script(CHAT_PATH, [Scripted::error(429, "slow down")]);
    let body = ask("What is the capital of France?");
    let reply = h.chat(&body).await;
    assert_eq!((reply.status, reply.cache_status()), (200, "miss"));
    assert!(reply.content().contains("capital of France"));
    assert_eq!(h.upstream.calls(CHAT_PATH), 2);
    let repeat = h.chat(&body).await;
    assert_eq!(repeat.cache_status(), "hit");
    assert_eq!(h.upstream.calls(CHAT_PATH), 2);
}

#[tokio::test]
async fn retry_after_and_retry_after_ms_are_waited_for() {
    // Backoff alone would wait at most 1 ms: any longer gap is the upstream's request.
    let h = Harness::with(|c| {
        c.upstream.retry.initial_backoff_ms = 1;
        c.upstream.retry.max_backoff_ms = 1;
    })
    .await;
    h.upstream.script(
        CHAT_PATH,
        [Scripted::error(429, "wait").header("retry-after", "1")],
    );
    assert_eq!(h.chat(&ask("first question")).await.status, 200);
    h.upstream.script(
        CHAT_PATH,
        [Scripted::error(503, "wait").header("retry-after-ms", "700")],
    );
    assert_eq!(h.chat(&ask("second question")).await.status, 200);
    let at = h.upstream.arrivals(CHAT_PATH);
    assert_eq!(at.len(), 4);
    assert!(
        at[1] - at[0] >= Duration::from_secs(1),
        "{:?}",
        at[1] - at[0]
    );
    assert!(
        at[3] - at[2] >= Duration::from_millis(700),
        "{:?}",
        at[3] - at[2]
    );
}

#[tokio::test]
async fn server_errors_exhaust_max_attempts_and_relay_the_last() {
    let h = Harness::with(quick_retries).await;
    h.upstream.script(
        CHAT_PATH,
        [
            Scripted::error(500, "first"),
            Scripted::error(502, "second"),
            Scripted::error(503, "third"),
            Scripted::error(504, "never asked"),
        ],
    );
    let reply = h.chat(&ask("hello?")).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.cache_status(), "miss");
    let error = &reply.json()["error"];
    assert_eq!(
        error["message"], "third",
        "the last upstream error, relayed"
    );
    assert_eq!(error["type"], "server_error");
    assert_eq!(h.upstream.calls(CHAT_PATH), 3);
    assert_eq!(h.upstream.scripted_left(CHAT_PATH), 1);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let h = Harness::with(quick_retries).await;
    h.upstream.script(
        CHAT_PATH,
        [
            Scripted::error(400, "bad request"),
            Scripted::error(401, "bad key"),
        ],
    );
    assert_eq!(h.chat(&ask("one")).await.status, 400);
    assert_eq!(h.chat(&ask("two")).await.status, 401);
    assert_eq!(h.upstream.calls(CHAT_PATH), 2);
}

#[tokio::test]
async fn connection_closed_before_any_response_is_retried() {
    let h = Harness::with(quick_retries).await;
    h.upstream.script(CHAT_PATH, [Scripted::HangUp]);
    let reply = h.chat(&ask("hello?")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(h.upstream.calls(CHAT_PATH), 2);
}

#[tokio::test]
async fn connection_refused_is_retried() {
    // A bound socket that is not listening refuses connections until `listen`.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let h = Harness::with(|c| {
        c.upstream.base_url = format!("http://{addr}/v1");
        c.upstream.retry.max_attempts = 100;
        c.upstream.retry.initial_backoff_ms = 20;
        c.upstream.retry.max_backoff_ms = 50;
        c.cache.semantic = false;
    })
    .await;
    let call = h
        .client
        .post(h.url("/v1/chat/completions"))
        .bearer_auth(KEY_A)
        .json(&ask("hello?"))
        .send();
    let request = tokio::spawn(async move { Reply::read(call.await.unwrap()).await });
    // Without retries the request fails with 502 well within this time.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listening = Instant::now();
    let upstream = FakeUpstream::serve(socket.listen(64).unwrap());
    let reply = request.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(upstream.calls(CHAT_PATH), 1);
    assert!(upstream.arrivals(CHAT_PATH)[0] >= listening);
}

#[tokio::test]
async fn deadline_stops_retries() {
    let h = Harness::with(|c| {
        quick_retries(c);
        c.upstream.retry.max_attempts = 10;
        c.upstream.retry.deadline_secs = 1.0;
    })
    .await;
    // Each answer asks for 600 ms: the second wait would end past the 1 s deadline.
    let busy = Scripted::error(503, "busy").header("retry-after-ms", "600");
    // Without the deadline, a third attempt would get the fake's normal 200.
    h.upstream.script(CHAT_PATH, vec![busy; 2]);
    let reply = h.chat(&ask("one")).await;
    assert_eq!(reply.status, 503);
    assert_eq!(h.upstream.calls(CHAT_PATH), 2);

    // A wait that alone passes the deadline: that answer is relayed at once.
    h.upstream.script(
        CHAT_PATH,
        [Scripted::error(429, "later").header("retry-after", "5")],
    );
    let before = h.upstream.calls(CHAT_PATH);
    let reply = h.chat(&ask("two")).await;
    assert_eq!(reply.status, 429);
    assert_eq!(
        reply.header("retry-after"),
        Some("5"),
        "relayed to the caller"
    );
    assert_eq!(h.upstream.calls(CHAT_PATH), before + 1);
}

#[tokio::test]
async fn a_started_stream_is_never_retried() {
    let h = Harness::with(quick_retries).await;
    let chunk = json!({"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": "partial "}, "finish_reason": null}]});
    h.upstream.script(
        CHAT_PATH,
        [Scripted::BrokenStream(vec![chunk.to_string(); 2])],
    );
    let body = ask_stream("tell me a story", false);
    let mut response = h.chat_with(KEY_A, &[], &body).await;
    assert_eq!(response.status(), 200);
    let mut received = Vec::new();
    let mut failed = false;
    loop {
        match response.chunk().await {
            Ok(Some(bytes)) => received.extend_from_slice(&bytes),
            Ok(None) => break,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&received);
    assert!(text.contains("partial"), "{text}");
    assert!(
        failed || !text.contains("[DONE]"),
        "the cut is visible: {text}"
    );
    assert_eq!(h.upstream.calls(CHAT_PATH), 1, "no second upstream call");
    // Nothing was stored: the next request goes upstream and gets a whole answer.
    let again = Reply::read(h.chat_with(KEY_A, &[], &body).await).await;
    assert_eq!(again.cache_status(), "miss");
    assert!(again.ends_with_done());
    assert_eq!(h.upstream.calls(CHAT_PATH), 2);
}

#[tokio::test]
async fn an_alias_is_sent_as_its_model_and_shares_its_entries() {
    let h = Harness::with(|c| {
        c.routing
            .aliases
            .insert("fast".into(), "gpt-4o-mini".into());
    })
    .await;
    let question = "What is the capital of France?";
    let reply = h.chat(&asking("fast", question)).await;
    assert_eq!((reply.status, reply.cache_status()), (200, "miss"));
    assert_eq!(reply.header("x-deja-model"), Some("gpt-4o-mini"));
    assert_eq!(reply.json()["model"], "gpt-4o-mini");
    assert_eq!(models_seen(&h.upstream, CHAT_PATH), ["gpt-4o-mini"]);

    let target = h.chat(&asking("gpt-4o-mini", question)).await;
    assert_eq!(
        target.cache_status(),
        "hit",
        "the alias stored under its model"
    );
    assert_eq!(target.header("x-deja-model"), None, "not routed");
    let alias_again = h.chat(&asking("fast", question)).await;
    assert_eq!(alias_again.cache_status(), "hit");
    assert_eq!(alias_again.header("x-deja-model"), Some("gpt-4o-mini"));
    assert_eq!(h.upstream.calls(CHAT_PATH), 1);
}

/// A repeated body reuses its plan (parsed, routed, keyed) from memory; a new configuration
/// must not: the same bytes then route to the alias's new model.
#[tokio::test]
async fn a_reloaded_alias_applies_to_a_body_seen_before() {
    let h = Harness::with(|c| {
        c.routing
            .aliases
            .insert("fast".into(), "gpt-4o-mini".into());
    })
    .await;
    let body = asking("fast", "What is the capital of France?");
    assert_eq!(h.chat(&body).await.cache_status(), "miss");
    let repeat = h.chat(&body).await;
    assert_eq!(repeat.cache_status(), "hit");
    assert_eq!(repeat.header("x-deja-model"), Some("gpt-4o-mini"));

    let mut config = (**h.proxy.app.config()).clone();
    config
        .routing
        .aliases
        .insert("fast".into(), "gpt-4o".into());
    h.proxy.app.replace_config(config);
    let rerouted = h.chat(&body).await;
    assert_eq!(rerouted.cache_status(), "miss", "gpt-4o has no entry yet");
    assert_eq!(rerouted.header("x-deja-model"), Some("gpt-4o"));
    assert_eq!(
        models_seen(&h.upstream, CHAT_PATH),
        ["gpt-4o-mini", "gpt-4o"]
    );
    assert_eq!(h.chat(&body).await.header("x-deja-model"), Some("gpt-4o"));
}

/// The same bytes from two tenants are two plans: the second tenant never gets the first's
/// remembered key.
#[tokio::test]
async fn a_repeated_body_from_another_key_is_not_served_the_first_keys_answer() {
    let h = Harness::start().await;
    let body = ask("What is the capital of France?");
    for _ in 0..2 {
        h.chat(&body).await;
    }
    let other = Reply::read(h.chat_with(crate::support::proxy::KEY_B, &[], &body).await).await;
    assert_eq!(other.cache_status(), "miss");
    assert_eq!(h.upstream.calls(CHAT_PATH), 2);
}

#[tokio::test]
async fn fallback_answers_after_a_final_503_and_is_not_cached() {
    let h = Harness::with(|c| {
        quick_retries(c);
        c.upstream.retry.max_attempts = 2;
        c.routing
            .fallbacks
            .insert("gpt-4o".into(), vec!["gpt-4o-mini".into()]);
    })
    .await;
    h.upstream.script(
        CHAT_PATH,
        [
            Scripted::error(503, "overloaded"),
            Scripted::error(503, "overloaded"),
        ],
    );
    let body = asking("gpt-4o", "What is the capital of France?");
    let reply = h.chat(&body).await;
    assert_eq!((reply.status, reply.cache_status()), (200, "miss"));
    assert_eq!(reply.header("x-deja-model"), Some("gpt-4o-mini"));
    assert_eq!(reply.header("x-deja-fallback"), Some("gpt-4o-mini"));
    assert_eq!(reply.json()["model"], "gpt-4o-mini");
    assert_eq!(
        models_seen(&h.upstream, CHAT_PATH),
        ["gpt-4o", "gpt-4o", "gpt-4o-mini"]
    );

    // The fallback's answer was not stored for gpt-4o: this goes to gpt-4o itself.
    let again = h.chat(&body).await;
    assert_eq!(again.cache_status(), "miss");
    assert_eq!(again.header("x-deja-model"), Some("gpt-4o"));
    assert_eq!(again.header("x-deja-fallback"), None);
    assert_eq!(again.json()["model"], "gpt-4o");
    assert_eq!(h.chat(&body).await.cache_status(), "hit");
    assert_eq!(h.upstream.calls(CHAT_PATH), 4);
}

#[tokio::test]
async fn embeddings_are_retried_and_aliased() {
    let h = Harness::with(|c| {
        quick_retries(c);
        c.routing
            .aliases
            .insert("small".into(), "text-embedding-3-small".into());
    })
    .await;
    h.upstream
        .script(EMBEDDINGS_PATH, [Scripted::error(500, "oops")]);
    let embed = |model: &str| {
        let request = h
            .client
            .post(h.url("/v1/embeddings"))
            .bearer_auth(KEY_A)
            .json(&json!({"model": model, "input": ["hello world"]}));
        async move { Reply::read(request.send().await.unwrap()).await }
    };
    let reply = embed("small").await;
    assert_eq!((reply.status, reply.cache_status()), (200, "miss"));
    assert_eq!(reply.header("x-deja-model"), Some("text-embedding-3-small"));
    assert_eq!(
        models_seen(&h.upstream, EMBEDDINGS_PATH),
        ["text-embedding-3-small"; 2]
    );
    let target = embed("text-embedding-3-small").await;
    assert_eq!(target.cache_status(), "hit");
    assert_eq!(h.upstream.calls(EMBEDDINGS_PATH), 2);
}

#[tokio::test]
async fn relays_retry_only_requests_without_a_body() {
    let h = Harness::with(quick_retries).await;
    h.upstream
        .script("/v1/models", [Scripted::error(503, "busy")]);
    let reply = Reply::read(h.client.get(h.url("/v1/models")).send().await.unwrap()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(h.upstream.calls("/v1/models"), 2);

    // A streamed body cannot be sent twice.
    h.upstream
        .script("/v1/files", [Scripted::error(503, "busy")]);
    let reply = Reply::read(
        h.client
            .post(h.url("/v1/files"))
            .body("file bytes")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 503);
    assert_eq!(h.upstream.calls("/v1/files"), 1);
}

#[tokio::test]
async fn routes_and_retries_are_read_per_request() {
    let h = Harness::with(|c| c.upstream.retry.max_attempts = 1).await;
    h.upstream.script(CHAT_PATH, [Scripted::error(503, "busy")]);
    assert_eq!(h.chat(&asking("fast", "one")).await.status, 503);

    let mut reloaded = Config::clone(&h.proxy.app.config());
    quick_retries(&mut reloaded);
    reloaded
        .routing
        .aliases
        .insert("fast".into(), "gpt-4o-mini".into());
    h.proxy.app.replace_config(reloaded);
    h.upstream.script(CHAT_PATH, [Scripted::error(503, "busy")]);
    let reply = h.chat(&asking("fast", "two")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-deja-model"), Some("gpt-4o-mini"));
    assert_eq!(
        models_seen(&h.upstream, CHAT_PATH),
        ["fast", "gpt-4o-mini", "gpt-4o-mini"]
    );
}
