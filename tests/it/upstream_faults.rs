//! An upstream that resets connections, stops or stalls mid-body, sends malformed JSON or SSE,
//! answers too slowly or fails: the client always gets a clear OpenAI-shaped error or the
//! upstream's own answer relayed, nothing partial is cached (a repeat goes upstream again), and
//! over many repetitions the proxy's file descriptors and memory stay bounded.

use std::time::Duration;

use crate::support::faulty_upstream::{FAULTS, FaultyUpstream};
use crate::support::proxy::{Harness, KEY_A, ask, ask_stream};
use serde_json::Value;

/// Rounds of every fault (run side by side within a round) after the warm-up round.
const ROUNDS: usize = 8;

async fn harness(faulty: &FaultyUpstream) -> Harness {
    let base_url = faulty.base_url();
    Harness::with(move |c| {
        c.upstream.base_url = base_url;
        c.upstream.timeout_secs = 1.0; // until the response headers (slack for a busy machine)
        c.upstream.idle_timeout_secs = 0.5; // silence allowed within a body
        c.cache.semantic = false; // no embeddings calls to the broken upstream
        // One call per request: retries are tested in tests/it/resilience.rs, and here they
        // would turn each fault into several upstream calls.
        c.upstream.retry.max_attempts = 1;
    })
    .await
}

/// What the client saw: status, the error's `code` when the body is an OpenAI error, the
/// body as far as it arrived, and whether it arrived whole.
#[derive(Debug)]
struct Seen {
    status: u16,
    cache: Option<String>,
    code: Option<String>,
    body: String,
    complete: bool,
}

async fn call(h: &Harness, body: &Value) -> Seen {
    let mut response = h
        .client
        .post(h.url("/v1/chat/completions"))
        .bearer_auth(KEY_A)
        .json(body)
        .send()
        .await
        .expect("deja always answers with a status");
    let status = response.status().as_u16();
    let cache = response
        .headers()
        .get("x-deja-cache")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut bytes = Vec::new();
    let complete = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) => break true,
            Err(_) => break false,
        }
    };
    let body = String::from_utf8_lossy(&bytes).into_owned();
    let code = serde_json::from_str::<Value>(&body).ok().and_then(|v| {
        let error = v.get("error")?;
        assert!(
            error["message"].is_string() && error["type"].is_string(),
            "{v}"
        );
        Some(error["code"].as_str().unwrap_or("").to_owned())
    });
    Seen {
        status,
        cache,
        code,
        body,
        complete,
    }
}

fn request(fault: &str, round: usize) -> Value {
    let question = format!("question {round} fault:{fault}");
    if fault.ends_with("stream") || fault == "malformed_sse" {
        ask_stream(&question, false)
    } else {
        ask(&question)
    }
}

/// What each fault must look like to the client.
fn check(fault: &str, seen: &Seen) {
    let expect_error = |status: u16, code: &str| {
        assert_eq!(seen.status, status, "{fault}: {seen:?}");
        assert_eq!(seen.code.as_deref(), Some(code), "{fault}: {seen:?}");
    };
    match fault {
        "reset" | "cut_json" | "stall_json" => expect_error(502, "upstream_unreachable"),
        "slow_headers" => expect_error(504, "upstream_timeout"),
        "error_500" => {
            assert_eq!(seen.status, 500, "{seen:?}");
            assert!(seen.body.contains("upstream broke"), "relayed: {seen:?}");
        }
        "malformed_json" => {
            assert_eq!(
                (seen.status, seen.body.as_str()),
                (200, "{\"id\": ]"),
                "relayed"
            );
        }
        "malformed_sse" => {
            assert_eq!(seen.status, 200);
            assert!(seen.body.contains("{not json"), "relayed: {seen:?}");
        }
        "cut_stream" | "stall_stream" => {
            // Headers were relayed before the trouble; the body is cut, never finished.
            assert_eq!(seen.status, 200);
            assert!(
                !seen.complete,
                "a cut stream must not look complete: {seen:?}"
            );
            assert!(!seen.body.contains("[DONE]"), "{seen:?}");
        }
        _ => unreachable!(),
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Every fault once, side by side; each then repeated to see it was not cached.
async fn round(h: &Harness, faulty: &FaultyUpstream, round: usize) {
    let before = faulty.requests();
    let first = FAULTS.map(|fault| async move { call(h, &request(fault, round)).await });
    let seen = futures_util::future::join_all(first).await;
    for (fault, seen) in FAULTS.iter().zip(&seen) {
        check(fault, seen);
    }
    let again = FAULTS.map(|fault| async move { call(h, &request(fault, round)).await });
    let repeats = futures_util::future::join_all(again).await;
    for (fault, seen) in FAULTS.iter().zip(&repeats) {
        check(fault, seen);
        assert_ne!(seen.cache.as_deref(), Some("hit"), "{fault} was cached");
    }
    assert_eq!(
        faulty.requests() - before,
        2 * FAULTS.len(),
        "every repeat went upstream again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_gets_a_clear_answer_and_nothing_is_cached() {
    let faulty = FaultyUpstream::start().await;
    let h = harness(&faulty).await;
    round(&h, &faulty, 0).await;
    assert_eq!(h.cache().entries(), 0);

    // Bounded over many rounds: descriptors back to the warm level (give pooled connections
    // and stalled sockets time to close), memory growth small next to the warm footprint.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (fds_warm, rss_warm) = (open_fds(), rss_kib());
    for n in 1..=ROUNDS {
        round(&h, &faulty, n).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (fds, rss) = (open_fds(), rss_kib());
    eprintln!(
        "{ROUNDS} rounds x {} faults x 2: fds {fds_warm} -> {fds}, RSS {rss_warm} -> {rss} KiB",
        FAULTS.len()
    );
    assert!(
        fds <= fds_warm + 4,
        "file descriptors leak: {fds_warm} -> {fds}"
    );
    assert!(
        rss < rss_warm + 8 * 1024,
        "memory grows: {rss_warm} -> {rss} KiB"
    );
    assert_eq!(h.cache().entries(), 0, "nothing partial was stored");
}
