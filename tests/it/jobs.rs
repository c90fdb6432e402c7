//! The job queue through the real server (in-process, port 0) and the fake upstream: submit,
//! poll, signed webhooks (checked by a loopback receiver with its own HMAC), cancel, cache
//! first, coalescing, the allow-list, tenants.

use std::time::Duration;

use crate::support::fake_upstream::CHAT_PATH;
use crate::support::proxy::{Harness, KEY_A, KEY_B, ask};
use crate::support::webhook_receiver::{SECRET, WebhookReceiver};
use serde_json::Value;

async fn harness(receiver: Option<&WebhookReceiver>, concurrency: usize) -> Harness {
    let allow = receiver.map(|r| r.url("/hooks"));
    Harness::with(move |config| {
        config.jobs.concurrency = concurrency;
        config.jobs.webhook_initial_backoff_ms = 50;
        if let Some(allow) = allow {
            config.jobs.callback_allow = vec![allow];
            config.jobs.webhook_secret = Some(SECRET.into());
        }
    })
    .await
}

async fn submit(
    h: &Harness,
    key: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> reqwest::Response {
    let mut request = h
        .client
        .post(h.url("/v1/async/chat/completions"))
        .bearer_auth(key)
        .json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("proxy answers")
}

async fn submitted(h: &Harness, body: &Value) -> Value {
    let response = submit(h, KEY_A, &[], body).await;
    assert_eq!(response.status(), 202);
    response.json().await.expect("job json")
}

async fn poll(h: &Harness, key: &str, id: &str) -> (u16, Value) {
    let response = h
        .client
        .get(h.url(&format!("/v1/async/jobs/{id}")))
        .bearer_auth(key)
        .send()
        .await
        .expect("poll");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

/// Polls until the job has finished (panics after 20 s).
async fn finished(h: &Harness, id: &str) -> Value {
    // Long enough for a queue paused by a 30 s upstream rate limit.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while std::time::Instant::now() < deadline {
        let (status, job) = poll(h, KEY_A, id).await;
        assert_eq!(status, 200, "{job}");
        if !matches!(job["status"].as_str(), Some("queued" | "running")) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job {id} did not finish");
}

#[tokio::test]
async fn submit_poll_and_receive_a_signed_webhook() {
    let receiver = WebhookReceiver::start(0).await;
    let h = harness(Some(&receiver), 2).await;
    let hook = receiver.url("/hooks/deja");
    let response = submit(
        &h,
        KEY_A,
        &[("x-deja-callback-url", hook.as_str())],
        &ask("What is the capital of France?"),
    )
    .await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let job: Value = response.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("job_"));
    assert_eq!(job["object"], "deja.job");
    assert_eq!(job["status"], "queued");
    assert_eq!(job["endpoint"], "/v1/chat/completions");
    assert!(job["created_at"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(job["url"], format!("/v1/async/jobs/{id}"));
    assert_eq!(location, format!("/v1/async/jobs/{id}"));

    let done = finished(&h, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let answer = &done["response"];
    assert_eq!(answer["status_code"], 200);
    assert_eq!(answer["headers"]["x-deja-cache"], "miss");
    assert_eq!(answer["body"]["object"], "chat.completion");
    assert_eq!(done["usage"], answer["body"]["usage"]);
    assert!(done["usage"]["total_tokens"].as_u64().unwrap() > 0);

    // The synchronous call now hits the entry the job stored: the same answer.
    let sync = h.chat(&ask("What is the capital of France?")).await;
    assert_eq!(sync.cache_status(), "hit");
    assert_eq!(
        sync.json()["choices"][0]["message"],
        answer["body"]["choices"][0]["message"]
    );
    assert_eq!(h.upstream.calls(CHAT_PATH), 1);

    let deliveries = receiver.wait_for(1).await;
    let delivery = &deliveries[0];
    assert!(delivery.signed, "signature checks out");
    assert_eq!(delivery.id, id);
    assert_eq!(delivery.body["type"], "job.succeeded");
    assert_eq!(delivery.body["data"]["id"], id.as_str());
    assert_eq!(delivery.body["data"]["response"], *answer);
    // The delivery is recorded on the job.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, job) = poll(&h, KEY_A, &id).await;
    assert_eq!(job["webhook"]["delivered"], true, "{job}");
    assert_eq!(job["webhook"]["attempts"][0]["status_code"], 204);
}

#[tokio::test]
async fn a_refused_webhook_is_retried_and_every_attempt_recorded() {
    let receiver = WebhookReceiver::start(2).await;
    let h = harness(Some(&receiver), 1).await;
    let hook = receiver.url("/hooks");
    let response = submit(
        &h,
        KEY_A,
        &[("x-deja-callback-url", hook.as_str())],
        &ask("hi"),
    )
    .await;
    let job: Value = response.json().await.unwrap();
    let id = job["id"].as_str().unwrap();
    let deliveries = receiver.wait_for(3).await;
    assert!(deliveries.iter().all(|d| d.signed && d.id == id));
    assert_eq!(receiver.refusals_left(), 0);
    // Same body each time: a receiver can deduplicate on webhook-id.
    assert_eq!(deliveries[0].body, deliveries[2].body);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, job) = poll(&h, KEY_A, id).await;
    let codes: Vec<_> = job["webhook"]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].as_u64().unwrap())
        .collect();
    assert_eq!(codes, [500, 500, 204]);
    assert_eq!(job["webhook"]["delivered"], true);
}

#[tokio::test]
async fn callbacks_outside_the_allow_list_are_refused() {
    let receiver = WebhookReceiver::start(0).await;
    let h = harness(Some(&receiver), 1).await;
    let allowed = receiver.url("/hooks");
    for url in [
        "http://169.254.169.254/latest/meta-data".to_string(),
        format!("{allowed}.evil.example/x"),
        format!("{}/admin", receiver.url("")),
        format!("{allowed}/../admin"),
        "not a url".to_string(),
    ] {
        let response = submit(
            &h,
            KEY_A,
            &[("x-deja-callback-url", url.as_str())],
            &ask("hi"),
        )
        .await;
        assert_eq!(response.status(), 400, "{url}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "x-deja-callback-url");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.upstream.calls(CHAT_PATH), 0, "nothing was queued");
    assert!(receiver.deliveries().is_empty());
}

#[tokio::test]
async fn bad_input_gets_the_synchronous_400_at_once() {
    let h = harness(None, 1).await;
    for (body, content_type) in [
        ("{not json", "application/json"),
        ("[1,2]", "application/json"),
    ] {
        let post = |path: &str| {
            h.client
                .post(h.url(path))
                .bearer_auth(KEY_A)
                .header("content-type", content_type)
                .body(body)
                .send()
        };
        let sync = post("/v1/chat/completions").await.unwrap();
        let queued = post("/v1/async/chat/completions").await.unwrap();
        assert_eq!(sync.status(), 400);
        assert_eq!(queued.status(), 400);
        assert_eq!(
            sync.json::<Value>().await.unwrap(),
            queued.json::<Value>().await.unwrap()
        );
    }
    // A bad control header too.
    let response = submit(&h, KEY_A, &[("x-deja-threshold", "lots")], &ask("hi")).await;
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn a_queued_job_can_be_cancelled_and_never_runs() {
    let h = harness(None, 1).await;
    h.upstream.set_latency(Duration::from_millis(800));
    let first = submitted(&h, &ask("first question")).await;
    let second = submitted(&h, &ask("second question")).await;
    let (first, second) = (
        first["id"].as_str().unwrap(),
        second["id"].as_str().unwrap(),
    );
    // Wait until the only worker has taken the first.
    for _ in 0..100 {
        if poll(&h, KEY_A, first).await.1["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let delete = |id: String| {
        h.client
            .delete(h.url(&format!("/v1/async/jobs/{id}")))
            .bearer_auth(KEY_A)
            .send()
    };
    let cancelled = delete(second.to_string()).await.unwrap();
    assert_eq!(cancelled.status(), 200);
    assert_eq!(
        cancelled.json::<Value>().await.unwrap()["status"],
        "cancelled"
    );
    let running = delete(first.to_string()).await.unwrap();
    assert_eq!(running.status(), 409);
    assert_eq!(
        running.json::<Value>().await.unwrap()["error"]["code"],
        "job_not_cancellable"
    );
    assert_eq!(finished(&h, first).await["status"], "succeeded");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, job) = poll(&h, KEY_A, second).await;
    assert_eq!(job["status"], "cancelled");
    assert!(job["response"].is_null());
    assert_eq!(
        h.upstream.calls(CHAT_PATH),
        1,
        "the cancelled job never ran"
    );
}

#[tokio::test]
async fn a_cache_hit_completes_without_upstream() {
    let h = harness(None, 2).await;
    let sync = h.chat(&ask("What is 6 times 7?")).await;
    assert_eq!(sync.cache_status(), "miss");
    let job = submitted(&h, &ask("What is 6 times 7?")).await;
    let done = finished(&h, job["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["response"]["headers"]["x-deja-cache"], "hit");
    assert_eq!(done["response"]["headers"]["x-deja-match"], "exact");
    assert_eq!(
        done["response"]["body"]["choices"][0]["message"],
        sync.json()["choices"][0]["message"]
    );
    assert_eq!(h.upstream.calls(CHAT_PATH), 1);
}

#[tokio::test]
async fn fifty_identical_jobs_make_one_upstream_call() {
    let h = harness(None, 8).await;
    h.upstream.set_latency(Duration::from_millis(300));
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(
            submitted(&h, &ask("Summarise the plot of Hamlet")).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let mut contents = Vec::new();
    for id in &ids {
        let done = finished(&h, id).await;
        assert_eq!(done["status"], "succeeded");
        contents.push(done["response"]["body"]["choices"][0]["message"]["content"].clone());
    }
    assert_eq!(h.upstream.calls(CHAT_PATH), 1);
    assert!(contents.iter().all(|c| *c == contents[0]));
}

#[tokio::test]
async fn another_tenants_job_id_is_a_404() {
    let h = harness(None, 1).await;
    let job = submitted(&h, &ask("private question")).await;
    let id = job["id"].as_str().unwrap();
    let (status, body) = poll(&h, KEY_B, id).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "job_not_found");
    let deleted = h
        .client
        .delete(h.url(&format!("/v1/async/jobs/{id}")))
        .bearer_auth(KEY_B)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 404);
    assert_eq!(finished(&h, id).await["status"], "succeeded");
    assert_eq!(poll(&h, KEY_A, "job_unknown").await.0, 404);
}

#[tokio::test]
async fn an_upstream_429_pauses_the_queue_and_loses_no_job() {
    let h = harness(None, 4).await;
    // As long as the case: the organization's limit is met for 30 s.
    h.upstream.rate_limit_for(Duration::from_secs(30));
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            submitted(&h, &ask(&format!("question {i}"))).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for id in &ids {
        let done = finished(&h, id).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["response"]["status_code"], 200);
    }
    let calls = h.upstream.calls(CHAT_PATH);
    let refused = calls - 20;
    // The first wave meets the limit (4 workers, each call with the synchronous path's own
    // 3 attempts); then the queue waits for the reset instead of trying again and again.
    eprintln!("429s answered: {refused}");
    assert!(refused >= 1, "the limit was met");
    assert!(
        refused <= 4 * 3 + 4,
        "no retries burnt against the limit: {refused}"
    );
}

#[tokio::test]
async fn managed_keys_authenticate_jobs_and_own_them() {
    use crate::support::admin::{UPSTREAM_KEY, key, managed, metric};
    const ALICE: &str = "sk-deja-alice-secret";
    const BOB: &str = "sk-deja-bob-secret";
    let h = managed(vec![key("alice", ALICE), key("bob", BOB)], |_| {}).await;
    let refused = submit(&h, "sk-deja-mallory", &[], &ask("hello")).await;
    assert_eq!(refused.status(), 401);
    let response = submit(&h, ALICE, &[], &ask("hello")).await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(poll(&h, BOB, &id).await.0, 404, "another key's job");
    assert_eq!(poll(&h, "sk-deja-mallory", &id).await.0, 401);
    let done = loop {
        let (status, job) = poll(&h, ALICE, &id).await;
        assert_eq!(status, 200);
        if job["status"] == "succeeded" {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(done["response"]["status_code"], 200);
    // The job reached the upstream with deja's key, never with the caller's.
    let sent = h.upstream.last_request(CHAT_PATH).unwrap();
    let auth = sent.headers["authorization"].to_str().unwrap();
    assert_eq!(auth, format!("Bearer {UPSTREAM_KEY}"));
    // The queue in /metrics.
    let text = h.metrics().await;
    assert_eq!(metric(&text, "deja_jobs_submitted_total"), 1.0);
    assert_eq!(
        metric(&text, "deja_jobs_finished_total{status=\"succeeded\"}"),
        1.0
    );
    assert_eq!(metric(&text, "deja_jobs_queued"), 0.0);
    assert_eq!(metric(&text, "deja_job_run_seconds_count"), 1.0);
}
