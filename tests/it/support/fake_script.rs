//! Scripted answers for the fake upstream: a queue per path, one entry consumed per request
//! (before any mode applies), then the normal behaviour once the queue is empty. Also keeps
//! the arrival time of every request, so tests can check the gap a retry waited.
//! Declared as a private child module of `fake_upstream.rs`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use parking_lot::Mutex;

use super::{Body, FakeUpstream, RecordedRequest, json_response, openai_error};

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Scripted {
    /// This status, extra headers and raw body (content-type application/json).
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Read the request, then close the connection without any response.
    HangUp,
    /// 200 `text/event-stream` with these `data:` payloads, then the connection breaks
    /// (the declared Content-Length is never reached).
    BrokenStream(Vec<String>),
}

impl Scripted {
    /// `status` with an OpenAI-shaped error whose message is `message`.
    pub fn error(status: u16, message: &str) -> Scripted {
        let body = serde_json::json!({"error": {
            "message": message, "type": "server_error", "param": null, "code": null
        }});
        Scripted::Respond {
            status,
            headers: Vec::new(),
            body: body.to_string(),
        }
    }

    /// Adds a response header (`Respond` only).
    pub fn header(mut self, name: &str, value: &str) -> Scripted {
        if let Scripted::Respond { headers, .. } = &mut self {
            headers.push((name.to_string(), value.to_string()));
        }
        self
    }
}

#[derive(Default)]
pub(super) struct Script {
    queues: Mutex<HashMap<String, VecDeque<Scripted>>>,
    arrivals: Mutex<Vec<(String, Instant)>>,
}

/// Marks a response that must not be sent: the connection is closed instead.
#[derive(Clone, Copy, Debug)]
pub(super) struct HangUp;

impl std::fmt::Display for HangUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("scripted hang-up")
    }
}

impl std::error::Error for HangUp {}

impl Script {
    /// Notes the request's arrival and pops its path's next scripted answer, if any.
    pub(super) fn next(&self, request: &RecordedRequest) -> Option<Response<Body>> {
        self.arrivals
            .lock()
            .push((request.path.clone(), Instant::now()));
        let scripted = self.queues.lock().get_mut(&request.path)?.pop_front()?;
        Some(match scripted {
            Scripted::Respond {
                status,
                headers,
                body,
            } => {
                let mut response = json_response(status, body);
                for (name, value) in headers {
                    response.headers_mut().append(
                        HeaderName::try_from(name).expect("header name"),
                        HeaderValue::try_from(value).expect("header value"),
                    );
                }
                response
            }
            Scripted::HangUp => {
                let mut response = openai_error(500, "hang-up");
                response.extensions_mut().insert(HangUp);
                response
            }
            Scripted::BrokenStream(events) => broken_stream(events),
        })
    }
}

/// The service's answer: hyper closes the connection when the service fails.
pub(super) fn unless_hung_up(response: Response<Body>) -> Result<Response<Body>, HangUp> {
    match response.extensions().get::<HangUp>() {
        Some(_) => Err(HangUp),
        None => Ok(response),
    }
}

fn broken_stream(events: Vec<String>) -> Response<Body> {
    let frames: Vec<Bytes> = events
        .into_iter()
        .map(|data| Bytes::from(format!("data: {data}\n\n")))
        .collect();
    let sent: usize = frames.iter().map(Bytes::len).sum();
    // A pause before the end lets hyper flush what was sent, so the client sees a response.
    let pause = futures_util::stream::once(tokio::time::sleep(Duration::from_millis(100)))
        .filter_map(|_| async { None });
    let stream = futures_util::stream::iter(
        frames
            .into_iter()
            .map(|frame| Ok::<_, std::convert::Infallible>(Frame::data(frame))),
    )
    .chain(pause);
    let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    // More than is sent: hyper cuts the connection when the body ends short.
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(sent + 1000));
    response
}

impl FakeUpstream {
    /// Queues answers for `path` (e.g. `CHAT_PATH`), consumed one per request in order.
    pub fn script(&self, path: &str, answers: impl IntoIterator<Item = Scripted>) {
        self.state
            .script
            .queues
            .lock()
            .entry(path.to_string())
            .or_default()
            .extend(answers);
    }

    /// Scripted answers for `path` not consumed yet.
    pub fn scripted_left(&self, path: &str) -> usize {
        self.state
            .script
            .queues
            .lock()
            .get(path)
            .map_or(0, VecDeque::len)
    }

    /// When each request to `path` arrived, in order.
    pub fn arrivals(&self, path: &str) -> Vec<Instant> {
        self.state
            .script
            .arrivals
            .lock()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, at)| *at)
            .collect()
    }
}
