//! Hits you can trust (`crate::trust`), through the real server and the fake upstream:
//! shadow verification off the response path, the wrong-hit estimate and the error budget,
//! feedback from no-cache re-asks and admin marks, and the sampling's bill kept off the keys.

use std::time::{Duration, Instant};

use crate::support::admin::{UPSTREAM_KEY, key, managed, metric, with_admin};
use crate::support::fake_upstream::CHAT_PATH;
use crate::support::proxy::{Harness, Reply, ask, at_cosine, axis};
use deja::config::Price;
use serde_json::Value;

const STORED: &str = "What is the capital of France?";
const REWORDED: &str = "Tell me France's capital city";

/// A harness with the admin API, an entry for `STORED` and `REWORDED` at cosine 0.95.
async fn with_entry(adjust: impl FnOnce(&mut deja::config::Config)) -> Harness {
    let h = Harness::with(|c| {
        with_admin(c);
        adjust(c);
    })
    .await;
    seed(&h).await;
    h
}

async fn seed(h: &Harness) {
    h.upstream.set_embedding(STORED, axis());
    h.upstream.set_embedding(REWORDED, at_cosine(0.95));
    let first = h.chat(&ask(STORED)).await;
    assert_eq!(first.cache_status(), "miss", "{}", first.text);
}

async fn trust(h: &Harness) -> Value {
    let stats = h.admin("GET", "/admin/stats", None).await;
    assert_eq!(stats.status, 200, "{}", stats.text);
    stats.json()["trust"].clone()
}

