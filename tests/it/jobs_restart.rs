//! A restart loses no accepted job: the real binary is killed (SIGKILL) with 1,000 jobs
//! queued and some running, started again on the same directory, and every job finishes with
//! the answer the synchronous call gives. Delivery is at least once: a job running at the
//! crash runs again.

use std::time::{Duration, Instant};

use crate::support::fake_upstream::{CHAT_PATH, FakeUpstream, deterministic_answer, http_client};
use crate::support::process::{DejaProcess, write_config};
use futures_util::StreamExt;
use serde_json::{Value, json};

const JOBS: usize = 1000;

fn question(i: usize) -> String {
    format!("restart question number {i}")
}

#[tokio::test]
async fn sigkill_with_jobs_queued_loses_none() {
    let upstream = FakeUpstream::start().await;
    upstream.set_deterministic(true);
    upstream.set_latency(Duration::from_millis(40));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream.base_url(), "info", "");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[jobs]\nconcurrency = 4\n");
    std::fs::write(&config, text).unwrap();

    let mut deja = DejaProcess::start(&config).await;
    let client = http_client();
    let url = format!("http://{}/v1/async/chat/completions", deja.addr);
    let ids: Vec<(usize, String)> = futures_util::stream::iter(0..JOBS)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let body = json!({"model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": question(i)}]});
                let response = client
                    .post(&url)
                    .bearer_auth("sk-restart")
                    .json(&body)
                    .send()
                    .await
                    .expect("submit");
                assert_eq!(response.status(), 202);
                let job: Value = response.json().await.unwrap();
                (i, job["id"].as_str().unwrap().to_string())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    // Some jobs have run, most have not.
    deja.crash().await;
    let before = upstream.calls(CHAT_PATH);
    assert!(
        before < JOBS,
        "the kill came before the queue drained ({before})"
    );

    let deja = DejaProcess::start(&config).await;
    let poll = |id: &str| {
        client
            .get(format!("http://{}/v1/async/jobs/{id}", deja.addr))
            .bearer_auth("sk-restart")
            .send()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    for (i, id) in &ids {
        let job = loop {
            let response = poll(id).await.expect("poll");
            assert_eq!(
                response.status(),
                200,
                "job {id} accepted before the kill is kept"
            );
            let job: Value = response.json().await.unwrap();
            if !matches!(job["status"].as_str(), Some("queued" | "running")) {
                break job;
            }
            assert!(Instant::now() < deadline, "jobs did not finish");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(
            job["response"]["body"]["choices"][0]["message"]["content"],
            deterministic_answer(&question(*i)),
            "job {i} has its own answer"
        );
    }
    let calls = upstream.calls(CHAT_PATH);
    eprintln!("{JOBS} jobs; upstream calls {before} before the kill, {calls} in all");
    // Each question went upstream at least once; a job running at the kill may go again.
    assert!((JOBS..=JOBS + 4 + 8).contains(&calls), "{calls}");
}
