//! The admin listener: token, metrics, lookup, deletion, reload, usage log, draining.

use std::time::Duration;

use crate::support::admin::{ADMIN_TOKEN, key, managed, metric, with_admin};
use crate::support::fake_upstream::CHAT_PATH;
use crate::support::fake_upstream::script::Scripted;
use crate::support::proxy::{Harness, KEY_A, KEY_B, Reply, ask, at_cosine, axis};
use deja::config::Price;
use serde_json::{Value, json};

async fn admin_harness() -> Harness {
    Harness::with(with_admin).await
}

#[tokio::test]
async fn admin_calls_need_the_token_but_probes_do_not() {
    let h = admin_harness().await;
    for path in ["/healthz", "/readyz"] {
        let reply = h.client.get(h.admin_url(path)).send().await.unwrap();
        assert_eq!(reply.status(), 200, "{path}");
    }
    for (token, status) in [(None, 401), (Some("wrong-token-wrong-token"), 401)] {
        let mut request = h.client.get(h.admin_url("/admin/stats"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let reply = Reply::read(request.send().await.unwrap()).await;
        assert_eq!(reply.status, status);
        assert!(!reply.text.contains(ADMIN_TOKEN));
    }
    let metrics = h.client.get(h.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 401);
    assert_eq!(h.admin("GET", "/admin/stats", None).await.status, 200);
    // The application listener does not serve admin calls.
    let app_side = h.client.get(h.url("/admin/stats")).send().await.unwrap();
    assert_eq!(app_side.status(), 404);
}

#[tokio::test]
async fn without_a_token_the_admin_api_is_off() {
    let h = Harness::with(|c| c.admin.listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let reply = h
        .client
        .get(h.admin_url("/admin/stats"))
        .bearer_auth("")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 403);
}

#[tokio::test]
async fn metrics_move_with_requests() {
    let h = Harness::with(|c| {
        with_admin(c);
        let price = Price {
            input_per_mtok: 2.0,
            output_per_mtok: 8.0,
        };
        c.pricing.insert("gpt-4o-mini".into(), price);
    })
    .await;
    let before = h.metrics().await;
    assert_eq!(metric(&before, "deja_cache_misses_total"), 0.0);
    let first = h.chat(&ask("What is the capital of France?")).await;
    let usage = first.json()["usage"].clone();
    let hit = h.chat(&ask("What is the capital of France?")).await;
    assert_eq!(hit.cache_status(), "hit");
    h.chat_headers(&[("cache-control", "no-store")], &ask("uncached"))
        .await;
    let text = h.metrics().await;
    assert_eq!(metric(&text, "deja_cache_misses_total"), 2.0);
    assert_eq!(metric(&text, "deja_cache_hits_total{tier=\"exact\"}"), 1.0);
    assert_eq!(
        metric(
            &text,
            "deja_requests_total{endpoint=\"chat.completions\",outcome=\"hit_exact\"}"
        ),
        1.0
    );
    assert_eq!(metric(&text, "deja_cache_entries"), 1.0);
    let prompt = usage["prompt_tokens"].as_f64().unwrap();
    let completion = usage["completion_tokens"].as_f64().unwrap();
    assert_eq!(
        metric(&text, "deja_tokens_saved_total{kind=\"prompt\"}"),
        prompt
    );
    let saved = (prompt * 2.0 + completion * 8.0) / 1e6;
    let reported = metric(&text, "deja_cost_saved_usd_total");
    assert!((reported - saved).abs() < 1e-12, "{reported} vs {saved}");
    assert!(metric(&text, "deja_upstream_duration_seconds_count") >= 2.0);
    assert!(metric(&text, "deja_lookup_duration_seconds_count") >= 1.0);
    // Upstream errors by status.
    h.upstream
        .set_chat_mode(crate::support::fake_upstream::ChatMode::Status(
            503,
            "{}".into(),
        ));
    h.chat(&ask("fails")).await;
    let text = h.metrics().await;
    assert_eq!(
        metric(&text, "deja_upstream_errors_total{status=\"503\"}"),
        1.0
    );
    assert!(!text.contains(KEY_A) && !text.contains("capital"));
}

#[tokio::test]
async fn refusals_are_counted() {
    let mut alice = key("alice", "sk-deja-alice-secret");
    alice.rpm = 1;
    let h = managed(vec![alice], |_| {}).await;
    for _ in 0..3 {
        h.chat_with("sk-deja-alice-secret", &[], &ask("hi")).await;
    }
    h.chat_with("sk-unknown", &[], &ask("hi")).await;
    let text = h.metrics().await;
    assert_eq!(
        metric(&text, "deja_rate_limited_total{limit=\"requests\"}"),
        2.0
    );
    assert_eq!(metric(&text, "deja_unauthorized_total"), 1.0);
}

#[tokio::test]
async fn retries_are_counted_by_cause() {
    let h = Harness::with(|c| {
        with_admin(c);
        c.upstream.retry.initial_backoff_ms = 1;
        c.upstream.retry.max_backoff_ms = 5;
    })
    .await;
    h.upstream.script(
        CHAT_PATH,
        [
            Scripted::error(429, "slow down"),
            Scripted::error(503, "busy"),
        ],
    );
    let reply = h.chat(&ask("eventually answered")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let text = h.metrics().await;
    assert_eq!(
        metric(&text, "deja_upstream_retries_total{cause=\"429\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "deja_upstream_retries_total{cause=\"503\"}"),
        1.0
    );
    // The request itself succeeded: not an upstream error.
    assert_eq!(
        metric(&text, "deja_upstream_errors_total{status=\"503\"}"),
        0.0
    );
}

/// Stores "stored question" at `axis()` and makes "nearby question" embed at cosine 0.95.
async fn near_pair(h: &Harness) -> u64 {
    h.upstream.set_embedding("stored question", axis());
    h.upstream.set_embedding("nearby question", at_cosine(0.95));
    let stored = h.chat(&ask("stored question")).await;
    assert_eq!(stored.cache_status(), "miss");
    let again = h.chat(&ask("stored question")).await;
    again.header("x-deja-entry").unwrap().parse().unwrap()
}

#[tokio::test]
async fn lookup_shows_the_entry_a_prompt_would_hit_and_its_neighbours() {
    let h = admin_harness().await;
    let id = near_pair(&h).await;
    let call = json!({
        "path": "/v1/chat/completions",
        "authorization": format!("Bearer {KEY_A}"),
        "body": ask("nearby question"),
        "k": 3,
    });
    let reply = h.admin("POST", "/admin/lookup", Some(&call)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let found = reply.json();
    assert_eq!(found["cacheable"], true);
    assert_eq!(found["exact"], Value::Null);
    assert_eq!(found["semantic"]["would_hit"], id);
    let first = &found["semantic"]["neighbours"][0];
    assert_eq!(first["id"], id);
    assert!((first["similarity"].as_f64().unwrap() - 0.95).abs() < 1e-3);
    assert_eq!(first["prompt"], "stored question");
    // Another tenant's view of the same prompt finds nothing.
    let mut other = call.clone();
    other["authorization"] = json!(format!("Bearer {KEY_B}"));
    let found = h.admin("POST", "/admin/lookup", Some(&other)).await.json();
    assert_eq!(found["semantic"]["would_hit"], Value::Null);
    assert_eq!(found["semantic"]["neighbours"], json!([]));
    // Looking up changed nothing upstream-facing: the lookup does not store.
    assert_eq!(h.upstream.calls(CHAT_PATH), 1);
}

#[tokio::test]
async fn entries_can_be_read_deleted_and_purged() {
    let h = admin_harness().await;
    let id = near_pair(&h).await;
    assert_eq!(h.chat(&ask("stored question")).await.cache_status(), "hit");
    let entry = h.admin("GET", &format!("/admin/entries/{id}"), None).await;
    assert_eq!(entry.json()["prompt"], "stored question");
    // Served twice (near_pair's repeat and this one), counted since start-up.
    assert_eq!(entry.json()["hits"], 2);
    let deleted = h
        .admin("DELETE", &format!("/admin/entries/{id}"), None)
        .await;
    assert_eq!(deleted.json()["deleted"], 1);
    assert_eq!(h.chat(&ask("stored question")).await.cache_status(), "miss");
    let gone = h
        .admin("DELETE", &format!("/admin/entries/{id}"), None)
        .await;
    assert_eq!(gone.status, 404);

    // Purge by model, then everything; a purge must say what it deletes.
    let mut other_model = ask("another question");
    other_model["model"] = json!("gpt-4o");
    h.chat(&other_model).await;
    h.chat(&ask("third question")).await;
    let refused = h.admin("POST", "/admin/purge", Some(&json!({}))).await;
    assert_eq!(refused.status, 400);
    let purged = h
        .admin("POST", "/admin/purge", Some(&json!({"model": "gpt-4o"})))
        .await;
    assert_eq!(purged.json()["deleted"], 1);
    assert_eq!(h.chat(&other_model).await.cache_status(), "miss");
    assert_eq!(h.chat(&ask("third question")).await.cache_status(), "hit");
    let all = h
        .admin("POST", "/admin/purge", Some(&json!({"all": true})))
        .await;
    assert_eq!(all.json()["deleted"], 3);
    assert_eq!(h.cache().entries(), 0);
}

#[tokio::test]
async fn purging_a_key_removes_only_its_tenant() {
    let alice = key("alice", "sk-deja-alice-secret");
    let bob = key("bob", "sk-deja-bob-secret");
    let h = managed(vec![alice, bob], |_| {}).await;
    for secret in ["sk-deja-alice-secret", "sk-deja-bob-secret"] {
        h.chat_with(secret, &[], &ask("same question")).await;
    }
    let purged = h
        .admin("POST", "/admin/purge", Some(&json!({"key_id": "alice"})))
        .await;
    assert_eq!(purged.json()["deleted"], 1);
    let bob_again = Reply::read(
        h.chat_with("sk-deja-bob-secret", &[], &ask("same question"))
            .await,
    )
    .await;
    assert_eq!(bob_again.cache_status(), "hit");
    let alice_again = Reply::read(
        h.chat_with("sk-deja-alice-secret", &[], &ask("same question"))
            .await,
    )
    .await;
    assert_eq!(alice_again.cache_status(), "miss");
}

#[tokio::test]
async fn reload_changes_the_threshold_live_and_refuses_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let h = Harness::with(|c| {
        with_admin(c);
        c.cache.similarity_threshold = 0.99;
        c.source = Some(path.clone());
    })
    .await;
    // The upstream's address applies on reload, so the file names it.
    let base_url = h.upstream.base_url();
    let write = |threshold: &str| {
        let text = format!(
            "[cache]\nsimilarity_threshold = {threshold}\n[admin]\ntoken = \"{ADMIN_TOKEN}\"\n\
             [server]\nmax_connections = 7\n[upstream]\nbase_url = \"{base_url}\"\n"
        );
        std::fs::write(&path, text).unwrap();
    };
    near_pair(&h).await;
    assert_eq!(h.chat(&ask("nearby question")).await.cache_status(), "miss");
    h.admin("POST", "/admin/purge", Some(&json!({"all": true})))
        .await;
    near_pair(&h).await;

    write("0.9");
    let reloaded = h.admin("POST", "/admin/reload", None).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text);
    // The file differs from the harness in settings bound at start-up: kept, and reported.
    let needs_restart = reloaded.json()["needs_restart"].clone();
    assert!(
        needs_restart.as_array().unwrap().contains(&json!("server")),
        "{needs_restart}"
    );
    assert!(
        needs_restart
            .as_array()
            .unwrap()
            .contains(&json!("cache.dir")),
        "{needs_restart}"
    );
    assert_eq!(h.chat(&ask("nearby question")).await.cache_status(), "hit");

    write("1.5");
    let refused = h.admin("POST", "/admin/reload", None).await;
    assert_eq!(refused.status, 400);
    assert!(
        refused.text.contains("similarity_threshold"),
        "{}",
        refused.text
    );
    let stats = h.admin("GET", "/admin/stats", None).await.json();
    assert_eq!(stats["similarity_threshold"].as_f64().unwrap() as f32, 0.9);
}

#[tokio::test]
async fn usage_log_has_one_record_per_request_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("usage.jsonl");
    let log_text = log.to_str().unwrap().to_string();
    let h = managed(vec![key("alice", "sk-deja-alice-secret")], |c| {
        c.usage.log = log_text;
        let price = Price {
            input_per_mtok: 1.0,
            output_per_mtok: 1.0,
        };
        c.pricing.insert("gpt-4o-mini".into(), price);
    })
    .await;
    let secret = "sk-deja-alice-secret";
    h.chat_with(secret, &[], &ask("a secret prompt"))
        .await
        .bytes()
        .await
        .unwrap();
    h.chat_with(secret, &[], &ask("a secret prompt"))
        .await
        .bytes()
        .await
        .unwrap();
    h.chat_with("sk-nobody", &[], &ask("x"))
        .await
        .bytes()
        .await
        .unwrap();
    let mut records: Vec<Value> = Vec::new();
    for _ in 0..100 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        records = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if records.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(records.len(), 3, "{records:?}");
    let outcomes: Vec<&str> = records
        .iter()
        .map(|r| r["cache"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["miss", "hit_exact", "unauthorized"]);
    let (miss, hit) = (&records[0], &records[1]);
    assert_eq!(miss["key_id"], "alice");
    assert_eq!(miss["model_asked"], "gpt-4o-mini");
    assert_eq!(miss["status"], 200);
    assert!(miss["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(miss["upstream_ms"].as_f64().is_some());
    assert!(miss["cost_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(hit["similarity"], 1.0);
    assert_eq!(hit["saved_usd"], miss["cost_usd"]);
    assert_eq!(hit["upstream_ms"], Value::Null);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("secret prompt") && !text.contains(secret) && !text.contains("sk-nobody")
    );
}

#[tokio::test]
async fn shutdown_fails_readiness_and_finishes_requests_in_flight() {
    let h = admin_harness().await;
    h.upstream.set_latency(Duration::from_millis(600));
    let in_flight = tokio::spawn(
        h.client
            .post(h.url("/v1/chat/completions"))
            .bearer_auth(KEY_A)
            .json(&ask("slow question"))
            .send(),
    );
    // Shut down only once the request is upstream (a fixed sleep flaked on a loaded machine).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.upstream.calls(CHAT_PATH) == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        h.upstream.calls(CHAT_PATH),
        1,
        "the request reached the upstream"
    );
    let (client, ready, app_url) = (h.client.clone(), h.admin_url("/readyz"), h.url("/healthz"));
    let Harness {
        proxy,
        upstream,
        dir,
        ..
    } = h;
    let shutdown = tokio::spawn(proxy.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Draining: the admin listener is still up and says so; the app listener takes no one new.
    let readiness = client
        .get(&ready)
        .send()
        .await
        .expect("admin still answers");
    assert_eq!(readiness.status(), 503);
    assert!(client.get(&app_url).send().await.is_err());
    let finished = in_flight
        .await
        .unwrap()
        .expect("in-flight request completes");
    assert_eq!(finished.status(), 200);
    shutdown.await.unwrap();
    assert!(client.get(&ready).send().await.is_err(), "admin stops last");
    drop((upstream, dir));
}