/// Waits until the shadow calls have all been judged (agree + disagree + unsure + failed
/// reaches `verdicts`).
async fn judged(h: &Harness, verdicts: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = trust(h).await;
        let s = &t["shadow"];
        let done: u64 = ["agree", "disagree", "unsure", "failed"]
            .iter()
            .map(|k| s[k].as_u64().unwrap_or(0))
            .sum();
        if done >= verdicts {
            return t;
        }
        assert!(Instant::now() < deadline, "shadow verdicts never came: {t}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sampled(c: &mut deja::config::Config, agreement: f32) {
    c.cache.trust.shadow_sample_rate = 1.0;
    c.cache.trust.agreement_threshold = agreement;
}

#[tokio::test]
async fn a_sampled_hit_is_shadowed_once_and_never_waits_for_it() {
    let h = with_entry(|c| sampled(c, 0.99)).await;
    // Shadow calls now stall; the hit must not.
    let stall = Duration::from_secs(3);
    h.upstream.set_latency(stall);
    let started = Instant::now();
    let hit = h
        .chat_headers(&[("x-deja-namespace", "")], &ask(REWORDED))
        .await;
    let elapsed = started.elapsed();
    assert_eq!(hit.header("x-deja-match"), Some("semantic"), "{}", hit.text);
    assert!(
        elapsed < stall,
        "the hit waited for its shadow: {elapsed:?}"
    );
    // The shadow call went out, and is still being answered when the client has its hit.
    let deadline = Instant::now() + Duration::from_secs(2);
    while h.upstream.calls(CHAT_PATH) < 2 {
        assert!(Instant::now() < deadline, "no shadow call was sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pending = trust(&h).await;
    assert_eq!(pending["shadow"]["calls"], 1);
    assert_eq!(pending["shadow"]["disagree"], 0, "{pending}");

    let t = judged(&h, 1).await;
    assert_eq!(t["shadow"]["disagree"], 1, "{t}");
    assert_eq!(h.upstream.calls(CHAT_PATH), 2, "exactly one shadow call");
    // The shadow asked for the plain JSON answer to the same request.
    let shadow = h.upstream.last_request(CHAT_PATH).unwrap();
    let body: Value = serde_json::from_slice(&shadow.body).unwrap();
    assert_eq!(body["messages"][1]["content"], REWORDED);
    assert!(body.get("stream").is_none());
    // Its cost is counted: the fake reports usage for the shadow's answer.
    assert!(t["shadow"]["prompt_tokens"].as_u64().unwrap() > 0, "{t}");
    let text = h.metrics().await;
    assert_eq!(
        metric(&text, "deja_shadow_calls_total{kind=\"shadow\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "deja_shadow_results_total{result=\"disagree\"}"),
        1.0
    );
    assert!(text.ends_with("# EOF\n"));
}

#[tokio::test]
async fn agreeing_answers_keep_the_estimate_at_zero() {
    // The fake's two answers share words, so a loose agreement threshold calls them equal.
    let h = with_entry(|c| sampled(c, 0.05)).await;
    let hit = h.chat(&ask(REWORDED)).await;
    assert_eq!(hit.header("x-deja-match"), Some("semantic"));
    let t = judged(&h, 1).await;
    assert_eq!(t["shadow"]["agree"], 1, "{t}");
    let group = &t["groups"][0];
    assert_eq!(group["model"], "gpt-4o-mini");
    assert_eq!(group["estimate"]["samples"], 1);
    assert_eq!(group["estimate"]["rate"], 0.0);
}

#[tokio::test]
async fn disagreeing_answers_past_the_budget_raise_the_threshold() {
    let h = with_entry(|c| {
        sampled(c, 0.99);
        c.cache.max_wrong_rate = 0.02;
        c.cache.trust.min_samples = 3;
        c.cache.trust.adjust_interval_secs = 0;
        c.cache.trust.step = 0.06;
    })
    .await;
    for i in 1..=3 {
        let hit = h.chat(&ask(REWORDED)).await;
        assert_eq!(hit.header("x-deja-match"), Some("semantic"), "hit {i}");
        judged(&h, i).await;
    }
    let t = trust(&h).await;
    let group = &t["groups"][0];
    assert_eq!(group["disagreed"], 3, "{t}");
    // Over the whole window, every judged hit was wrong; at the raised threshold none of
    // them would have been served.
    assert_eq!(group["window_estimate"]["wrong"], 3, "{t}");
    assert_eq!(group["estimate"]["samples"], 0, "{t}");
    let raised = group["effective_threshold"].as_f64().unwrap();
    assert!((raised - 0.96).abs() < 1e-4, "{t}");
    assert_eq!(group["configured_threshold"], 0.9);
    let change = &group["last_change"];
    assert_eq!(change["evidence"]["samples"], 3);
    assert!(
        change["evidence"]["lower"].as_f64().unwrap() > 0.02,
        "{change}"
    );
    // The paraphrase at 0.95 no longer clears the raised threshold.
    let after = h.chat(&ask(REWORDED)).await;
    assert_eq!(after.cache_status(), "miss", "{}", after.text);
    assert_eq!(after.header("x-deja-best-similarity"), Some("0.9500"));
    let text = h.metrics().await;
    let series = "deja_effective_threshold{model=\"gpt-4o-mini\",namespace=\"\"}";
    assert!((metric(&text, series) - 0.96).abs() < 1e-4, "{text}");
    // No judged hit clears the raised threshold yet: no evidence, the widest interval.
    let labels = "{model=\"gpt-4o-mini\",namespace=\"\"}";
    assert_eq!(
        metric(&text, &format!("deja_wrong_hit_samples{labels}")),
        0.0
    );
    let upper = "deja_wrong_hit_rate{model=\"gpt-4o-mini\",namespace=\"\",bound=\"upper\"}";
    assert_eq!(metric(&text, upper), 1.0);
}

#[tokio::test]
async fn without_a_budget_disagreement_is_measured_but_the_threshold_stays() {
    let h = with_entry(|c| {
        sampled(c, 0.99);
        c.cache.trust.min_samples = 1;
        c.cache.trust.adjust_interval_secs = 0;
    })
    .await;
    for i in 1..=2 {
        h.chat(&ask(REWORDED)).await;
        judged(&h, i).await;
    }
    let t = trust(&h).await;
    assert_eq!(t["groups"][0]["estimate"]["rate"], 1.0, "{t}");
    assert_eq!(t["groups"][0]["effective_threshold"], 0.9);
    let text = h.metrics().await;
    let rate = "deja_wrong_hit_rate{model=\"gpt-4o-mini\",namespace=\"\",bound=\"estimate\"}";
    assert_eq!(metric(&text, rate), 1.0);
    let hit = h.chat(&ask(REWORDED)).await;
    assert_eq!(hit.header("x-deja-match"), Some("semantic"));
    // The dashboard's wrong-hit panel reads the same estimate.
    let panel = h.admin("GET", "/admin/dashboard", None).await.json()["wrong_hits"].clone();
    assert_eq!(panel["measured"], true, "{panel}");
    assert_eq!(panel["checked"], 2, "{panel}");
    assert_eq!(panel["wrong_hit_rate"], 1.0, "{panel}");
}

#[tokio::test]
async fn a_no_cache_reask_after_a_hit_evicts_the_entry_and_counts() {
    let h = with_entry(|_| {}).await;
    let hit = h.chat(&ask(REWORDED)).await;
    let entry = hit.header("x-deja-entry").unwrap().to_string();
    let again = h
        .chat_headers(&[("cache-control", "no-cache")], &ask(REWORDED))
        .await;
    assert_eq!(again.cache_status(), "miss");
    let t = trust(&h).await;
    assert_eq!(t["feedback"]["no_cache"], 1, "{t}");
    assert_eq!(t["groups"][0]["estimate"]["wrong"], 1, "{t}");
    gone(&h, &entry).await;
    // The same re-ask again is not a second piece of evidence: the hit was taken once.
    h.chat_headers(&[("cache-control", "no-cache")], &ask(REWORDED))
        .await;
    assert_eq!(trust(&h).await["feedback"]["no_cache"], 1);
    let text = h.metrics().await;
    assert_eq!(
        metric(&text, "deja_trust_feedback_total{kind=\"no_cache\"}"),
        1.0
    );
}

#[tokio::test]
async fn a_no_cache_request_long_after_the_hit_is_not_evidence() {
    let h = with_entry(|_| {}).await;
    let hit = h.chat(&ask(REWORDED)).await;
    assert_eq!(hit.header("x-deja-match"), Some("semantic"));
    h.clock.advance(Duration::from_secs(121));
    h.chat_headers(&[("cache-control", "no-cache")], &ask(REWORDED))
        .await;
    // Nor is a no-cache question that never got a hit.
    h.chat_headers(&[("cache-control", "no-cache")], &ask("Something else"))
        .await;
    let t = trust(&h).await;
    assert_eq!(t["feedback"]["no_cache"], 0, "{t}");
    let entry = hit.header("x-deja-entry").unwrap();
    let read = h
        .admin("GET", &format!("/admin/entries/{entry}"), None)
        .await;
    assert_eq!(read.status, 200);
}

#[tokio::test]
async fn the_same_question_again_soon_counts_when_configured() {
    let h = with_entry(|c| c.cache.trust.reask_window_secs = 30).await;
    let hit = h.chat(&ask(REWORDED)).await;
    let entry = hit.header("x-deja-entry").unwrap().to_string();
    let again = h.chat(&ask(REWORDED)).await;
    assert_eq!(again.header("x-deja-match"), Some("semantic"));
    assert_eq!(trust(&h).await["feedback"]["reask"], 1);
    gone(&h, &entry).await;
}

#[tokio::test]
async fn an_admin_mark_evicts_the_entry_and_feeds_the_estimate() {
    let h = with_entry(|_| {}).await;
    let hit = h.chat(&ask(REWORDED)).await;
    let entry = hit.header("x-deja-entry").unwrap().to_string();
    let marked = h
        .admin("POST", &format!("/admin/entries/{entry}/wrong"), None)
        .await;
    assert_eq!(marked.status, 200, "{}", marked.text);
    assert_eq!(marked.json()["evicted"], true);
    gone(&h, &entry).await;
    let t = trust(&h).await;
    assert_eq!(t["feedback"]["admin"], 1, "{t}");
    assert_eq!(t["groups"][0]["estimate"]["wrong"], 1, "{t}");
    let after = h.chat(&ask(REWORDED)).await;
    assert_eq!(after.cache_status(), "miss");
    let again = h
        .admin("POST", &format!("/admin/entries/{entry}/wrong"), None)
        .await;
    assert_eq!(again.status, 404);
    let bad = h.admin("POST", "/admin/entries/x/wrong", None).await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn shadow_calls_never_count_against_a_managed_keys_limits() {
    const SECRET: &str = "sk-deja-alice-secret";
    let mut alice = key("alice", SECRET);
    alice.tpm = 100_000;
    alice.budget_usd = Some(5.0);
    let h = managed(vec![alice], |c| {
        sampled(c, 0.99);
        let price = Price {
            input_per_mtok: 0.15,
            output_per_mtok: 0.6,
        };
        c.pricing.insert("gpt-4o-mini".into(), price);
    })
    .await;
    h.upstream.set_embedding(STORED, axis());
    h.upstream.set_embedding(REWORDED, at_cosine(0.95));
    let chat = |q: &'static str| {
        let h = &h;
        async move { Reply::read(h.chat_with(SECRET, &[], &ask(q)).await).await }
    };
    assert_eq!(chat(STORED).await.cache_status(), "miss");
    let limits = |stats: &Value| {
        let k = &stats["keys"][0];
        (k["remaining_tokens"].clone(), k["spent_usd"].clone())
    };
    let before = limits(&h.admin("GET", "/admin/stats", None).await.json());
    assert_eq!(
        chat(REWORDED).await.header("x-deja-match"),
        Some("semantic")
    );
    let t = judged(&h, 1).await;
    assert_eq!(t["shadow"]["calls"], 1, "{t}");
    assert!(t["shadow"]["cost_usd"].as_f64().unwrap() > 0.0, "{t}");
    let after = limits(&h.admin("GET", "/admin/stats", None).await.json());
    assert_eq!(before, after, "the shadow call was charged to the key");
    // It went upstream with deja's key, as every call in managed mode does.
    let shadow = h.upstream.last_request(CHAT_PATH).unwrap();
    let auth = shadow
        .headers
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(auth, format!("Bearer {UPSTREAM_KEY}"));
}

#[tokio::test]
async fn sampling_is_off_by_default() {
    let h = with_entry(|_| {}).await;
    for _ in 0..3 {
        let hit = h.chat(&ask(REWORDED)).await;
        assert_eq!(hit.header("x-deja-match"), Some("semantic"));
    }
    // Background work would have had time to start (it starts before the hit returns).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.upstream.calls(CHAT_PATH), 1);
    assert_eq!(trust(&h).await["shadow"]["calls"], 0);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts() {
    let h = with_entry(|c| {
        sampled(c, 0.99);
        c.cache.trust.shadow_queue = 1;
    })
    .await;
    h.upstream.set_latency(Duration::from_secs(2));
    for _ in 0..3 {
        h.chat(&ask(REWORDED)).await;
    }
    let t = trust(&h).await;
    assert_eq!(t["shadow"]["dropped"], 2, "{t}");
    judged(&h, 1).await;
    assert_eq!(h.upstream.calls(CHAT_PATH), 2);
}

/// Waits until entry `id` is gone (eviction runs in the background).
async fn gone(h: &Harness, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let read = h.admin("GET", &format!("/admin/entries/{id}"), None).await;
        if read.status == 404 {
            return;
        }
        assert!(Instant::now() < deadline, "entry {id} was not evicted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A chat completion as the API returns it, saying `content`.
fn completion(id: &str, content: &str) -> String {
    serde_json::json!({
        "id": id,
        "object": "chat.completion",
        "created": 1_700_000_100,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": null, "annotations": []},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 40, "completion_tokens": 1, "total_tokens": 41},
        "service_tier": "default",
        "system_fingerprint": "fp_0"
    })
    .to_string()
}

#[tokio::test]
async fn a_judge_model_decides_through_the_upstream() {
    use crate::support::fake_upstream::script::Scripted;
    let h = with_entry(|c| {
        sampled(c, 0.99);
        c.cache.trust.judge_model = Some("gpt-4o-mini".into());
    })
    .await;
    let respond = |body: String| Scripted::Respond {
        status: 200,
        headers: Vec::new(),
        body,
    };
    // The shadow's fresh answer, then the judge's verdict.
    h.upstream.script(
        CHAT_PATH,
        [
            respond(completion("chatcmpl-shadow", "Paris is the capital.")),
            respond(completion("chatcmpl-judge", "No.")),
        ],
    );
    assert_eq!(
        h.chat(&ask(REWORDED)).await.header("x-deja-match"),
        Some("semantic")
    );
    let t = judged(&h, 1).await;
    assert_eq!(t["judge"], "model");
    assert_eq!(t["shadow"]["judge_calls"], 1, "{t}");
    assert_eq!(t["shadow"]["disagree"], 1, "{t}");
    let judge = h.upstream.last_request(CHAT_PATH).unwrap();
    let body: Value = serde_json::from_slice(&judge.body).unwrap();
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["messages"][0]["role"], "system");
    let asked = body["messages"][1]["content"].as_str().unwrap();
    assert!(asked.contains(REWORDED) && asked.contains("Paris is the capital."));
}
