//! A fake OpenAI-compatible upstream for integration tests.
//!
//! Serves `/v1/chat/completions` (JSON and SSE; see `fake_chat.rs`), `/v1/embeddings`
//! (deterministic bag-of-words vectors; see `fake_embeddings.rs`), the legacy `/v1/completions` and `/v1/responses` (JSON
//! and SSE, and `GET /v1/responses/{id}`; see `fake_endpoints.rs`), the Files and Batches API
//! (`fake_batches.rs`) and echoes everything else.
//! Every request is recorded before it is answered. Listens on 127.0.0.1 only; dropping the
//! `FakeUpstream` stops the listener and closes open connections.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub const CHAT_PATH: &str = "/v1/chat/completions";
pub const EMBEDDINGS_PATH: &str = "/v1/embeddings";
pub const COMPLETIONS_PATH: &str = "/v1/completions";
pub const RESPONSES_PATH: &str = "/v1/responses";
/// Dimension of the default bag-of-words embeddings.
pub const EMBED_DIM: usize = 64;

type Body = UnsyncBoxBody<Bytes, Infallible>;

// `/v1/completions` and `/v1/responses` live in their own file to keep this one readable.
#[path = "fake_endpoints.rs"]
mod endpoints;
// `/v1/chat/completions` in its own file too.
#[path = "fake_chat.rs"]
mod chat;
#[allow(unused_imports)] // each test binary uses some of them
pub use chat::{REFUSAL, base64, deterministic_answer, fake_audio};
// Structured Outputs: JSON content for `response_format` json_schema and json_object.
#[path = "fake_structured.rs"]
mod structured;
// `/v1/embeddings` and the vectors it answers with.
#[path = "fake_embeddings.rs"]
mod embedding;
#[allow(unused_imports)] // each test binary uses some of them
pub use embedding::{bag_of_words_embedding, cosine};
// Files and Batches (`/v1/files`, `/v1/batches`), in their own file.
#[path = "fake_batches.rs"]
mod batches;
// Scripted answers per path (retry tests), also in a file of their own.
#[path = "fake_script.rs"]
pub mod script;

// === public types ===

#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Failure mode of the generating endpoints: chat, legacy completions and responses.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum ChatMode {
    #[default]
    Normal,
    /// Answer with this status and this raw body (content-type application/json).
    Status(u16, String),
    /// Sleep, then answer normally.
    StallBeforeHeaders(Duration),
    /// Streaming requests get their first 3 events (chat: the role chunk + 2 more chunks), then
    /// the body ends without `[DONE]` (responses: without `response.completed`).
    PartialStream,
    /// 200 with the truncated body `{"id": `.
    BrokenJson,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub enum EmbedMode {
    #[default]
    Normal,
    Status(u16),
    Stall(Duration),
    /// The model's window, in tokens (a word counts as a token here, as in `usage`): a longer
    /// input gets OpenAI's 400 "This model's maximum context length is N tokens, however you
    /// requested …".
    Window(usize),
}

#[derive(Default)]
struct Config {
    chat_mode: ChatMode,
    embed_mode: EmbedMode,
    chunk_delay: Duration,
    latency: Duration,
    /// Time every embeddings call takes (the generating endpoints have `latency`).
    embed_latency: Duration,
    embeddings: HashMap<String, Vec<f32>>,
    /// Chat answers depend on the prompt only (`deterministic_answer`), not on the call count.
    deterministic: bool,
    /// Until then, chat calls get OpenAI's 429 for an exhausted request rate (job tests).
    rate_limited_until: Option<std::time::Instant>,
}

struct State {
    requests: Mutex<Vec<RecordedRequest>>,
    /// Responses made with `store` true or absent, by id (`GET /v1/responses/{id}`).
    stored_responses: Mutex<HashMap<String, Value>>,
    config: Mutex<Config>,
    script: script::Script,
    batches: batches::Store,
}

pub struct FakeUpstream {
    state: Arc<State>,
    addr: SocketAddr,
    // Dropping this sender stops the accept loop and every open connection.
    _shutdown: watch::Sender<()>,
}

// === server ===

