//! Serving a stored `chat.completion`: as JSON, or as a valid `chat.completion.chunk` SSE
//! stream carrying the same content, tool calls, finish reasons and usage.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::assemble::HEADER_KEYS;
use crate::replay::chunks::{ChunkWriter, stored_choices};
use crate::replay::lazy_replay::{Replay, Steps, cloned_at, pointer};

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
    crate::replay::json_splice::replace_top_level(stored, "id", &format!("\"{fresh_id}\""))
        .map(Bytes::from)
}

/// The stored completion as SSE events, ending with `data: [DONE]`, each rendered when the
/// client reads on (`lazy_replay`).
pub fn render_stream(stored: Arc<Value>, fresh_id: &str, include_usage: bool) -> Replay {
    let header_keys = &HEADER_KEYS[1..]; // all but the id, which is fresh
    let writer = ChunkWriter::new(
        &stored,
        fresh_id,
        "chat.completion.chunk",
        header_keys,
        include_usage,
    );
    let mut steps = Steps::new(writer);
    for (position, choice) in stored_choices(&stored).iter().enumerate() {
        let index = choice.get("index").cloned().unwrap_or(json!(position));
        let at = pointer("/choices", &[position]);
        let has_logprobs = choice.get("logprobs").is_some_and(|lp| !lp.is_null());
        let message = choice.get("message").and_then(Value::as_object);
        message_steps(&mut steps, message, &at, &index, has_logprobs);
        let finish = choice
            .get("finish_reason")
            .cloned()
            .unwrap_or(json!("stop"));
        steps.event(move |_, out| {
            out.choice(
                json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": finish}),
            )
        });
    }
    ChunkWriter::finish(&mut steps, include_usage);
    steps.over(stored)
}

/// The steps whose deltas rebuild the message of the choice at `choice` (a pointer): role
/// first, then other text fields (e.g. reasoning), content, refusal, tool calls, and any
/// remaining non-text field whole. With logprobs, content and refusal go out whole, and the
/// logprobs ride on the first of them that has text.
fn message_steps(
    steps: &mut Steps<ChunkWriter>,
    message: Option<&Map<String, Value>>,
    choice: &str,
    index: &Value,
    has_logprobs: bool,
) {
    let empty = Map::new();
    let message = message.unwrap_or(&empty);
    let role = message.get("role").cloned().unwrap_or(json!("assistant"));
    // As the API opens a stream: `""` for a text field that follows, `null` for one that
    // stays null (a tool call's or a refusal's `content`), so a client rebuilds the same
    // message.
    let opening = |key: &str| match message.get(key) {
        Some(Value::String(_)) => json!(""),
        _ => Value::Null,
    };
    let first = json!({"role": role, "content": opening("content"), "refusal": opening("refusal")});
    let delta = move |index: &Value, delta: Value, logprobs: Value| json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": null});
    let at = index.clone();
    steps.event(move |_, out| out.choice(delta(&at, first, Value::Null)));
    let mut rest: Vec<(&String, &Value)> = message
        .iter()
        .filter(|(k, v)| !v.is_null() && !matches!(k.as_str(), "role" | "tool_calls"))
        // An empty list (the API's `annotations: []`) is never sent as a delta.
        .filter(|(_, v)| !matches!(v, Value::Array(items) if items.is_empty()))
        .collect();
    // Reasoning before content before refusal, as models produce them.
    rest.sort_by_key(|(key, _)| match key.as_str() {
        "content" => 1,
        "refusal" => 2,
        _ => 0,
    });
    let logprobs_at = format!("{choice}/logprobs");
    let mut logprobs_sent = false;
    for (key, value) in rest {
        let field = pointer(choice, &["message", key.as_str()]);
        let (key, at) = (key.clone(), index.clone());
        match value {
            Value::String(text)
                if matches!(key.as_str(), "content" | "refusal") && has_logprobs =>
            {
                let carries = !text.is_empty() && !logprobs_sent;
                logprobs_sent |= carries;
                let logprobs_at = logprobs_at.clone();
                steps.whole(field, move |stored, out, text, _| {
                    let logprobs = if carries {
                        cloned_at(stored, &logprobs_at)
                    } else {
                        Value::Null
                    };
                    out.choice(delta(&at, json!({ key.as_str(): text }), logprobs))
                });
            }
            Value::String(_) => steps.pieces(field, move |_, out, piece, _| {
                out.choice(delta(&at, json!({ key.as_str(): piece }), Value::Null))
            }),
            _ => steps.event(move |stored, out| {
                let value = cloned_at(stored, &field);
                out.choice(delta(&at, json!({ key.as_str(): value }), Value::Null))
            }),
        }
    }
    if let Some(Value::Array(calls)) = message.get("tool_calls") {
        for position in 0..calls.len() {
            let call_at = format!("{choice}/message/tool_calls/{position}");
            let at = index.clone();
            let call = call_at.clone();
            steps.event(move |stored, out| {
                let mut opening = cloned_at(stored, &call);
                if let Some(object) = opening.as_object_mut() {
                    object.insert("index".into(), json!(position));
                }
                if let Some(function) = opening.get_mut("function").and_then(Value::as_object_mut) {
                    function.insert("arguments".into(), json!(""));
                }
                out.choice(delta(&at, json!({ "tool_calls": [opening] }), Value::Null))
            });
            let at = index.clone();
            steps.pieces(
                format!("{call_at}/function/arguments"),
                move |_, out, piece, _| {
                    let call = json!({"index": position, "function": {"arguments": piece}});
                    out.choice(delta(&at, json!({ "tool_calls": [call] }), Value::Null))
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::chat::assemble::ChatStreamAssembler;
    use crate::wire::sse::SseParser;

    fn stored() -> Value {
        json!({
            "id": "chatcmpl-orig", "object": "chat.completion", "created": 7, "model": "m",
            "system_fingerprint": "fp",
            "choices": [{"index": 0, "message": {
                "role": "assistant",
                "content": "A fairly long answer that needs several pieces to replay — ünïcode too.",
                "refusal": null,
                "annotations": [],
                "reasoning_content": "first think, then answer",
                "tool_calls": [{"id": "call_1", "type": "function",
                                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]
            }, "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
        })
    }

    fn round_trip(include_usage: bool) -> (Vec<Value>, Value) {
        let events: Vec<Bytes> =
            render_stream(Arc::new(stored()), "chatcmpl-new", include_usage).collect();
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
        // As the API streams: no delta for the empty annotations the JSON answer lists.
        let deltas = chunks.iter().filter_map(|c| c.pointer("/choices/0/delta"));
        assert!(deltas.clone().count() > 0);
        assert!(deltas.into_iter().all(|d| d.get("annotations").is_none()));
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
