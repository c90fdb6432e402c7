//! The fake upstream's `/v1/chat/completions`. Declared as a private child module of
//! `fake_upstream.rs`. Answers text, a tool call (tools and a "weather" question), a refusal
//! ("refuse this") or spoken text (`modalities` with "audio"), with logprobs when asked, as
//! JSON or as the API's chunk stream, field for field; JSON text for `response_format`
//! (`fake_structured.rs`).

use bytes::Bytes;
use http::{HeaderValue, Response};
use serde_json::{Value, json};

use super::{
    Body, ChatMode, State, begin, content_text, halves, json_response, set_request_id,
    sse_response, word_count,
};

pub(super) async fn chat(state: &State, n: usize, body: &Bytes) -> Response<Body> {
    let (mode, chunk_delay, req) = match begin(state, body).await {
        Ok(begun) => begun,
        Err(resp) => return resp,
    };
    let empty = Vec::new();
    let messages = req["messages"].as_array().unwrap_or(&empty);
    let last = messages
        .last()
        .map(|m| content_text(&m["content"]))
        .unwrap_or_default();
    let prompt_tokens: usize = messages
        .iter()
        .map(|m| word_count(&content_text(&m["content"])))
        .sum();
    let first_tool = req["tools"].as_array().and_then(|t| t.first());
    let tool_call = match first_tool {
        Some(tool) if last.contains("weather") => {
            let name = tool["function"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            Some((format!("call_{n}"), name, r#"{"city":"Paris"}"#.to_owned()))
        }
        _ => None,
    };
    let content = if state.config.lock().deterministic {
        deterministic_answer(&last)
    } else {
        format!("answer {n}: {last}")
    };
    // Structured Outputs: the same answer as JSON text of the schema's shape.
    let content =
        super::structured::structured_content(&req["response_format"], &content).unwrap_or(content);
    // A prompt saying "refuse this" gets a refusal (as structured outputs do).
    let refusal = (tool_call.is_none() && last.contains("refuse this")).then(|| REFUSAL.to_owned());
    let completion_tokens = match (&tool_call, &refusal) {
        (Some((_, _, args)), _) => word_count(args),
        (None, Some(refusal)) => word_count(refusal),
        (None, None) => word_count(&content),
    };
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    });
    let base = json!({
        "id": format!("chatcmpl-fake{n}"),
        "created": 1_700_000_000 + n as u64,
        "model": req["model"],
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    });
    let wants_audio = req["modalities"]
        .as_array()
        .is_some_and(|m| m.contains(&json!("audio")));
    let answer = match (tool_call, refusal) {
        (Some(call), _) => ChatAnswer::ToolCall(call),
        (None, Some(refusal)) => ChatAnswer::Refusal(refusal),
        (None, None) if wants_audio => ChatAnswer::Audio(content),
        (None, None) => ChatAnswer::Content(content),
    };
    let logprobs = req["logprobs"] == json!(true);

    let mut resp = if req["stream"] == json!(true) {
        let include_usage = req["stream_options"]["include_usage"] == json!(true);
        // The API pads every chunk with a random `obfuscation` string unless asked not to.
        let obfuscation = req["stream_options"]["include_obfuscation"] != json!(false);
        let mut events = stream_events(&base, n, &answer, logprobs, usage, include_usage);
        if obfuscation {
            events = events
                .into_iter()
                .enumerate()
                .map(|(i, e)| obfuscated(e, i))
                .collect();
        }
        if mode == ChatMode::PartialStream {
            events.truncate(3);
        } else {
            events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        }
        sse_response(events, chunk_delay)
    } else {
        let (message, finish) = match &answer {
            ChatAnswer::ToolCall((id, name, args)) => (
                json!({"role": "assistant", "content": null, "refusal": null, "annotations": [], "tool_calls": [
                    {"id": id, "type": "function", "function": {"name": name, "arguments": args}}
                ]}),
                "tool_calls",
            ),
            ChatAnswer::Refusal(refusal) => (
                json!({"role": "assistant", "content": null, "refusal": refusal, "annotations": []}),
                "stop",
            ),
            ChatAnswer::Content(content) => (
                json!({"role": "assistant", "content": content, "refusal": null, "annotations": []}),
                "stop",
            ),
            ChatAnswer::Audio(transcript) => (
                json!({"role": "assistant", "content": null, "refusal": null, "annotations": [], "audio": {
                    "id": format!("audio_fake{n}"), "expires_at": AUDIO_EXPIRES_AT,
                    "data": base64(&fake_audio(transcript)), "transcript": transcript}}),
                "stop",
            ),
        };
        let logprobs = match (&answer, logprobs) {
            (_, false) | (ChatAnswer::ToolCall(_) | ChatAnswer::Audio(_), true) => Value::Null,
            (ChatAnswer::Refusal(refusal), true) => {
                json!({"content": null, "refusal": token_logprobs(refusal.split_inclusive(' '))})
            }
            (ChatAnswer::Content(content), true) => {
                json!({"content": token_logprobs(content.split_inclusive(' ')), "refusal": null})
            }
        };
        let mut obj = base.clone();
        obj["object"] = json!("chat.completion");
        obj["choices"] = json!([{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish}]);
        obj["usage"] = usage;
        json_response(200, obj.to_string())
    };
    set_request_id(&mut resp, &format!("req_{n}"));
    resp.headers_mut()
        .insert("openai-processing-ms", HeaderValue::from_static("1"));
    resp
}

/// The refusal a chat prompt containing "refuse this" gets.
pub const REFUSAL: &str = "I'm sorry, I can't help with that request.";

/// What a chat call answers: a tool call (id, name, arguments), a refusal, spoken text
/// (`modalities` has "audio"), or text.
enum ChatAnswer {
    ToolCall((String, String, String)),
    Refusal(String),
    Audio(String),
    Content(String),
}

const AUDIO_EXPIRES_AT: u64 = 1_700_003_600;

/// The "audio" of a spoken answer: some bytes derived from its transcript.
pub fn fake_audio(transcript: &str) -> Vec<u8> {
    transcript.bytes().map(|b| b.wrapping_mul(7)).collect()
}

/// Standard base64 with padding, as the API encodes audio.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            out.push(if i <= group.len() {
                ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// Logprobs entries as the API gives them, one per token (here: per word).
fn token_logprobs<'a>(tokens: impl Iterator<Item = &'a str>) -> Value {
    let entries: Vec<Value> = tokens
        .map(|token| {
            json!({"token": token, "logprob": -0.25, "bytes": token.as_bytes(), "top_logprobs": []})
        })
        .collect();
    Value::Array(entries)
}