impl FakeUpstream {
    pub async fn start() -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake upstream: bind 127.0.0.1:0");
        FakeUpstream::serve(listener)
    }

    /// Serves on a listener the test made (e.g. on an address that refused connections first).
    pub fn serve(listener: TcpListener) -> FakeUpstream {
        let addr = listener.local_addr().expect("fake upstream: local_addr");
        let state = Arc::new(State {
            requests: Mutex::new(Vec::new()),
            stored_responses: Mutex::new(HashMap::new()),
            config: Mutex::new(Config::default()),
            script: Default::default(),
            batches: Default::default(),
        });
        let (shutdown, mut stop) = watch::channel(());
        let server_state = state.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    _ = stop.changed() => return,
                };
                let state = server_state.clone();
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { script::unless_hung_up(handle(state, req).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.changed() => {}
                    }
                });
            }
        });
        FakeUpstream {
            state,
            addr,
            _shutdown: shutdown,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn calls(&self, path: &str) -> usize {
        self.state
            .requests
            .lock()
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    pub fn total_calls(&self) -> usize {
        self.state.requests.lock().len()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().clone()
    }

    pub fn last_request(&self, path: &str) -> Option<RecordedRequest> {
        let requests = self.state.requests.lock();
        requests.iter().rev().find(|r| r.path == path).cloned()
    }

    pub fn set_chat_mode(&self, mode: ChatMode) {
        self.state.config.lock().chat_mode = mode;
    }

    pub fn set_chunk_delay(&self, d: Duration) {
        self.state.config.lock().chunk_delay = d;
    }

    /// Chat calls get a 429 (requests per minute exhausted) for the next `d`.
    pub fn rate_limit_for(&self, d: Duration) {
        self.state.config.lock().rate_limited_until = Some(std::time::Instant::now() + d);
    }

    pub fn set_latency(&self, d: Duration) {
        self.state.config.lock().latency = d;
    }

    /// Chat answers become `deterministic_answer(last message)`, the same on every call.
    pub fn set_deterministic(&self, on: bool) {
        self.state.config.lock().deterministic = on;
    }

    /// Every embeddings call answers after `d` (keeps a call in flight while others queue).
    pub fn set_embed_latency(&self, d: Duration) {
        self.state.config.lock().embed_latency = d;
    }

    /// Batches complete when polled this many times (0, the default: at creation).
    pub fn set_batch_polls(&self, polls: usize) {
        self.state.batches.set_polls_before_done(polls);
    }

    /// Every line of every batch input file received, in order.
    pub fn batch_lines(&self) -> Vec<Value> {
        self.state.batches.lines()
    }

    /// The next `GET /v1/batches/{id}` answers only after `stall`.
    pub fn stall_next_batch_retrieve(&self, stall: Duration) {
        self.state.batches.stall_next_retrieve(stall);
    }

    pub fn batches_created(&self) -> usize {
        self.state.batches.batches_created()
    }

    pub fn set_embed_mode(&self, mode: EmbedMode) {
        self.state.config.lock().embed_mode = mode;
    }

    pub fn set_embedding(&self, text: &str, vector: Vec<f32>) {
        self.state
            .config
            .lock()
            .embeddings
            .insert(text.to_owned(), vector);
    }
}

/// A reqwest client for tests: installs the ring rustls provider (the crate uses
/// `rustls-no-provider`, so building a client without one panics) and ignores
/// any proxy environment variables.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("build reqwest client")
}

/// Records the request; returns how many requests to the same path exist, this one included.
fn record(state: &State, req: RecordedRequest) -> usize {
    let mut requests = state.requests.lock();
    let n = requests.iter().filter(|r| r.path == req.path).count() + 1;
    requests.push(req);
    n
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let recorded = RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
    };
    let n = record(&state, recorded.clone());
    if let Some(limited) = rate_limited(&state, &recorded) {
        return limited;
    }
    if let Some(scripted) = state.script.next(&recorded) {
        return scripted;
    }
    if let Some(answered) = batches::handle(&state, &recorded).await {
        return answered;
    }
    match (recorded.method.as_str(), recorded.path.as_str()) {
        ("POST", CHAT_PATH) => chat::chat(&state, n, &recorded.body).await,
        ("POST", EMBEDDINGS_PATH) => embedding::embeddings(&state, &recorded.body).await,
        ("POST", COMPLETIONS_PATH) => endpoints::completions(&state, n, &recorded.body).await,
        ("POST", RESPONSES_PATH) => endpoints::responses(&state, n, &recorded.body).await,
        ("GET", path) if path.starts_with("/v1/responses/") => {
            endpoints::retrieve_response(&state, &path["/v1/responses/".len()..])
        }
        _ => echo(&recorded),
    }
}

// === responses ===

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed_unsync()
}

