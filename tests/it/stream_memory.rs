//! A streamed hit is rendered as the client reads it: clients that ask for a large cached
//! answer as a stream and then stop reading hold one event each (and the stored answer once,
//! shared by the replays running), not the whole rendered replay, which is ten times the
//! answer (every piece of text becomes a chunk that repeats the id, model and other header
//! fields). The answer is large enough that the replay does not fit in the kernel's socket
//! buffers on loopback, so the rendered events would have to stay in the proxy's memory.

use std::time::Duration;

use crate::support::fake_upstream::{CHAT_PATH, ChatMode, FakeUpstream, http_client};
use crate::support::process::{DejaProcess, write_config};
use crate::support::proxy::KEY_A;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const KIB: u64 = 1024;
const CLIENTS: usize = 40;
/// The size of the cached answer's text.
const ANSWER_BYTES: usize = 1024 * 1024;
/// What a stalled client may hold: its connection and an event or a few, not the answer
/// (1 MiB), let alone its rendered replay (12 MiB; 11.6 MiB resident per client before the
/// replay was rendered lazily).
const PER_CLIENT_BUDGET: u64 = 150 * KIB;

/// VmRSS (resident memory now) of `pid`, in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kib * KIB
}

/// A chat completion as the API returns it, with a long text answer.
fn long_completion() -> String {
    let words = "the cached answer goes on and on ";
    let content = words.repeat(ANSWER_BYTES / words.len());
    json!({
        "id": "chatcmpl-long", "object": "chat.completion", "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_fake",
        "service_tier": "default",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content,
                     "refusal": null, "annotations": []},
                     "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 35_000, "total_tokens": 35_005}
    })
    .to_string()
}

fn request(stream: bool) -> String {
    json!({"model": "gpt-4o-mini", "stream": stream,
           "messages": [{"role": "user", "content": "tell me everything"}]})
    .to_string()
}

/// Sends a streaming request and reads only the response head (and whatever body bytes came
/// with it), then stops reading. The small receive buffer keeps the kernel from absorbing the
/// answer on the client's behalf.
async fn stalled_client(addr: std::net::SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let body = request(true);
    let head = format!(
        "POST {CHAT_PATH} HTTP/1.1\r\nhost: deja\r\nauthorization: Bearer {KEY_A}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 512];
    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
            .await
            .expect("deja answers")
            .unwrap();
        assert!(n > 0, "deja closed the connection");
        received.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("x-deja-cache: hit"), "{text}");
    stream
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_stream_readers_hold_one_event_not_the_replay() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream.base_url(), "info", "");
    let deja = DejaProcess::start(&config).await;
    let url = format!("http://{}{CHAT_PATH}", deja.addr);
    let client = http_client();
    let post = |body: String| {
        client
            .post(&url)
            .bearer_auth(KEY_A)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    // Store the long answer (from a JSON request), then replay it once in full, so the
    // baseline includes everything a first streamed hit allocates for good.
    upstream.set_chat_mode(ChatMode::Status(200, long_completion()));
    let stored = post(request(false)).await.unwrap();
    assert_eq!(stored.status(), 200);
    let replay = post(request(true)).await.unwrap();
    assert_eq!(replay.headers()["x-deja-cache"], "hit");
    let replay = replay.text().await.unwrap();
    assert!(replay.ends_with("data: [DONE]\n\n"));
    let rendered = replay.len() as u64;
    assert!(
        rendered > 4 * ANSWER_BYTES as u64,
        "{rendered} bytes replayed"
    );

    let before = resident_bytes(deja.pid());
    let mut stalled = Vec::new();
    for _ in 0..CLIENTS {
        stalled.push(stalled_client(deja.addr).await);
    }
    // Let the proxy write what the sockets take and settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_client = resident_bytes(deja.pid()).saturating_sub(before) / CLIENTS as u64;
    eprintln!(
        "stream_memory: {} KiB resident per stalled client (answer {} KiB, replay {} KiB)",
        per_client / KIB,
        ANSWER_BYTES as u64 / KIB,
        rendered / KIB
    );
    assert!(
        per_client < PER_CLIENT_BUDGET,
        "each stalled client holds {} KiB (budget {} KiB; the answer is {} KiB, its replay {} KiB)",
        per_client / KIB,
        PER_CLIENT_BUDGET / KIB,
        ANSWER_BYTES as u64 / KIB,
        rendered / KIB
    );
    assert_eq!(upstream.calls(CHAT_PATH), 1, "every stream was a hit");
    drop(stalled);
}