/// The chat answer to `prompt` in deterministic mode: the prompt and a digest of it, a few
/// hundred bytes, so a torn or mixed-up entry cannot pass for it.
pub fn deterministic_answer(prompt: &str) -> String {
    let digest = blake3::hash(prompt.as_bytes()).to_hex();
    format!("answer to {prompt}: {digest} {digest} {digest} end")
}

/// `event` (one `data:` chunk) with the API's `obfuscation` padding added: random
/// characters of varying length (here of a length that varies with the chunk's position).
fn obfuscated(event: Bytes, position: usize) -> Bytes {
    let text = std::str::from_utf8(&event).expect("utf-8 event");
    let json = text.trim().strip_prefix("data: ").expect("a data event");
    let mut chunk: Value = serde_json::from_str(json).expect("a JSON chunk");
    let pad = "aZ3kQ9xR2mT7pL4w";
    chunk["obfuscation"] = json!(&pad[..1 + (position * 7) % (pad.len() - 1)]);
    Bytes::from(format!("data: {chunk}\n\n"))
}

/// All SSE events of a streamed completion, without the final `data: [DONE]`. The opening
/// delta is the API's: `content: ""` before text, `content: null` before a refusal or tool
/// call, which the tool call's header shares.
fn stream_events(
    base: &Value,
    n: usize,
    answer: &ChatAnswer,
    logprobs: bool,
    usage: Value,
    include_usage: bool,
) -> Vec<Bytes> {
    let chunk = |delta: Value, logprobs: Value, finish: Value| {
        let mut obj = base.clone();
        obj["object"] = json!("chat.completion.chunk");
        obj["choices"] =
            json!([{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]);
        if include_usage {
            obj["usage"] = Value::Null;
        }
        obj
    };
    let null = Value::Null;
    let mut chunks = Vec::new();
    let finish = match answer {
        ChatAnswer::ToolCall((id, name, args)) => {
            chunks.push(chunk(
                json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0,
                    "id": id, "type": "function", "function": {"name": name, "arguments": ""}}],
                    "refusal": null}),
                null.clone(),
                null.clone(),
            ));
            let (a, b) = halves(args);
            for part in [a, b] {
                let delta = json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]});
                chunks.push(chunk(delta, null.clone(), null.clone()));
            }
            "tool_calls"
        }
        ChatAnswer::Refusal(refusal) => {
            chunks.push(chunk(
                json!({"role": "assistant", "content": null, "refusal": ""}),
                null.clone(),
                null.clone(),
            ));
            for word in refusal.split_inclusive(' ') {
                let lp = logprobs.then(
                    || json!({"content": null, "refusal": token_logprobs(std::iter::once(word))}),
                );
                chunks.push(chunk(
                    json!({"refusal": word}),
                    lp.unwrap_or_default(),
                    null.clone(),
                ));
            }
            "stop"
        }
        ChatAnswer::Audio(transcript) => {
            // Transcript first, then the audio in pieces, each its own padded base64.
            chunks.push(chunk(
                json!({"role": "assistant", "content": null, "refusal": null,
                    "audio": {"id": format!("audio_fake{n}"), "transcript": ""}}),
                null.clone(),
                null.clone(),
            ));
            for word in transcript.split_inclusive(' ') {
                let delta = json!({"audio": {"transcript": word}});
                chunks.push(chunk(delta, null.clone(), null.clone()));
            }
            for piece in fake_audio(transcript).chunks(5) {
                let delta = json!({"audio": {"data": base64(piece)}});
                chunks.push(chunk(delta, null.clone(), null.clone()));
            }
            let delta = json!({"audio": {"expires_at": AUDIO_EXPIRES_AT}});
            chunks.push(chunk(delta, null.clone(), null.clone()));
            "stop"
        }
        ChatAnswer::Content(content) => {
            chunks.push(chunk(
                json!({"role": "assistant", "content": "", "refusal": null}),
                null.clone(),
                null.clone(),
            ));
            for word in content.split_inclusive(' ') {
                let lp = logprobs.then(
                    || json!({"content": token_logprobs(std::iter::once(word)), "refusal": null}),
                );
                chunks.push(chunk(
                    json!({"content": word}),
                    lp.unwrap_or_default(),
                    null.clone(),
                ));
            }
            "stop"
        }
    };
    chunks.push(chunk(json!({}), null, json!(finish)));
    if include_usage {
        let mut obj = base.clone();
        obj["object"] = json!("chat.completion.chunk");
        obj["choices"] = json!([]);
        obj["usage"] = usage;
        chunks.push(obj);
    }
    chunks
        .iter()
        .map(|c| Bytes::from(format!("data: {c}\n\n")))
        .collect()
}
