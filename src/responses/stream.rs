//! Responses API streams: a live stream is stored as the `response` object its
//! `response.completed` event carries; a hit is replayed as the typed event sequence the API
//! emits (created, in_progress, output items with their deltas, completed), with fresh ids.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::cached::Assembler;
use crate::sse::named_event;
use crate::text::{fresh_id, pieces};

/// Keeps the final response of a stream that completed; anything else is not stored.
#[derive(Default)]
pub struct ResponseAssembler {
    completed: Option<Value>,
    failed: bool,
}

impl Assembler for ResponseAssembler {
    fn push(&mut self, data: &str) {
        let Ok(event) = serde_json::from_str::<Value>(data) else {
            // Responses streams end without [DONE]; tolerate one, fail on anything else.
            self.failed |= data.trim() != "[DONE]";
            return;
        };
        match event.get("type").and_then(Value::as_str) {
            Some("response.completed") => self.completed = event.get("response").cloned(),
            Some("error" | "response.failed" | "response.incomplete") => self.failed = true,
            _ => {}
        }
    }

    fn ended(&self) -> bool {
        self.completed.is_some() || self.failed
    }

    fn finish(self: Box<Self>) -> Option<Value> {
        if self.failed {
            return None;
        }
        self.completed
            .filter(|r| r.get("status").and_then(Value::as_str) == Some("completed"))
    }
}

/// The stored response as a hit serves it: with the upstream's ids when the upstream stored
/// it (`store: true`), so later calls can refer to it; otherwise with fresh ids.
pub fn as_served(stored: &Value) -> Value {
    if stored.get("store").and_then(Value::as_bool) == Some(true) {
        stored.clone()
    } else {
        with_fresh_ids(stored)
    }
}

/// The stored response with a new response id and new output item ids (same prefixes).
/// Function `call_id`s are kept: the caller's next request quotes them back.
pub fn with_fresh_ids(stored: &Value) -> Value {
    let mut response = stored.clone();
    response["id"] = json!(fresh_id("resp_", 48));
    if let Some(items) = response.get_mut("output").and_then(Value::as_array_mut) {
        for item in items {
            if let Some(id) = item.get("id").and_then(Value::as_str) {
                let prefix = id.split_once('_').map_or("item", |(p, _)| p);
                item["id"] = json!(fresh_id(&format!("{prefix}_"), 48));
            }
        }
    }
    response
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseParser;

    fn stored() -> Value {
        json!({
            "id": "resp_orig", "object": "response", "created_at": 1, "status": "completed",
            "model": "gpt-4.1-mini", "output": [
                {"id": "rs_1", "type": "reasoning", "summary": []},
                {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
                 "content": [{"type": "output_text", "annotations": [], "logprobs": [],
                              "text": "Paris is the capital of France, and has been for centuries."}]},
                {"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "call_9",
                 "name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}
            ],
            "usage": {"input_tokens": 5, "output_tokens": 9, "total_tokens": 14}
        })
    }

    fn replay() -> Vec<(String, Value)> {
        let mut parser = SseParser::new();
        render_events(&with_fresh_ids(&stored()))
            .iter()
            .flat_map(|bytes| parser.push(bytes))
            .map(|event| {
                (
                    event.event.unwrap(),
                    serde_json::from_str(&event.data).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn replay_is_a_valid_sequence_ending_in_completed() {
        let events = replay();
        assert_eq!(events[0].0, "response.created");
        assert_eq!(events[1].0, "response.in_progress");
        assert_eq!(events.last().unwrap().0, "response.completed");
        for (i, (name, data)) in events.iter().enumerate() {
            assert_eq!(data["type"], *name);
            assert_eq!(data["sequence_number"], i);
        }
        let text: String = events
            .iter()
            .filter(|(name, _)| name == "response.output_text.delta")
            .map(|(_, d)| d["delta"].as_str().unwrap())
            .collect();
        assert_eq!(text, stored()["output"][1]["content"][0]["text"]);
        let arguments: String = events
            .iter()
            .filter(|(name, _)| name == "response.function_call_arguments.delta")
            .map(|(_, d)| d["delta"].as_str().unwrap())
            .collect();
        assert_eq!(arguments, stored()["output"][2]["arguments"]);
    }

    #[test]
    fn replay_reassembles_with_fresh_ids() {
        let events = replay();
        let mut assembler: Box<dyn Assembler> = Box::<ResponseAssembler>::default();
        for (_, data) in &events {
            assembler.push(&data.to_string());
        }
        let rebuilt = assembler.finish().expect("completed");
        assert_ne!(rebuilt["id"], "resp_orig");
        assert!(rebuilt["id"].as_str().unwrap().starts_with("resp_"));
        assert!(
            rebuilt["output"][1]["id"]
                .as_str()
                .unwrap()
                .starts_with("msg_")
        );
        assert_ne!(rebuilt["output"][1]["id"], "msg_1");
        assert_eq!(
            rebuilt["output"][2]["call_id"], "call_9",
            "call ids are kept"
        );
        assert_eq!(
            rebuilt["output"][1]["content"],
            stored()["output"][1]["content"]
        );
        assert_eq!(rebuilt["usage"], stored()["usage"]);
    }

    #[test]
    fn reasoning_summaries_and_citations_get_their_events() {
        let mut response = stored();
        response["output"][0]["summary"] = json!([{"type": "summary_text", "text": "Think."}]);
        let citation = json!({"type": "url_citation", "url": "https://example.com",
                              "title": "Example", "start_index": 0, "end_index": 5});
        response["output"][1]["content"][0]["annotations"] = json!([citation]);
        let mut parser = SseParser::new();
        let events: Vec<Value> = render_events(&response)
            .iter()
            .flat_map(|bytes| parser.push(bytes))
            .map(|event| serde_json::from_str(&event.data).unwrap())
            .collect();
        let of =
            |kind: &str| -> Vec<&Value> { events.iter().filter(|e| e["type"] == kind).collect() };
        assert_eq!(
            of("response.reasoning_summary_text.delta")[0]["delta"],
            "Think."
        );
        assert_eq!(
            of("response.reasoning_summary_part.done")[0]["summary_index"],
            0
        );
        assert_eq!(
            of("response.output_item.added")[0]["item"]["summary"],
            json!([])
        );
        assert_eq!(
            of("response.output_text.annotation.added")[0]["annotation"],
            citation
        );
        assert_eq!(
            of("response.content_part.added")[0]["part"]["annotations"],
            json!([])
        );
        let mut assembler: Box<dyn Assembler> = Box::<ResponseAssembler>::default();
        for event in &events {
            assembler.push(&event.to_string());
        }
        assert_eq!(assembler.finish().unwrap(), response);
    }

    #[test]
    fn failed_or_unfinished_streams_are_not_stored() {
        let mut unfinished: Box<dyn Assembler> = Box::<ResponseAssembler>::default();
        unfinished.push(r#"{"type":"response.created","response":{}}"#);
        assert!(unfinished.finish().is_none());
        let mut failed: Box<dyn Assembler> = Box::<ResponseAssembler>::default();
        failed.push(r#"{"type":"response.failed","response":{"status":"failed"}}"#);
        failed.push(r#"{"type":"response.completed","response":{"status":"completed"}}"#);
        assert!(failed.finish().is_none());
    }
}
