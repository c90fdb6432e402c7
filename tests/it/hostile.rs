//! Hostile or broken clients: the proxy answers clearly, loses nothing, and protects itself.

use std::time::{Duration, Instant};

use crate::support::fake_upstream::CHAT_PATH;
use crate::support::proxy::{Harness, KEY_A, Reply, ask};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn post_raw(h: &Harness, body: Vec<u8>) -> Reply {
    Reply::read(
        h.client
            .post(h.url("/v1/chat/completions"))
            .bearer_auth(KEY_A)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn deeply_nested_or_invalid_utf8_json_is_a_400() {
    let h = Harness::start().await;
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let reply = post_raw(&h, nested.into_bytes()).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");

    let mut invalid = br#"{"model":"m","messages":[{"role":"user","content":""#.to_vec();
    invalid.extend_from_slice(&[0xff, 0xfe]);
    invalid.extend_from_slice(br#""}]}"#);
    assert_eq!(post_raw(&h, invalid).await.status, 400);
    assert_eq!(h.upstream.calls(CHAT_PATH), 0);
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let h = Harness::with(|c| c.server.header_timeout_secs = 1).await;
    let mut stream = TcpStream::connect(h.proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buffer = Vec::new();
    // The server closes the connection (possibly after a 408) instead of waiting forever.
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buffer)).await;
    assert!(read.is_ok(), "connection still open after 5 s");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(h.upstream.total_calls(), 0);
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let h = Harness::with(|c| c.server.max_connections = 2).await;
    let idle_a = TcpStream::connect(h.proxy.addr).await.unwrap();
    let _idle_b = TcpStream::connect(h.proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let blocked = tokio::time::timeout(
        Duration::from_millis(500),
        h.client.get(h.url("/v1/models")).send(),
    )
    .await;
    assert!(blocked.is_err(), "a third connection must wait");

    drop(idle_a);
    let served = tokio::time::timeout(
        Duration::from_secs(5),
        h.client.get(h.url("/v1/models")).send(),
    )
    .await
    .expect("served once a slot frees up")
    .unwrap();
    assert_eq!(served.status(), 200);
}

// === bodies ===

/// Sends request headers announcing `length` bytes, then `sent` of them, then waits for the
/// answer (the connection stays open, as a slow-loris client keeps it).
async fn drip(h: &Harness, path: &str, length: usize, sent: &[u8]) -> String {
    let mut stream = TcpStream::connect(h.proxy.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY_A}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(sent).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer)).await;
    let n = read.expect("answered before 10 s").unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[tokio::test]
async fn a_body_that_never_finishes_gets_a_408() {
    let h = Harness::with(|c| c.server.body_timeout_secs = 1).await;
    // A cached endpoint reads the whole body; a relayed path streams it upstream.
    for path in ["/v1/chat/completions", "/v1/files"] {
        let answer = drip(&h, path, 1000, br#"{"model": "gpt-4o-mini", "mess"#).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
    }
    assert_eq!(h.upstream.calls(CHAT_PATH), 0);
}

#[tokio::test]
async fn oversized_bodies_get_a_413_declared_or_not() {
    let h = Harness::with(|c| c.server.max_body_bytes = 1000).await;
    let big = vec![b' '; 5000];
    for path in ["/v1/chat/completions", "/v1/embeddings", "/v1/files"] {
        // Declared: refused before the body is read.
        let reply = Reply::read(
            h.client
                .post(h.url(path))
                .bearer_auth(KEY_A)
                .body(big.clone())
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, 413, "{path}");
        assert_eq!(reply.json()["error"]["code"], "request_too_large");
        // Chunked, no length: refused once the limit is passed.
        let chunks = futures_util::stream::iter(
            big.chunks(500)
                .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
                .collect::<Vec<_>>(),
        );
        let response = h
            .client
            .post(h.url(path))
            .bearer_auth(KEY_A)
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 413, "{path} (chunked)");
    }
    assert_eq!(h.upstream.calls(CHAT_PATH), 0);
}

#[tokio::test]
async fn a_huge_messages_array_is_answered_and_cached() {
    let h = Harness::start().await;
    let mut body = ask("last question");
    let turns: Vec<_> = (0..50_000)
        .map(|i| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": "hi"}))
        .collect();
    let messages = body["messages"].as_array_mut().unwrap();
    messages.splice(1..1, turns);
    assert_eq!(h.chat(&body).await.status, 200);
    let again = h.chat(&body).await;
    assert_eq!((again.status, again.cache_status()), (200, "hit"));
    assert_eq!(h.upstream.calls(CHAT_PATH), 1);
}

#[tokio::test]
async fn many_more_connections_than_the_limit_are_all_served() {
    let h = Harness::with(|c| c.server.max_connections = 4).await;
    h.upstream.set_latency(Duration::from_millis(50));
    // One connection each (a fresh client), far more than the limit, all at once; twice, and
    // the second wave leaves no more descriptors open than the first (pooled upstream
    // connections are reused, nothing piles up per client).
    let mut fds = Vec::new();
    for wave in 0..2 {
        let calls = (0..64).map(|i| {
            let url = h.url("/v1/chat/completions");
            async move {
                let client = crate::support::fake_upstream::http_client();
                let question = format!("wave {wave} question {i}");
                let response = client.post(url).bearer_auth(KEY_A).json(&ask(&question));
                response.send().await.map(|r| r.status().as_u16())
            }
        });
        let statuses = futures_util::future::join_all(calls).await;
        assert!(
            statuses.iter().all(|s| matches!(s, Ok(200))),
            "{statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        fds.push(std::fs::read_dir("/proc/self/fd").unwrap().count());
    }
    assert_eq!(h.upstream.calls(CHAT_PATH), 128);
    assert!(fds[1] <= fds[0] + 4, "descriptors per wave: {fds:?}");
}
