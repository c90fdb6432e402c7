//! The eager replays that rendered every event of a streamed hit up front (before
//! `crate::replay::lazy_replay`), kept verbatim as the reference the lazy replays of the
//! endpoints must match byte for byte.

#![allow(dead_code)]

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::endpoints::chat::assemble::HEADER_KEYS;
use crate::replay::chunks::{copy_fields, stored_choices};
use crate::replay::text::pieces;
use crate::wire::sse::{data_event, named_event};

/// Completions' header keys (`completions::HEADER_KEYS`).
const COMPLETION_HEADER_KEYS: &[&str] = &["id", "created", "model", "system_fingerprint"];

pub mod chat {
    use super::*;

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
            out.choice(
                json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": finish}),
            );
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
        let mut deltas = vec![
            json!({"role": role, "content": opening("content"), "refusal": opening("refusal")}),
        ];
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
        for (key, value) in rest {
            match value {
                Value::String(text)
                    if matches!(key.as_str(), "content" | "refusal") && one_piece =>
                {
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
}

pub mod completions {
    use super::*;

    pub fn render_stream(stored: &Value, id: &str, include_usage: bool) -> Vec<Bytes> {
        let mut out = ChunkWriter::new(
            stored,
            id,
            "text_completion",
            &COMPLETION_HEADER_KEYS[1..],
            include_usage,
        );
        for choice in stored_choices(stored) {
            let index = choice.get("index").cloned().unwrap_or(json!(0));
            let text = choice.get("text").and_then(Value::as_str).unwrap_or("");
            let logprobs = choice.get("logprobs").cloned().unwrap_or(Value::Null);
            // With logprobs (parallel arrays per token) the text goes out whole.
            let parts = if logprobs.is_null() {
                pieces(text)
            } else {
                vec![text]
            };
            for part in parts {
                out.choice(
                json!({"text": part, "index": index, "logprobs": logprobs, "finish_reason": null}),
            );
            }
            let finish = choice
                .get("finish_reason")
                .cloned()
                .unwrap_or(json!("stop"));
            out.choice(
                json!({"text": "", "index": index, "logprobs": null, "finish_reason": finish}),
            );
        }
        out.finish(stored.get("usage"))
    }
}

pub mod responses {
    use super::*;

    /// The event sequence that delivers `response`, as the Responses API streams it.
    pub fn render_events(response: &Value) -> Vec<Bytes> {
        let mut out = Events::default();
        let mut pending = response.clone();
        pending["status"] = json!("in_progress");
        pending["output"] = json!([]);
        pending["usage"] = Value::Null;
        if pending.get("completed_at").is_some() {
            pending["completed_at"] = Value::Null;
        }
        out.push("response.created", json!({ "response": pending }));
        out.push("response.in_progress", json!({ "response": pending }));

        let empty = Vec::new();
        let items = response
            .get("output")
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        for (output_index, item) in items.iter().enumerate() {
            let item_id = item.get("id").cloned().unwrap_or(Value::Null);
            match item.get("type").and_then(Value::as_str) {
                Some("message") => {
                    let mut opening = item.clone();
                    opening["status"] = json!("in_progress");
                    opening["content"] = json!([]);
                    out.push(
                        "response.output_item.added",
                        json!({"output_index": output_index, "item": opening}),
                    );
                    let parts = item
                        .get("content")
                        .and_then(Value::as_array)
                        .unwrap_or(&empty);
                    for (content_index, part) in parts.iter().enumerate() {
                        out.content_part(&item_id, output_index, content_index, part);
                    }
                }
                Some("function_call") => {
                    let mut opening = item.clone();
                    opening["status"] = json!("in_progress");
                    opening["arguments"] = json!("");
                    out.push(
                        "response.output_item.added",
                        json!({"output_index": output_index, "item": opening}),
                    );
                    let arguments = item.get("arguments").and_then(Value::as_str).unwrap_or("");
                    let at = json!({"item_id": item_id, "output_index": output_index});
                    for piece in pieces(arguments) {
                        out.push_at(
                            "response.function_call_arguments.delta",
                            &at,
                            json!({"delta": piece}),
                        );
                    }
                    out.push_at(
                        "response.function_call_arguments.done",
                        &at,
                        json!({"arguments": arguments}),
                    );
                }
                Some("reasoning") => {
                    let mut opening = item.clone();
                    opening["summary"] = json!([]);
                    if opening.get("content").is_some_and(Value::is_array) {
                        opening["content"] = json!([]);
                    }
                    out.push(
                        "response.output_item.added",
                        json!({"output_index": output_index, "item": opening}),
                    );
                    out.reasoning(&item_id, output_index, item);
                }
                _ => out.push(
                    "response.output_item.added",
                    json!({"output_index": output_index, "item": item}),
                ),
            }
            out.push(
                "response.output_item.done",
                json!({"output_index": output_index, "item": item}),
            );
        }
        out.push("response.completed", json!({ "response": response }));
        out.events
    }

    /// Accumulates events with their `sequence_number`.
    #[derive(Default)]
    struct Events {
        events: Vec<Bytes>,
        sequence: u64,
    }

    impl Events {
        fn push(&mut self, kind: &str, mut body: Value) {
            body["type"] = json!(kind);
            body["sequence_number"] = json!(self.sequence);
            self.sequence += 1;
            self.events.push(named_event(kind, &body.to_string()));
        }

        /// An event addressed to an item (and content part), plus its own fields.
        fn push_at(&mut self, kind: &str, at: &Value, fields: Value) {
            let mut body = at.clone();
            if let (Some(body), Value::Object(fields)) = (body.as_object_mut(), fields) {
                body.extend(fields);
            }
            self.push(kind, body);
        }

        /// A reasoning item's summary parts and reasoning text, with their delta events.
        fn reasoning(&mut self, item_id: &Value, output_index: usize, item: &Value) {
            let empty = Vec::new();
            let summary = item.get("summary").and_then(Value::as_array);
            for (summary_index, part) in summary.unwrap_or(&empty).iter().enumerate() {
                let at = json!({"item_id": item_id, "output_index": output_index,
                            "summary_index": summary_index});
                let text = part.get("text").and_then(Value::as_str).unwrap_or("");
                let mut opening = part.clone();
                opening["text"] = json!("");
                self.push_at(
                    "response.reasoning_summary_part.added",
                    &at,
                    json!({"part": opening}),
                );
                for piece in pieces(text) {
                    self.push_at(
                        "response.reasoning_summary_text.delta",
                        &at,
                        json!({"delta": piece}),
                    );
                }
                self.push_at(
                    "response.reasoning_summary_text.done",
                    &at,
                    json!({"text": text}),
                );
                self.push_at(
                    "response.reasoning_summary_part.done",
                    &at,
                    json!({"part": part}),
                );
            }
            let content = item.get("content").and_then(Value::as_array);
            for (content_index, part) in content.unwrap_or(&empty).iter().enumerate() {
                let at = json!({"item_id": item_id, "output_index": output_index,
                            "content_index": content_index});
                let text = part.get("text").and_then(Value::as_str).unwrap_or("");
                for piece in pieces(text) {
                    self.push_at(
                        "response.reasoning_text.delta",
                        &at,
                        json!({"delta": piece}),
                    );
                }
                self.push_at("response.reasoning_text.done", &at, json!({"text": text}));
            }
        }

        fn content_part(
            &mut self,
            item_id: &Value,
            output_index: usize,
            content_index: usize,
            part: &Value,
        ) {
            let at = json!({"item_id": item_id, "output_index": output_index, "content_index": content_index});
            let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
            let (field, delta_event, done_event) = match kind {
                "output_text" => (
                    "text",
                    "response.output_text.delta",
                    "response.output_text.done",
                ),
                "refusal" => ("refusal", "response.refusal.delta", "response.refusal.done"),
                _ => {
                    self.push_at("response.content_part.added", &at, json!({"part": part}));
                    self.push_at("response.content_part.done", &at, json!({"part": part}));
                    return;
                }
            };
            let text = part.get(field).and_then(Value::as_str).unwrap_or("");
            let mut opening = part.clone();
            opening[field] = json!("");
            let annotations = part.get("annotations").and_then(Value::as_array);
            if annotations.is_some() {
                opening["annotations"] = json!([]);
            }
            self.push_at("response.content_part.added", &at, json!({"part": opening}));
            let logprobs = part.get("logprobs").cloned();
            for (i, piece) in pieces(text).into_iter().enumerate() {
                let mut delta = json!({"delta": piece});
                if field == "text" {
                    // Logprobs, when asked for, travel whole with the first delta.
                    delta["logprobs"] = match (&logprobs, i) {
                        (Some(lp), 0) => lp.clone(),
                        _ => json!([]),
                    };
                }
                self.push_at(delta_event, &at, delta);
            }
            // Citations arrive as events of their own, after the text they cite.
            for (annotation_index, annotation) in annotations.into_iter().flatten().enumerate() {
                self.push_at(
                    "response.output_text.annotation.added",
                    &at,
                    json!({"annotation_index": annotation_index, "annotation": annotation}),
                );
            }
            let mut done = json!({ field: text });
            if field == "text" {
                done["logprobs"] = logprobs.unwrap_or(json!([]));
            }
            self.push_at(done_event, &at, done);
            self.push_at("response.content_part.done", &at, json!({"part": part}));
        }
    }
}

/// Writes a replayed chunk stream: every chunk shares a header, the usage chunk and
/// `[DONE]` close it.
pub struct ChunkWriter {
    header: Map<String, Value>,
    include_usage: bool,
    events: Vec<Bytes>,
}

impl ChunkWriter {
    /// `header_keys` are copied from the stored answer; `id` and `object` are set.
    pub fn new(
        stored: &Value,
        id: &str,
        object: &str,
        header_keys: &[&str],
        include_usage: bool,
    ) -> Self {
        let mut header = Map::new();
        header.insert("id".into(), json!(id));
        header.insert("object".into(), json!(object));
        if let Some(stored) = stored.as_object() {
            copy_fields(stored, &mut header, header_keys);
        }
        ChunkWriter {
            header,
            include_usage,
            events: Vec::new(),
        }
    }

    /// One chunk carrying `choice`.
    pub fn choice(&mut self, choice: Value) {
        let mut chunk = self.header.clone();
        chunk.insert("choices".into(), json!([choice]));
        if self.include_usage {
            // OpenAI marks every chunk but the last with `usage: null` when usage is asked for.
            chunk.insert("usage".into(), Value::Null);
        }
        self.events
            .push(data_event(&Value::Object(chunk).to_string()));
    }

    /// The events, closed by the usage chunk (when asked for) and `[DONE]`.
    pub fn finish(mut self, usage: Option<&Value>) -> Vec<Bytes> {
        if self.include_usage {
            let mut chunk = self.header.clone();
            chunk.insert("choices".into(), json!([]));
            chunk.insert("usage".into(), usage.cloned().unwrap_or(Value::Null));
            self.events
                .push(data_event(&Value::Object(chunk).to_string()));
        }
        self.events.push(data_event("[DONE]"));
        self.events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Long enough for many pieces, with multi-byte characters and assorted whitespace.
    fn long_text(tag: &str) -> String {
        format!("{tag}: ").repeat(3)
            + &"Ünïcödé words\tand\nnewlines, 2+2=4 — citing [1] ".repeat(40)
    }

    fn lazy(replay: crate::replay::lazy_replay::Replay) -> Vec<Bytes> {
        replay.collect()
    }

    fn chat_answers() -> Vec<Value> {
        let token = |t: &str| json!({"token": t, "logprob": -0.5, "bytes": t.as_bytes(), "top_logprobs": []});
        vec![
            // Reasoning, content and tool calls.
            json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
                   "system_fingerprint": "fp", "service_tier": "default",
                   "choices": [{"index": 0, "message": {"role": "assistant",
                       "content": long_text("content"), "refusal": null,
                       "reasoning_content": long_text("thinking"), "annotations": [],
                       "tool_calls": [
                           {"id": "call_1", "type": "function", "function": {"name": "a",
                            "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\", \"days\": 3}"}},
                           {"id": "call_2", "type": "function", "function": {"name": "b",
                            "arguments": {"not": "a string"}}}]},
                       "logprobs": null, "finish_reason": "tool_calls"}],
                   "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}),
            // A refusal with logprobs.
            json!({"id": "chatcmpl-2", "object": "chat.completion", "created": 8, "model": "m",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
                       "refusal": "I'm sorry, I can't help with that request."},
                       "logprobs": {"content": null, "refusal": [token("I'm"), token(" sorry")]},
                       "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}}),
            // Content with logprobs, an empty one, several choices, odd keys, no message.
            json!({"id": "chatcmpl-3", "object": "chat.completion", "created": 9, "model": "m",
                   "choices": [
                       {"index": 0, "message": {"role": "assistant", "content": long_text("lp"),
                        "refusal": null}, "logprobs": {"content": [token("lp")], "refusal": null},
                        "finish_reason": "length"},
                       {"message": {"role": "assistant", "content": "", "refusal": null,
                        "odd/key~0": long_text("odd")}, "logprobs": {"content": []}},
                       {"index": 2, "finish_reason": "stop"}]}),
            // Spoken: audio travels whole.
            json!({"id": "chatcmpl-4", "object": "chat.completion", "created": 10, "model": "m",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
                       "refusal": null, "audio": {"id": "audio_1", "expires_at": 11,
                       "data": "AAAA".repeat(500), "transcript": long_text("spoken")}},
                       "logprobs": null, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}),
            json!({"not": "a completion"}),
        ]
    }

    #[test]
    fn chat_lazy_replay_matches_the_eager_one_byte_for_byte() {
        for stored in chat_answers() {
            for include_usage in [false, true] {
                let eager = chat::render_stream(&stored, "chatcmpl-new", include_usage);
                let lazy = lazy(crate::endpoints::chat::replay::render_stream(
                    Arc::new(stored.clone()),
                    "chatcmpl-new",
                    include_usage,
                ));
                assert!(eager.len() > 2 || stored.get("choices").is_none());
                assert_eq!(lazy, eager, "{stored}");
            }
        }
    }

    #[test]
    fn completions_lazy_replay_matches_the_eager_one_byte_for_byte() {
        let stored = json!({"id": "cmpl-1", "object": "text_completion", "created": 1,
            "model": "m", "system_fingerprint": "fp", "choices": [
                {"text": long_text("once"), "index": 0, "logprobs": null, "finish_reason": "length"},
                {"text": long_text("twice"), "index": 1, "finish_reason": null,
                 "logprobs": {"tokens": ["a"], "token_logprobs": [-0.1], "top_logprobs": null,
                              "text_offset": [0]}},
                {"index": 2}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 12, "total_tokens": 13}});
        for include_usage in [false, true] {
            let eager = completions::render_stream(&stored, "cmpl-new", include_usage);
            let lazy = lazy(crate::endpoints::completions::render_stream(
                Arc::new(stored.clone()),
                "cmpl-new",
                include_usage,
            ));
            assert_eq!(lazy, eager);
        }
    }

    #[test]
    fn responses_lazy_replay_matches_the_eager_one_byte_for_byte() {
        let citation = json!({"type": "url_citation", "url": "https://example.com",
                              "title": "Example", "start_index": 0, "end_index": 5});
        let response = json!({
            "id": "resp_1", "object": "response", "created_at": 1, "completed_at": 2,
            "status": "completed", "store": true, "error": null, "model": "gpt-4.1-mini",
            "output": [
                {"id": "rs_1", "type": "reasoning", "summary": [
                    {"type": "summary_text", "text": long_text("summary one")},
                    {"type": "summary_text", "text": "short"}],
                 "content": [{"type": "reasoning_text", "text": long_text("reasoning")}]},
                {"id": "ws_1", "type": "web_search_call", "status": "completed",
                 "action": {"type": "search", "query": "q"}},
                {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
                 "content": [
                    {"type": "output_text", "annotations": [citation.clone(), citation],
                     "logprobs": [{"token": "x", "logprob": -0.1, "bytes": [120],
                                   "top_logprobs": []}],
                     "text": long_text("answer")},
                    {"type": "output_text", "text": "no annotations, no logprobs"},
                    {"type": "refusal", "refusal": long_text("refusal")},
                    {"type": "output_audio", "transcript": "t"}]},
                {"id": "fc_1", "type": "function_call", "status": "completed",
                 "call_id": "call_9", "name": "get_weather",
                 "arguments": format!("{{\"q\": \"{}\"}}", "Paris ".repeat(30))}
            ],
            "usage": {"input_tokens": 5, "output_tokens": 9, "total_tokens": 14}
        });
        for response in [response.clone(), json!({"id": "resp_2", "output": "odd"})] {
            let eager = responses::render_events(&response);
            let lazy = lazy(crate::endpoints::responses::stream::render_events(
                Arc::new(response.clone()),
            ));
            assert!(eager.len() > 2);
            assert_eq!(lazy, eager, "{response}");
        }
    }
}
