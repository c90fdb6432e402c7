//! What one request may cost:
//! - a body of millions of tiny JSON values is refused with a 400 before a tree is built, and
//!   the worst bodies allowed keep the proxy's peak memory bounded (VmHWM of the real binary);
//! - a long last message is never embedded or verified (exact tier only);
//! - a client that stops reading a stream is cut off after `server.write_timeout_secs`.

use std::time::Duration;

use crate::support::fake_upstream::{CHAT_PATH, EMBEDDINGS_PATH, FakeUpstream, http_client};
use crate::support::process::{DejaProcess, write_config};
use crate::support::proxy::{Harness, KEY_A, ask};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

const MIB: u64 = 1024 * 1024;
/// The default `server.max_body_bytes` and `server.max_json_values`.
const MAX_BODY: usize = 32 * 1024 * 1024;
const MAX_VALUES: usize = 1_000_000;
/// Peak growth allowed for the worst bodies: a few times the body itself (it is held while
/// read, parsed and relayed), far below the gigabytes a tree of 16 million values took.
const PEAK_BUDGET: u64 = 320 * MIB;

/// VmHWM (peak resident memory) of `pid`, in bytes.
fn peak_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM");
    kib * 1024
}

/// `{"model":..., <field>: [<item>,<item>,...]}` of about `bytes` bytes with `count` items.
fn padded(model_field: &str, field: &str, item: &str, count: usize, prefix: &str) -> Vec<u8> {
    let mut body = format!(r#"{{"model":"{model_field}",{prefix}"{field}":["#).into_bytes();
    for i in 0..count {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item.as_bytes());
    }
    body.extend_from_slice(b"]}");
    body
}

async fn post(deja: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
    let response = http_client()
        .post(format!("http://{deja}{path}"))
        .bearer_auth(KEY_A)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("deja answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worst_bodies_allowed_keep_peak_memory_bounded() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream.base_url(), "info", "");
    let deja = DejaProcess::start(&config).await;
    let addr = deja.addr.to_string();
    let before = peak_bytes(deja.pid());
    let messages = r#""messages":[{"role":"user","content":"hi"}],"#;
    let check = |what: &str| {
        let grown = peak_bytes(deja.pid()).saturating_sub(before);
        assert!(
            grown < PEAK_BUDGET,
            "{what}: peak memory grew by {} MiB",
            grown / MIB
        );
    };

    // Refused: as many tiny values as the body limit holds.
    let tiny = MAX_BODY / 2 - 100;
    let body = padded("gpt-4o-mini", "metadata_list", "0", tiny, messages);
    let (status, error) = post(&addr, CHAT_PATH, body).await;
    check("a chat body of 16 million values");
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("server.max_json_values"),
        "{error}"
    );
    let body = padded(
        "text-embedding-3-small",
        "input",
        r#""""#,
        MAX_BODY / 3 - 100,
        "",
    );
    let (status, _) = post(&addr, EMBEDDINGS_PATH, body).await;
    check("an embeddings body of 11 million inputs");
    assert_eq!(status, 400);

    // Allowed: just under the value limit, and as long as the body limit allows.
    let body = padded(
        "gpt-4o-mini",
        "metadata_list",
        "0",
        MAX_VALUES - 100,
        messages,
    );
    post(&addr, CHAT_PATH, body).await;
    check("a chat body of a million values");
    let hi = r#""input":"hi","#;
    let body = padded("text-embedding-3-small", "extra", "0", MAX_VALUES - 100, hi);
    post(&addr, EMBEDDINGS_PATH, body).await;
    check("an embeddings body of a million values");
    let long = format!(r#""{}""#, "word ".repeat(MAX_BODY / 5 / 2048 - 10));
    let body = padded("text-embedding-3-small", "input", &long, 2048, "");
    post(&addr, EMBEDDINGS_PATH, body).await;
    check("an embeddings body of 2048 long inputs");
    assert!(
        upstream.calls(CHAT_PATH) > 0,
        "allowed bodies went upstream"
    );
}

#[tokio::test]
async fn a_long_last_message_is_never_embedded() {
    let h = Harness::with(|c| c.cache.max_semantic_bytes = 1000).await;
    let body = ask(&"a long question ".repeat(100));
    assert_eq!(h.chat(&body).await.status, 200);
    let again = h.chat(&body).await;
    assert_eq!((again.status, again.cache_status()), (200, "hit"));
    assert_eq!(again.header("x-deja-match"), Some("exact"));
    assert_eq!(
        h.upstream.calls(EMBEDDINGS_PATH),
        0,
        "no embedding of a text past cache.max_semantic_bytes"
    );
    // A short one still takes the semantic tier.
    assert_eq!(h.chat(&ask("a short question")).await.status, 200);
    assert_eq!(h.upstream.calls(EMBEDDINGS_PATH), 1);
}

#[tokio::test]
async fn a_client_that_stops_reading_a_stream_is_cut_off() {
    let h = Harness::with(|c| c.server.write_timeout_secs = 1).await;
    // A long answer (the fake echoes the prompt), stored from a JSON request.
    let prompt = "many words to replay ".repeat(50_000);
    let mut body = ask(&prompt);
    assert_eq!(h.chat(&body).await.status, 200);
    body["stream"] = json!(true);
    let body = body.to_string();

    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(h.proxy.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: deja\r\nauthorization: Bearer {KEY_A}\r\n\
         content-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    // Read nothing for longer than the write timeout, then everything that is left.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut received));
    let _ = read.await.expect("the connection ends");
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(text.contains("x-deja-cache: hit"));
    assert!(
        !text.contains("data: [DONE]"),
        "the stalled client was cut off before the end ({} bytes read)",
        received.len()
    );
}
