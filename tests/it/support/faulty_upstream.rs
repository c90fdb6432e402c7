//! An upstream that misbehaves at the byte level, written on raw TCP so that it can do what no
//! well-behaved HTTP server does: reset a connection, stop in the middle of a body, stall, send
//! malformed JSON or SSE. Each request picks its fault by naming it in its body
//! (`fault:<name>`), so faults can run side by side. Every connection is closed after one
//! response. Listens on 127.0.0.1; dropping it stops everything, and a stall ends by itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The faults, by the name a request body carries.
pub const FAULTS: [&str; 9] = [
    "reset",          // close the connection before any response byte
    "cut_json",       // 200 JSON headers announcing 200 bytes, then 10 bytes, then close
    "cut_stream",     // 200 SSE headers, two events, then close (no terminating chunk)
    "stall_json",     // 200 JSON headers, 10 bytes, then silence
    "stall_stream",   // 200 SSE headers, one event, then silence
    "malformed_json", // 200 with a complete but invalid JSON body
    "malformed_sse",  // 200 SSE whose events are not JSON, closed by [DONE]
    "slow_headers",   // silence before the status line
    "error_500",      // a well-formed OpenAI error
];

/// Faults outside the `FAULTS` round: `evil_headers` answers 200 with obs-text and a tab in
/// one header value and a bare CR (followed by `injected: yes`) in another.
pub const HEADER_FAULTS: [&str; 2] = ["evil_headers", "obs_text_headers"];

/// How long a stall lasts at most (far beyond any timeout the tests configure).
const STALL: Duration = Duration::from_secs(20);

pub struct FaultyUpstream {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    _shutdown: watch::Sender<()>,
}

impl FaultyUpstream {
    pub async fn start() -> FaultyUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local_addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let (shutdown, mut stop) = watch::channel(());
        let counter = requests.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    _ = stop.changed() => return,
                };
                let mut stop = stop.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve(stream, counter) => {}
                        _ = stop.changed() => {}
                    }
                });
            }
        });
        FaultyUpstream {
            addr,
            requests,
            _shutdown: shutdown,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Requests received so far (all paths).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn serve(mut stream: TcpStream, requests: Arc<AtomicUsize>) {
    let Some(body) = read_request(&mut stream).await else {
        return;
    };
    requests.fetch_add(1, Ordering::SeqCst);
    let body = String::from_utf8_lossy(&body);
    let fault = FAULTS
        .iter()
        .chain(&HEADER_FAULTS)
        .find(|f| body.contains(&format!("fault:{f}\"")))
        .copied()
        .unwrap_or("none");
    let sse = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
               transfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    let event = |text: &str| {
        let data = format!(
            "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\
             \"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}},\
             \"finish_reason\":null}}]}}\n\n"
        );
        format!("{:x}\r\n{data}\r\n", data.len())
    };
    let _ = match fault {
        "reset" => Ok(()),
        "cut_json" => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                        content-length: 200\r\nconnection: close\r\n\r\n{\"id\":\"x\",";
            stream.write_all(head.as_bytes()).await
        }
        "cut_stream" => {
            let text = format!("{sse}{}{}", event("partial "), event("answer "));
            stream.write_all(text.as_bytes()).await
        }
        "stall_json" => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                        content-length: 200\r\nconnection: close\r\n\r\n{\"id\":\"x\",";
            let _ = stream.write_all(head.as_bytes()).await;
            stall(&mut stream).await;
            Ok(())
        }
        "stall_stream" => {
            let _ = stream
                .write_all(format!("{sse}{}", event("stalled ")).as_bytes())
                .await;
            stall(&mut stream).await;
            Ok(())
        }
        "malformed_json" => respond(&mut stream, 200, "application/json", "{\"id\": ]").await,
        "malformed_sse" => {
            let bad = "data: {not json\n\n";
            let done = "data: [DONE]\n\n";
            let text = format!(
                "{sse}{:x}\r\n{bad}\r\n{:x}\r\n{done}\r\n0\r\n\r\n",
                bad.len(),
                done.len()
            );
            stream.write_all(text.as_bytes()).await
        }
        "slow_headers" => {
            stall(&mut stream).await;
            Ok(())
        }
        "error_500" => {
            let error = r#"{"error":{"message":"upstream broke","type":"server_error","param":null,"code":null}}"#;
            respond(&mut stream, 500, "application/json", error).await
        }
        "evil_headers" | "obs_text_headers" => {
            let mut head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                             x-obs: a\xff\tb\r\n"
                .to_vec();
            if fault == "evil_headers" {
                head.extend_from_slice(b"x-split: a\rinjected: yes\r\n");
            }
            head.extend_from_slice(b"content-length: 2\r\nconnection: close\r\n\r\n{}");
            stream.write_all(&head).await
        }
        _ => respond(&mut stream, 404, "application/json", "{}").await,
    };
    // Dropping the stream closes the connection, mid-body for the cut faults.
}

/// Silence until `STALL` passes or the client hangs up (so the test's descriptor count sees
/// only the proxy's sockets).
async fn stall(stream: &mut TcpStream) {
    let mut sink = [0u8; 1024];
    let hung_up = async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(STALL, hung_up).await;
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let text = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(text.as_bytes()).await
}

/// Reads one request (headers, then a `content-length` body); returns the body.
async fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buffer.len() < header_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    Some(buffer[header_end..].to_vec())
}
