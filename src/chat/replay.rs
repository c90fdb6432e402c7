//! Serving a stored `chat.completion`: as JSON, or as a valid `chat.completion.chunk` SSE
//! stream carrying the same content, tool calls, finish reasons and usage.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::assemble::HEADER_KEYS;
use crate::chunks::{ChunkWriter, stored_choices};
use crate::text::pieces;

/// The stored completion with a fresh id, as a non-streaming response body.
pub fn render_json(stored: &Value, fresh_id: &str) -> Bytes {
    let mut completion = stored.clone();
    if let Some(object) = completion.as_object_mut() {
        object.insert("id".into(), Value::String(fresh_id.into()));
    }
    Bytes::from(completion.to_string())
}

/// `render_json` on the stored text: the id is spliced in, nothing else is touched.
pub fn render_json_text(stored: &str, fresh_id: &str) -> Option<Bytes> {
    // Fresh ids are letters, digits and dashes: no JSON escaping needed.
    crate::json_splice::replace_top_level(stored, "id", &format!("\"{fresh_id}\"")).map(Bytes::from)
}

/// The stored completion as SSE events, ending with `data: [DONE]`.
pub fn render_stream(stored: &Value, fresh_id: &str, include_usage: bool) -> Vec<Bytes> {
    let header_keys = &HEADER_KEYS[1..]; // all but the id, which is fresh
    let mut out = ChunkWriter::new(
        stored,
        fresh_id,
        "chat.completion.chunk",
        header_keys,
        include_usage,
    );
    for (position, choice) in stored_choices(stored).iter().enumerate() {
        let index = choice.get("index").cloned().unwrap_or(json!(position));
        let message = choice
            .get("message")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let logprobs = choice.get("logprobs").cloned().unwrap_or(Value::Null);
        let mut logprobs_sent = false;
        for delta in message_deltas(&message, !logprobs.is_null()) {
            // Logprobs ride whole on the first content or refusal chunk; with logprobs, those
            // texts are one piece each.
            let carries_text = ["content", "refusal"]
                .iter()
                .any(|key| delta.get(key).is_some_and(|t| t.is_string() && t != ""));
            let lp = if carries_text && !logprobs_sent {
                logprobs_sent = true;
                logprobs.clone()
            } else {
                Value::Null
            };
            out.choice(
                json!({"index": index, "delta": delta, "logprobs": lp, "finish_reason": null}),
            );
        }
        let finish = choice
            .get("finish_reason")
            .cloned()
            .unwrap_or(json!("stop"));
        out.choice(json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": finish}));
    }
    out.finish(stored.get("usage"))
}

/// The deltas that rebuild `message`: role first, then other text fields (e.g. reasoning),
/// content, refusal, tool calls, and any remaining non-text field whole.
fn message_deltas(message: &Map<String, Value>, one_piece: bool) -> Vec<Value> {
    let role = message.get("role").cloned().unwrap_or(json!("assistant"));
    // As the API opens a stream: `""` for a text field that follows, `null` for one that
    // stays null (a tool call's or a refusal's `content`), so a client rebuilds the same
    // message.
    let opening = |key: &str| match message.get(key) {
        Some(Value::String(_)) => json!(""),
        _ => Value::Null,
    };
    let mut deltas =
        vec![json!({"role": role, "content": opening("content"), "refusal": opening("refusal")})];
    let mut rest: Vec<(&String, &Value)> = message
        .iter()
        .filter(|(k, v)| !v.is_null() && !matches!(k.as_str(), "role" | "tool_calls"))
        .collect();
    // Reasoning before content before refusal, as models produce them.
    rest.sort_by_key(|(key, _)| match key.as_str() {
        "content" => 1,
        "refusal" => 2,
        _ => 0,
    });
    for (key, value) in rest {
        match value {
            Value::String(text) if matches!(key.as_str(), "content" | "refusal") && one_piece => {
                deltas.push(json!({ key: text }));
            }
            Value::String(text) => {
                deltas.extend(pieces(text).into_iter().map(|piece| json!({ key: piece })));
            }
            other => deltas.push(json!({ key: other })),
        }
    }
    if let Some(Value::Array(calls)) = message.get("tool_calls") {
        for (index, call) in calls.iter().enumerate() {
            let arguments = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or("");
            let mut opening = call.clone();
            if let Some(object) = opening.as_object_mut() {
                object.insert("index".into(), json!(index));
            }
            if let Some(function) = opening.get_mut("function").and_then(Value::as_object_mut) {
                function.insert("arguments".into(), json!(""));
            }
            deltas.push(json!({ "tool_calls": [opening] }));
            for piece in pieces(arguments) {
                deltas.push(
                    json!({ "tool_calls": [{"index": index, "function": {"arguments": piece}}] }),
                );
            }
        }
    }
    deltas
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::assemble::ChatStreamAssembler;
    use crate::sse::SseParser;

    fn stored() -> Value {
        json!({
            "id": "chatcmpl-orig", "object": "chat.completion", "created": 7, "model": "m",
            "system_fingerprint": "fp",
            "choices": [{"index": 0, "message": {
                "role": "assistant",
                "content": "A fairly long answer that needs several pieces to replay — ünïcode too.",
                "refusal": null,
                "reasoning_content": "first think, then answer",
                "tool_calls": [{"id": "call_1", "type": "function",
                                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]
            }, "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
        })
    }

    fn round_trip(include_usage: bool) -> (Vec<Value>, Value) {
        let events = render_stream(&stored(), "chatcmpl-new", include_usage);
        let mut parser = SseParser::new();
        let mut assembler = ChatStreamAssembler::new();
        let mut chunks = Vec::new();
        for event in events.iter().flat_map(|bytes| parser.push(bytes)) {
            assembler.push(&event.data);
            if event.data != "[DONE]" {
                chunks.push(serde_json::from_str(&event.data).unwrap());
            }
        }
        (
            chunks,
            assembler.finish().expect("replay is a complete stream"),
        )
    }

    #[test]
    fn stream_replay_reassembles_to_the_stored_completion() {
        let (chunks, completion) = round_trip(true);
        let mut expected = stored();
        expected["id"] = json!("chatcmpl-new");
        assert_eq!(completion, expected);
        assert!(chunks.len() > 6, "content is replayed in several chunks");
        assert!(
            chunks
                .iter()
                .all(|c| c["object"] == "chat.completion.chunk")
        );
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["total_tokens"], 8);
    }

    #[test]
    fn no_usage_chunk_unless_asked() {
        let (chunks, completion) = round_trip(false);
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
        assert!(completion.get("usage").is_none());
    }

    #[test]
    fn json_render_replaces_only_the_id() {
        let body = render_json(&stored(), "chatcmpl-new");
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["id"], "chatcmpl-new");
        assert_eq!(value["choices"], stored()["choices"]);
    }
}
