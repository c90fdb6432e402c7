//! WebSocket upgrades (Realtime API) are tunnelled to the upstream, with the managed-key rules.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::admin::{UPSTREAM_KEY, key, managed};

const ALICE: &str = "sk-deja-alice-secret";
// The handshake example of RFC 6455 §1.3: this key's accept value is fixed.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// An upstream that accepts WebSocket upgrades (RFC 6455 handshake) and echoes every byte
/// after it; it records each request head it receives.
struct EchoUpstream {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl EchoUpstream {
    async fn start() -> EchoUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = heads.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(echo(stream, recorded.clone()));
            }
        });
        EchoUpstream { addr, heads }
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

async fn echo(mut stream: TcpStream, heads: Arc<Mutex<Vec<String>>>) {
    let Some((head, rest)) = read_head(&mut stream).await else {
        return;
    };
    heads.lock().push(head.clone());
    let lower = head.to_ascii_lowercase();
    let accept = lower.contains("upgrade: websocket")
        && lower.contains("connection: upgrade")
        && head.contains(&format!("{WS_KEY}\r\n"));
    if !accept {
        let body = r#"{"error":{"message":"expected a WebSocket upgrade","type":"invalid_request_error","param":null,"code":null}}"#;
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(answer.as_bytes()).await;
        return;
    }
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {WS_ACCEPT}\r\n\r\n"
    );
    stream.write_all(answer.as_bytes()).await.unwrap();
    stream.write_all(&rest).await.unwrap();
    let mut buffer = [0u8; 4096];
    while let Ok(read) = stream.read(&mut buffer).await {
        if read == 0 || stream.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// The request or response head (up to the blank line) and the bytes read after it.
async fn read_head(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).into_owned();
            return Some((head, data[end + 4..].to_vec()));
        }
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .ok()?
            .ok()?;
        if read == 0 {
            return None;
        }
        data.extend_from_slice(&buffer[..read]);
    }
}

/// Opens a WebSocket through deja; returns the stream, the response head and any bytes after.
async fn connect(proxy: SocketAddr, secret: &str) -> (TcpStream, String, Vec<u8>) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let request = format!(
        "GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: {proxy}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n\
         Authorization: Bearer {secret}\r\nOpenAI-Organization: org-chosen-by-caller\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (head, rest) = read_head(&mut stream).await.expect("a response head");
    (stream, head, rest)
}

#[tokio::test]
async fn websocket_upgrades_are_tunnelled_both_ways_with_dejas_key() {
    let upstream = EchoUpstream::start().await;
    let h = managed(vec![key("alice", ALICE)], |c| {
        c.upstream.base_url = upstream.base_url();
    })
    .await;
    let (mut socket, head, rest) = connect(h.proxy.addr, ALICE).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(rest.is_empty(), "bytes before the tunnel: {rest:?}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(lower.contains("connection: upgrade"), "{head}");
    assert!(head.contains(WS_ACCEPT), "{head}");
    for message in [&b"\x81\x05hello"[..], &[0x82, 3, 0, 1, 2], &[7u8; 3000]] {
        socket.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(10), socket.read_exact(&mut echoed))
            .await
            .expect("echoed within 10 s")
            .unwrap();
        assert_eq!(echoed, message);
    }
    let heads = upstream.heads.lock().clone();
    assert_eq!(heads.len(), 1);
    let seen = &heads[0];
    assert!(
        seen.starts_with("GET /v1/realtime?model=gpt-realtime HTTP/1.1"),
        "{seen}"
    );
    let lower = seen.to_ascii_lowercase();
    assert!(lower.contains(&format!(
        "authorization: bearer {}",
        UPSTREAM_KEY.to_ascii_lowercase()
    )));
    assert!(lower.contains("sec-websocket-version: 13"), "{seen}");
    assert!(!seen.contains(ALICE), "{seen}");
    assert!(!lower.contains("openai-organization"), "{seen}");
}

#[tokio::test]
async fn websocket_with_an_unknown_key_gets_401_and_never_reaches_upstream() {
    let upstream = EchoUpstream::start().await;
    let h = managed(vec![key("alice", ALICE)], |c| {
        c.upstream.base_url = upstream.base_url();
    })
    .await;
    let (_, head, _) = connect(h.proxy.addr, "sk-deja-mallory").await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(upstream.heads.lock().is_empty());
}
