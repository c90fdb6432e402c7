//! What an upstream call really used, read from its answer as the answer passes to the client,
//! so a key's tokens-per-minute and budget are settled from real usage on every path:
//!
//! - a JSON answer is copied aside (up to `MAX_JSON`) and its `usage` read at its end;
//! - an SSE answer is parsed event by event as it is relayed (chat and completions chunks carry
//!   `usage`, Responses events `response.usage`), never held back whole.
//!
//! Streams of chat and legacy completions report usage only when the request says
//! `stream_options.include_usage`. For a key with limits deja asks for it (`ask_for_usage`) and,
//! when the client did not, removes what the upstream added (`UsageStripper`): the final chunk
//! with empty `choices`, and the `"usage":null` of every other chunk.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::Response;
use http::header;
use http_body_util::BodyStream;
use serde_json::Value;

use crate::replay::json_splice::top_level_value;
use crate::track::Tracker;
use crate::wire::body::{ProxyBody, streaming};
use crate::wire::endpoint::EndpointName;
use crate::wire::sse::SseParser;

/// Largest JSON answer whose usage is read (image answers carry base64 data of a few MB).
const MAX_JSON: usize = 16 * 1024 * 1024;

/// The request body to send for a key with limits: a stream of chat or completions asks for
/// the usage chunk. Returns the body and whether `include_usage` was added (so the chunk must
/// be hidden from the client).
pub fn ask_for_usage(endpoint: EndpointName, tracker: &Tracker, body: Bytes) -> (Bytes, bool) {
    if !tracker.limited()
        || !matches!(
            endpoint,
            EndpointName::ChatCompletions | EndpointName::Completions
        )
    {
        return (body, false);
    }
    let Ok(Value::Object(mut json)) = serde_json::from_slice::<Value>(&body) else {
        return (body, false);
    };
    let streams = json.get("stream").and_then(Value::as_bool) == Some(true);
    let asked = json
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
    if !streams || asked {
        return (body, false);
    }
    let options = json
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Default::default()));
    if options.is_null() {
        *options = Value::Object(Default::default());
    }
    let Some(options) = options.as_object_mut() else {
        return (body, false); // not an object: the upstream will say so
    };
    options.insert("include_usage".into(), Value::Bool(true));
    match serde_json::to_vec(&json) {
        Ok(bytes) => (Bytes::from(bytes), true),
        Err(_) => (body, false),
    }
}

