//! Hostile or broken clients: the proxy answers clearly, loses nothing, and protects itself.

mod support;

use std::time::{Duration, Instant};

use support::fake_upstream::CHAT_PATH;
use support::proxy::{Harness, KEY_A, Reply};
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
