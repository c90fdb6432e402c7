//! Request bodies, the HTTP client, and the counts of what came back.

use super::*;

pub(crate) const HIT_PROMPT: &str = "What is the capital of France?";
/// Makes every miss prompt unique across the whole run.
pub(crate) static MISS_COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) fn chat_body(question: &str, stream: bool) -> Bytes {
    let mut body = json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": question}
        ]
    });
    if stream {
        body["stream"] = json!(true);
    }
    Bytes::from(serde_json::to_vec(&body).expect("json"))
}

pub(crate) fn miss_body(stream: bool) -> Bytes {
    let n = MISS_COUNTER.fetch_add(1, Ordering::Relaxed);
    chat_body(
        &format!("Question {n}: what is the capital of France?"),
        stream,
    )
}

pub(crate) fn uri(addr: SocketAddr, path: &str) -> Uri {
    format!("http://{addr}{path}").parse().expect("uri")
}

/// A keep-alive HTTP/1.1 client; `idle` bounds the connections kept per host.
pub(crate) fn http_client(idle: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(idle)
        .build(connector)
}

pub(crate) fn post(uri: &Uri, body: Bytes) -> Request<Full<Bytes>> {
    Request::post(uri.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, AUTHORIZATION)
        .body(Full::new(body))
        .expect("request")
}

pub(crate) async fn send_whole(
    client: &HttpClient,
    uri: &Uri,
    body: Bytes,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let response = client.request(post(uri, body)).await.expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

pub(crate) fn cache_header(headers: &http::HeaderMap) -> &str {
    headers
        .get("x-deja-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<none>")
}

/// What a run expects of every response (besides status 200).
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Expect {
    Anything,
    Hit,
    Miss,
    /// A hit found by the semantic tier.
    Semantic,
}

/// Outcomes seen in a run.
#[derive(Default, Clone, Copy)]
pub(crate) struct Counts {
    pub(crate) total: u64,
    pub(crate) not_ok: u64,
    pub(crate) hit: u64,
    pub(crate) miss: u64,
    pub(crate) exact: u64,
    pub(crate) coalesced: u64,
    pub(crate) semantic: u64,
}

impl Counts {
    pub(crate) fn see(&mut self, status: StatusCode, headers: &http::HeaderMap) {
        self.total += 1;
        self.not_ok += u64::from(status != StatusCode::OK);
        match headers.get("x-deja-cache").map(HeaderValue::as_bytes) {
            Some(b"hit") => self.hit += 1,
            Some(b"miss") => self.miss += 1,
            _ => {}
        }
        match headers.get("x-deja-match").map(HeaderValue::as_bytes) {
            Some(b"exact") => self.exact += 1,
            Some(b"coalesced") => self.coalesced += 1,
            Some(b"semantic") => self.semantic += 1,
            _ => {}
        }
    }

    pub(crate) fn add(&mut self, other: Counts) {
        self.total += other.total;
        self.not_ok += other.not_ok;
        self.hit += other.hit;
        self.miss += other.miss;
        self.exact += other.exact;
        self.coalesced += other.coalesced;
        self.semantic += other.semantic;
    }

    pub(crate) fn check(&self, expect: Expect, what: &str) {
        assert_eq!(
            self.not_ok, 0,
            "{what}: {} responses were not 200",
            self.not_ok
        );
        match expect {
            Expect::Anything => {}
            Expect::Hit => assert_eq!(
                self.hit,
                self.total,
                "{what}: {} of {} responses lacked `x-deja-cache: hit`",
                self.total - self.hit,
                self.total
            ),
            Expect::Semantic => assert_eq!(
                self.semantic,
                self.total,
                "{what}: {} of {} responses lacked `x-deja-match: semantic`",
                self.total - self.semantic,
                self.total
            ),
            Expect::Miss => assert_eq!(
                self.miss,
                self.total,
                "{what}: {} of {} responses lacked `x-deja-cache: miss`",
                self.total - self.miss,
                self.total
            ),
        }
    }
}