/// `response` with its body read for usage as it passes (and the usage chunk removed when
/// `strip_usage`); the tracker gets the usage when the body ends.
pub fn metered(
    response: Response<ProxyBody>,
    tracker: &Tracker,
    strip_usage: bool,
) -> Response<ProxyBody> {
    let is_sse = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_sse && !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    if strip_usage && is_sse {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    let reader = UsageReader::new(tracker.clone(), is_sse, strip_usage && is_sse);
    let frames = BodyStream::new(body)
        .filter_map(|frame| async move { frame.map(|f| f.into_data().ok()).transpose() });
    let chunks = futures_util::stream::unfold(
        (Box::pin(frames), Some(reader)),
        |(mut frames, reader)| async move {
            let mut reader = reader?;
            loop {
                match frames.next().await {
                    Some(Ok(bytes)) => {
                        let out = reader.push(bytes);
                        if !out.is_empty() {
                            return Some((Ok(out), (frames, Some(reader))));
                        }
                    }
                    Some(Err(err)) => return Some((Err(err), (frames, None))),
                    None => {
                        let rest = reader.finish();
                        return (!rest.is_empty()).then(|| (Ok(rest), (frames, None)));
                    }
                }
            }
        },
    );
    Response::from_parts(parts, streaming(chunks))
}

/// Follows one answer's bytes: reads its usage, optionally removes the usage chunk.
struct UsageReader {
    tracker: Tracker,
    kind: Kind,
    stripper: Option<UsageStripper>,
}

enum Kind {
    Sse(SseParser),
    /// The body so far; `None` once it outgrew `MAX_JSON`.
    Json(Option<BytesMut>),
}

impl UsageReader {
    fn new(tracker: Tracker, is_sse: bool, strip: bool) -> UsageReader {
        UsageReader {
            tracker,
            kind: if is_sse {
                Kind::Sse(SseParser::new())
            } else {
                Kind::Json(Some(BytesMut::new()))
            },
            stripper: strip.then(UsageStripper::default),
        }
    }

    /// The bytes to pass on for `bytes` read.
    fn push(&mut self, bytes: Bytes) -> Bytes {
        match &mut self.kind {
            Kind::Sse(parser) => {
                for event in parser.push(&bytes) {
                    if let Some(usage) = event_usage(&event.data) {
                        self.tracker.update(|r| r.take_usage_value(&usage));
                    }
                }
            }
            Kind::Json(copy) => {
                if let Some(buffer) = copy {
                    if buffer.len() + bytes.len() > MAX_JSON {
                        *copy = None;
                    } else {
                        buffer.extend_from_slice(&bytes);
                    }
                }
            }
        }
        match &mut self.stripper {
            Some(stripper) => stripper.push(&bytes),
            None => bytes,
        }
    }

    /// At the end of the body: any bytes still held.
    fn finish(&mut self) -> Bytes {
        self.stripper
            .as_mut()
            .map_or_else(Bytes::new, UsageStripper::finish)
    }
}

impl Drop for UsageReader {
    /// A JSON answer's usage, once the body is let go: a body of known length is dropped after
    /// its last byte without being polled to its end. A torn answer does not parse, and keeps
    /// the estimate.
    fn drop(&mut self) {
        if let Kind::Json(Some(buffer)) = &self.kind
            && let Ok(answer) = serde_json::from_slice::<Value>(buffer)
        {
            self.tracker.update(|r| {
                r.take_usage(&answer);
                // Relayed paths do not read the request: the answer names the model priced.
                if r.model_used.is_none()
                    && let Some(model) = answer.get("model").and_then(Value::as_str)
                {
                    r.model_used = Some(model.to_string());
                }
            });
        }
    }
}

/// The `usage` an SSE event's data reports, if any: a chunk's own `usage`, or the `usage` of
/// the `response` a Responses event carries.
fn event_usage(data: &str) -> Option<Value> {
    if !data.contains("\"usage\"") {
        return None;
    }
    let event: Value = serde_json::from_str(data).ok()?;
    [event.get("usage"), event.pointer("/response/usage")]
        .into_iter()
        .flatten()
        .find(|usage| usage.is_object())
        .cloned()
}

/// Removes from a chat or completions stream what `include_usage` added: the final chunk with
/// empty `choices` and a `usage`, and the `"usage":null` of every other chunk. Works on whole
/// events, so it holds back at most one partial event.
#[derive(Default)]
pub struct UsageStripper {
    pending: BytesMut,
}

impl UsageStripper {
    /// The complete events in `bytes` (plus what was held), rewritten.
    pub fn push(&mut self, bytes: &[u8]) -> Bytes {
        self.pending.extend_from_slice(bytes);
        let mut out = BytesMut::new();
        while let Some(end) = event_end(&self.pending) {
            let event = self.pending.split_to(end);
            out.extend_from_slice(&rewrite_event(&event));
        }
        out.freeze()
    }

    /// What is left at the end of the stream (an unfinished event, passed on as it is).
    pub fn finish(&mut self) -> Bytes {
        std::mem::take(&mut self.pending).freeze()
    }
}

/// The length of the first complete event in `buffer` (through its blank line).
fn event_end(buffer: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, &byte) in buffer.iter().enumerate() {
        if byte == b'\n' {
            let line = &buffer[line_start..i];
            if line.is_empty() || line == b"\r" {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
    }
    None
}

fn rewrite_event(event: &[u8]) -> Bytes {
    let Ok(text) = std::str::from_utf8(event) else {
        return Bytes::copy_from_slice(event);
    };
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let Some(data) = line.strip_prefix("data:") else {
            out.push_str(line);
            continue;
        };
        let body = data.trim();
        if body == "[DONE]" || !body.contains("\"usage\"") {
            out.push_str(line);
            continue;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(body) else {
            out.push_str(line);
            continue;
        };
        let usage_only = chunk.get("usage").is_some_and(Value::is_object)
            && chunk
                .get("choices")
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty);
        if usage_only {
            return Bytes::new(); // the whole event is the chunk the client did not ask for
        }
        let cleaned = match chunk.get("usage") {
            Some(Value::Null) => without_top_level(body, "usage"),
            _ => None,
        };
        match cleaned {
            Some(cleaned) => {
                out.push_str("data: ");
                out.push_str(&cleaned);
                out.push_str(if line.ends_with("\r\n") { "\r\n" } else { "\n" });
            }
            None => out.push_str(line),
        }
    }
    Bytes::from(out)
}

/// `text` (a JSON object) without its top-level `key`, the text around it untouched.
fn without_top_level(text: &str, key: &str) -> Option<String> {
    let value = top_level_value(text, key)?;
    let bytes = text.as_bytes();
    // Back over `"key"` and the colon (the scan matched the key's raw text).
    let colon = text[..value.start].rfind(':')?;
    let key_start = text[..colon].rfind(&format!("\"{key}\""))?;
    let before = text[..key_start].trim_end();
    let (start, end) = if before.ends_with(',') {
        (before.len() - 1, value.end)
    } else {
        // The first key: take the comma after it instead.
        let after = value.end + (text[value.end..].len() - text[value.end..].trim_start().len());
        match bytes.get(after) {
            Some(b',') => (key_start, after + 1),
            _ => (key_start, value.end),
        }
    };
    Some(format!("{}{}", &text[..start], &text[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strips_the_usage_chunk_and_the_null_fields() {
        let mut stripper = UsageStripper::default();
        let stream = concat!(
            "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
            "data: {\"usage\":null,\"id\":\"c\",\"choices\":[]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\n",
            "data: [DONE]\n\n",
        );
        // Split anywhere: events come out whole.
        let (a, b) = stream.split_at(37);
        let mut out = stripper.push(a.as_bytes()).to_vec();
        out.extend_from_slice(&stripper.push(b.as_bytes()));
        out.extend_from_slice(&stripper.finish());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            concat!(
                "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
                "data: {\"id\":\"c\",\"choices\":[]}\n\n",
                "data: [DONE]\n\n",
            )
        );
    }

    #[test]
    fn usage_of_chunks_and_of_responses_events() {
        assert_eq!(
            event_usage(r#"{"choices":[],"usage":{"prompt_tokens":2}}"#),
            Some(json!({"prompt_tokens": 2}))
        );
        assert_eq!(event_usage(r#"{"choices":[],"usage":null}"#), None);
        assert_eq!(
            event_usage(r#"{"type":"response.completed","response":{"usage":{"input_tokens":4}}}"#),
            Some(json!({"input_tokens": 4}))
        );
    }
}
