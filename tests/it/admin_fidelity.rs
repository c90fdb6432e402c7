//! Admin calls and logs say what the proxy really does: a purge by namespace reaches managed
//! keys' entries, `/admin/lookup` plans a request as the proxy does (aliases included), a
//! handler panic is an internal error, and the usage log names the real bypass reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::admin::{key, managed, with_admin};
use crate::support::fake_upstream::{CHAT_PATH, FakeUpstream, http_client};
use crate::support::proxy::{Harness, KEY_A, Reply, ask, ask_stream};
use deja::clock::{Clock, SystemClock};
use deja::config::Config;
use serde_json::{Value, json};

const ALICE: &str = "sk-deja-alice-secret";

#[tokio::test]
async fn purge_by_namespace_reaches_a_managed_keys_entries() {
    let mut alice = key("alice", ALICE);
    alice.namespace = Some("prod".into());
    let h = managed(vec![alice], |_| {}).await;
    let question = ask("What is the capital of France?");
    let first = Reply::read(h.chat_with(ALICE, &[], &question).await).await;
    assert_eq!(first.cache_status(), "miss");
    // Narrowed by a header: still inside the key's namespace.
    let narrowed = h
        .chat_with(ALICE, &[("x-deja-namespace", "team")], &question)
        .await;
    assert_eq!(Reply::read(narrowed).await.cache_status(), "miss");
    let purged = h
        .admin("POST", "/admin/purge", Some(&json!({"namespace": "prod"})))
        .await;
    assert_eq!(purged.status, 200, "{}", purged.text);
    assert_eq!(purged.json()["deleted"], 2);
    let again = Reply::read(h.chat_with(ALICE, &[], &question).await).await;
    assert_eq!(again.cache_status(), "miss");
    assert_eq!(h.upstream.calls(CHAT_PATH), 3);
}

#[tokio::test]
async fn lookup_resolves_aliases_as_a_request_does() {
    let h = Harness::with(|c| {
        with_admin(c);
        c.routing
            .aliases
            .insert("fast".into(), "gpt-4o-mini".into());
    })
    .await;
    let mut body = ask("What is the capital of France?");
    body["model"] = json!("fast");
    assert_eq!(h.chat(&body).await.cache_status(), "miss");
    let hit = h.chat(&body).await;
    assert_eq!(hit.cache_status(), "hit");
    let entry: u64 = hit.header("x-deja-entry").unwrap().parse().unwrap();
    let call = json!({
        "path": "/v1/chat/completions",
        "authorization": format!("Bearer {KEY_A}"),
        "body": body,
    });
    let reply = h.admin("POST", "/admin/lookup", Some(&call)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let explained = reply.json();
    assert_eq!(explained["model"], "gpt-4o-mini");
    assert_eq!(explained["exact"]["id"], entry, "{explained}");
}

/// `/admin/lookup` decides with the proxy's own code, so it cannot disagree with a request:
/// an entry stored from a stream without usage cannot answer a JSON request (which must
/// report usage), and the lookup of that request says miss, while a stream's says hit.
#[tokio::test]
async fn lookup_decides_as_a_request_does() {
    let h = Harness::with(with_admin).await;
    let question = "Name a prime number.";
    assert_eq!(
        h.chat(&ask_stream(question, false)).await.cache_status(),
        "miss"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let explain = |body: Value| {
        json!({
            "path": CHAT_PATH,
            "authorization": format!("Bearer {KEY_A}"),
            "body": body,
        })
    };
    let stream = h
        .admin(
            "POST",
            "/admin/lookup",
            Some(&explain(ask_stream(question, false))),
        )
        .await;
    assert_eq!(stream.status, 200, "{}", stream.text);
    let stream = stream.json();
    assert_eq!(stream["decision"]["cache"], "hit", "{stream}");
    assert_eq!(stream["decision"]["match"], "exact", "{stream}");
    let entry = stream["exact"]["id"].clone();
    assert!(entry.is_u64(), "{stream}");
    let plain = h
        .admin("POST", "/admin/lookup", Some(&explain(ask(question))))
        .await
        .json();
    assert_eq!(plain["decision"]["cache"], "miss", "{plain}");
    assert_eq!(plain["exact"], Value::Null, "{plain}");
    // The requests themselves get what the lookups said.
    let hit = h.chat(&ask_stream(question, false)).await;
    assert_eq!(hit.cache_status(), "hit");
    assert_eq!(
        hit.header("x-deja-entry"),
        entry.as_u64().map(|id| id.to_string()).as_deref()
    );
    assert_eq!(h.chat(&ask(question)).await.cache_status(), "miss");
    assert_eq!(h.upstream.calls(CHAT_PATH), 2);
}

/// A clock that panics once told to: the request handler's first reading of the time.
struct PanickingClock(AtomicBool);

impl Clock for PanickingClock {
    fn now_ms(&self) -> u64 {
        if self.0.load(Ordering::SeqCst) {
            panic!("clock failure (test)");
        }
        SystemClock.now_ms()
    }
}

#[tokio::test]
async fn a_handler_panic_is_an_internal_error() {
    let upstream = FakeUpstream::start().await;
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.upstream.base_url = upstream.base_url();
    config.cache.enabled = false;
    config.cache.semantic = false;
    let clock = Arc::new(PanickingClock(AtomicBool::new(false)));
    let proxy = deja::server::start(config, clock.clone()).await.unwrap();
    clock.0.store(true, Ordering::SeqCst);
    let response = http_client()
        .post(format!("http://{}/v1/chat/completions", proxy.addr))
        .bearer_auth(KEY_A)
        .json(&ask("hello"))
        .send()
        .await
        .unwrap();
    let reply = Reply::read(response).await;
    assert_eq!(reply.status, 500, "{}", reply.text);
    let error = &reply.json()["error"];
    assert_eq!(error["type"], "server_error", "{}", reply.text);
    assert_eq!(error["code"], "internal_error");
    clock.0.store(false, Ordering::SeqCst);
    proxy.shutdown().await;
}

#[tokio::test]
async fn embeddings_with_caching_off_log_cache_off() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("usage.jsonl");
    let h = Harness::with(|c| {
        c.cache.enabled = false;
        c.cache.semantic = false;
        c.usage.log = log.to_str().unwrap().to_string();
    })
    .await;
    let reply = h
        .client
        .post(h.url("/v1/embeddings"))
        .bearer_auth(KEY_A)
        .json(&json!({"model": "text-embedding-3-small", "input": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.headers()["x-deja-cache"], "bypass");
    reply.bytes().await.unwrap();
    let mut record = Value::Null;
    for _ in 0..100 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            record = serde_json::from_str(line).unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(record["endpoint"], "embeddings", "{record}");
    assert_eq!(record["bypass_reason"], "cache_off", "{record}");
}
