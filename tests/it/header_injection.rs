//! Header injection. deja sets response headers only from numbers (similarity, entry id, Age,
//! counts) and copies validated `HeaderValue`s (upstream response headers; client headers
//! going upstream). This checks it from the outside: every byte value placed in a request
//! header value, in a JSON field (model, message) and in an upstream response header value
//! either gets refused or travels as one value; no CR/LF ever splits a header deja writes.

use crate::support::fake_upstream::CHAT_PATH;
use crate::support::faulty_upstream::FaultyUpstream;
use crate::support::proxy::{Harness, KEY_A};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes, returns the raw response head (up to the blank line).
async fn raw(h: &Harness, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(h.proxy.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut chunk));
        match read.await.expect("answered") {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            answer.truncate(end);
            break;
        }
    }
    answer
}

/// A response head is a status line and `name: value` lines; names are tokens, values have no
/// control bytes but tab; no header is named `injected`.
fn assert_well_formed(head: &[u8], context: &str) {
    let text = String::from_utf8_lossy(head);
    // Lines end in CRLF; a lone CR or LF anywhere would be a split.
    let mut lines = Vec::new();
    let mut rest = head;
    while let Some(at) = rest.windows(2).position(|w| w == b"\r\n") {
        lines.push(&rest[..at]);
        rest = &rest[at + 2..];
    }
    lines.push(rest);
    for line in &lines {
        assert!(
            !line.iter().any(|b| *b == b'\r' || *b == b'\n'),
            "bare CR/LF ({context}): {text}"
        );
    }
    let status = lines[0];
    assert!(status.starts_with(b"HTTP/1.1 "), "{context}: {text}");
    for line in &lines[1..] {
        let colon = line.iter().position(|&b| b == b':').expect("name: value");
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        assert!(
            !name.is_empty()
                && name
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(b)),
            "{context}: header name {:?}",
            String::from_utf8_lossy(name)
        );
        assert!(
            value
                .iter()
                .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)),
            "{context}: control byte in {:?}",
            String::from_utf8_lossy(value)
        );
        assert!(!name.eq_ignore_ascii_case(b"injected"), "{context}: {text}");
    }
}

fn request(path: &str, header: &str, value: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n").into_bytes();
    for (name, v) in [
        ("Authorization", format!("Bearer {KEY_A}").into_bytes()),
        (header, value.to_vec()),
    ] {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
    out
}

#[tokio::test]
async fn no_byte_in_a_request_splits_a_response_header() {
    let h = Harness::start().await;
    let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    for byte in 0u8..=255 {
        // The byte, then what an attacker hopes becomes a header of its own.
        let mut value = b"a".to_vec();
        value.push(byte);
        value.extend_from_slice(b"injected: yes");
        for (path, header) in [
            ("/v1/chat/completions", "x-deja-namespace"),
            ("/v1/chat/completions", "x-custom"),
            ("/v1/files", "x-custom"),
        ] {
            let before = h.upstream.total_calls();
            let head = raw(&h, &request(path, header, &value, body)).await;
            let context = format!("byte {byte:#04x} in {header} to {path}");
            assert_well_formed(&head, &context);
            if byte == b'\r'
                || byte == 0
                || (byte < 0x20 && byte != b'\t' && byte != b'\n')
                || byte == 0x7f
            {
                // Control bytes are refused by the HTTP parser before deja sees the request.
                assert!(head.starts_with(b"HTTP/1.1 400"), "{context}");
                assert_eq!(h.upstream.total_calls(), before, "{context} went upstream");
            }
            // Whatever reached the upstream, no header value there carries a CR or LF either.
            if let Some(last) = h.upstream.requests().last() {
                for (name, v) in &last.headers {
                    assert!(
                        !v.as_bytes().iter().any(|b| *b == b'\r' || *b == b'\n'),
                        "{context}: {name}"
                    );
                }
            }
        }
    }
    // JSON fields never reach response headers: CR/LF escaped inside the model name or prompt.
    for field in ["model", "content"] {
        let body = match field {
            "model" => {
                r#"{"model":"m\r\ninjected: yes","messages":[{"role":"user","content":"x"}]}"#
            }
            _ => r#"{"model":"m","messages":[{"role":"user","content":"x\r\ninjected: yes"}]}"#,
        };
        for _ in 0..2 {
            // A miss, then the hit (whose headers deja builds itself).
            let head = raw(
                &h,
                &request("/v1/chat/completions", "x-custom", b"1", body.as_bytes()),
            )
            .await;
            assert_well_formed(&head, field);
            assert!(
                head.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&head)
            );
        }
    }
    assert!(h.upstream.calls(CHAT_PATH) > 0);
}

#[tokio::test]
async fn an_upstream_cannot_split_headers_through_deja() {
    // obs-text and a tab in a value are relayed whole; a bare CR makes the response unreadable
    // (502), never a header of its own.
    let faulty = FaultyUpstream::start().await;
    let base_url = faulty.base_url();
    let h = Harness::with(move |c| {
        c.upstream.base_url = base_url;
        c.cache.semantic = false;
    })
    .await;
    for path in ["/v1/chat/completions", "/v1/files"] {
        for (fault, status) in [("evil_headers", "502"), ("obs_text_headers", "200")] {
            let body = format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"fault:{fault}"}}]}}"#
            );
            let head = raw(&h, &request(path, "x-custom", b"1", body.as_bytes())).await;
            assert_well_formed(&head, path);
            assert!(
                head.starts_with(format!("HTTP/1.1 {status}").as_bytes()),
                "{}",
                String::from_utf8_lossy(&head)
            );
            if status == "200" {
                let relayed = head.windows(4).any(|w| w == b"a\xff\tb");
                assert!(relayed, "obs-text value relayed byte for byte");
            }
        }
    }
}