fn json_response(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// OpenAI's answer to a request over the organization's requests-per-minute limit: 429,
/// `rate_limit_exceeded`, and the `x-ratelimit-*` headers with remaining 0 and the time
/// until the reset.
fn rate_limited(state: &State, req: &RecordedRequest) -> Option<Response<Body>> {
    let until = state.config.lock().rate_limited_until?;
    let left = until.checked_duration_since(std::time::Instant::now())?;
    if req.method != "POST" || req.path != CHAT_PATH {
        return None;
    }
    let secs = left.as_secs_f64();
    let body = json!({"error": {
        "message": format!("Rate limit reached for gpt-4o-mini in organization org-test on \
            requests per min (RPM): Limit 60, Used 60, Requested 1. Please try again in \
            {secs:.3}s. Visit https://platform.openai.com/account/rate-limits to learn more."),
        "type": "requests",
        "param": null,
        "code": "rate_limit_exceeded",
    }});
    let mut response = json_response(429, body.to_string());
    let headers = response.headers_mut();
    headers.insert("x-ratelimit-limit-requests", HeaderValue::from_static("60"));
    headers.insert(
        "x-ratelimit-remaining-requests",
        HeaderValue::from_static("0"),
    );
    if let Ok(reset) = HeaderValue::from_str(&format!("{secs:.3}s")) {
        headers.insert("x-ratelimit-reset-requests", reset);
    }
    Some(response)
}

fn openai_error(status: u16, message: &str) -> Response<Body> {
    let kind = match status {
        400 | 404 | 422 => "invalid_request_error",
        401 | 403 => "authentication_error",
        429 => "rate_limit_error",
        _ => "server_error",
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": null}});
    json_response(status, body.to_string())
}

fn echo(req: &RecordedRequest) -> Response<Body> {
    let mut headers = serde_json::Map::new();
    for name in req.headers.keys() {
        let values: Vec<String> = req
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        headers.insert(name.to_string(), Value::String(values.join(", ")));
    }
    let body = json!({
        "method": req.method,
        "path": req.path,
        "query": req.query,
        "headers": headers,
        "body": String::from_utf8_lossy(&req.body),
    });
    let mut resp = json_response(200, body.to_string());
    resp.headers_mut()
        .insert("x-fake-upstream", HeaderValue::from_static("echo"));
    resp
}

// === shared by the generating endpoints ===

fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Text of a message's `content`: a string, or the concatenated `text` of content parts.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        _ => String::new(),
    }
}

/// The common start of every generating endpoint: answers outright in `Status`/`BrokenJson`
/// mode, sleeps for `StallBeforeHeaders` and the configured latency, then parses the JSON body.
/// Returns the mode, the chunk delay and the request, or the response to send instead.
async fn begin(state: &State, body: &Bytes) -> Result<(ChatMode, Duration, Value), Response<Body>> {
    let (mode, latency, chunk_delay) = {
        let cfg = state.config.lock();
        (cfg.chat_mode.clone(), cfg.latency, cfg.chunk_delay)
    };
    match &mode {
        ChatMode::Status(code, raw) => return Err(json_response(*code, raw.clone())),
        ChatMode::BrokenJson => return Err(json_response(200, r#"{"id": "#)),
        ChatMode::StallBeforeHeaders(d) => tokio::time::sleep(*d).await,
        ChatMode::Normal | ChatMode::PartialStream => {}
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match serde_json::from_slice(body) {
        Ok(req) => Ok((mode, chunk_delay, req)),
        Err(e) => Err(openai_error(
            400,
            &format!("fake upstream: invalid JSON body: {e}"),
        )),
    }
}

/// `s` cut in two at (about) the middle, on a char boundary.
fn halves(s: &str) -> (&str, &str) {
    let mid = (0..=s.len() / 2)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    s.split_at(mid)
}

fn set_request_id(resp: &mut Response<Body>, id: &str) {
    resp.headers_mut().insert(
        "x-request-id",
        HeaderValue::from_str(id).expect("ascii request id"),
    );
}

/// A really streamed body: each event is produced only when polled, `delay` apart.
fn sse_response(events: Vec<Bytes>, delay: Duration) -> Response<Body> {
    let stream = futures_util::stream::unfold(
        (events.into_iter(), true),
        move |(mut it, first)| async move {
            let event = it.next()?;
            if !first && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Some((Ok::<_, Infallible>(Frame::data(event)), (it, false)))
        },
    );
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
