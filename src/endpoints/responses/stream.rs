//! Responses API streams: a live stream is stored as the `response` object its
//! `response.completed` event carries; a hit is replayed as the typed event sequence the API
//! emits (created, in_progress, output items with their deltas, completed), with fresh ids.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::flow::Assembler;
use crate::replay::lazy_replay::{Replay, Steps, cloned_at};
use crate::replay::text::fresh_id;
use crate::wire::sse::named_event;

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

/// `as_served` for a replay: a response the upstream stored is served as it is (shared with
/// other replays of it), any other is copied with fresh ids.
pub fn into_served(stored: Arc<Value>) -> Arc<Value> {
    if stored.get("store").and_then(Value::as_bool) == Some(true) {
        stored
    } else {
        Arc::new(with_fresh_ids(&stored))
    }
}

/// The stored response with a new response id and new output item ids (same prefixes).
/// Function `call_id`s are kept: the caller's next request quotes them back.
pub fn with_fresh_ids(stored: &Value) -> Value {
    let mut response = stored.clone();
    give_fresh_ids(&mut response);
    response
}

fn give_fresh_ids(response: &mut Value) {
    response["id"] = json!(fresh_id("resp_", 48));
    if let Some(items) = response.get_mut("output").and_then(Value::as_array_mut) {
        for item in items {
            if let Some(id) = item.get("id").and_then(Value::as_str) {
                let prefix = id.split_once('_').map_or("item", |(p, _)| p);
                item["id"] = json!(fresh_id(&format!("{prefix}_"), 48));
            }
        }
    }
}

/// The event sequence that delivers `response`, as the Responses API streams it, each event
/// rendered when the client reads on (`lazy_replay`).
pub fn render_events(response: Arc<Value>) -> Replay {
    let mut out = Steps::new(Sequence::default());
    for kind in ["response.created", "response.in_progress"] {
        out.event(move |response, seq| {
            let mut pending = response.clone();
            pending["status"] = json!("in_progress");
            pending["output"] = json!([]);
            pending["usage"] = Value::Null;
            if pending.get("completed_at").is_some() {
                pending["completed_at"] = Value::Null;
            }
            seq.event(kind, json!({ "response": pending }))
        });
    }

    let empty = Vec::new();
    let items = response
        .get("output")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for (output_index, item) in items.iter().enumerate() {
        let item_id = item.get("id").cloned().unwrap_or(Value::Null);
        let at_item = format!("/output/{output_index}");
        let added = |out: &mut Steps<Sequence>, opening: fn(&mut Value)| {
            let at_item = at_item.clone();
            out.event(move |response, seq| {
                let mut item = cloned_at(response, &at_item);
                opening(&mut item);
                seq.event(
                    "response.output_item.added",
                    json!({"output_index": output_index, "item": item}),
                )
            });
        };
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                added(&mut out, |opening| {
                    opening["status"] = json!("in_progress");
                    opening["content"] = json!([]);
                });
                let parts = item
                    .get("content")
                    .and_then(Value::as_array)
                    .unwrap_or(&empty);
                for (content_index, part) in parts.iter().enumerate() {
                    let part_at = format!("{at_item}/content/{content_index}");
                    let at = json!({"item_id": item_id, "output_index": output_index,
                                    "content_index": content_index});
                    content_part(&mut out, at, part_at, part);
                }
            }
            Some("function_call") => {
                added(&mut out, |opening| {
                    opening["status"] = json!("in_progress");
                    opening["arguments"] = json!("");
                });
                let at = json!({"item_id": item_id, "output_index": output_index});
                let arguments = format!("{at_item}/arguments");
                text_events(
                    &mut out,
                    &at,
                    arguments,
                    "response.function_call_arguments.delta",
                    "response.function_call_arguments.done",
                    "arguments",
                );
            }
            Some("reasoning") => {
                added(&mut out, |opening| {
                    opening["summary"] = json!([]);
                    if opening.get("content").is_some_and(Value::is_array) {
                        opening["content"] = json!([]);
                    }
                });
                reasoning(&mut out, &item_id, output_index, &at_item, item);
            }
            _ => added(&mut out, |_| {}),
        }
        out.event(move |response, seq| {
            let item = cloned_at(response, &at_item);
            seq.event(
                "response.output_item.done",
                json!({"output_index": output_index, "item": item}),
            )
        });
    }
    out.event(|response, seq| seq.event("response.completed", json!({ "response": response })));
    out.over(response)
}

/// Numbers the events (`sequence_number`) as they are rendered.
#[derive(Default)]
struct Sequence(u64);

impl Sequence {
    fn event(&mut self, kind: &str, mut body: Value) -> Bytes {
        body["type"] = json!(kind);
        body["sequence_number"] = json!(self.0);
        self.0 += 1;
        named_event(kind, &body.to_string())
    }

    /// An event addressed to an item (and content part), plus its own fields.
    fn event_at(&mut self, kind: &str, at: &Value, fields: Value) -> Bytes {
        let mut body = at.clone();
        if let (Some(body), Value::Object(fields)) = (body.as_object_mut(), fields) {
            body.extend(fields);
        }
        self.event(kind, body)
    }
}

/// The delta events of the text at `text` (a pointer), then the done event carrying it whole
/// as `field`.
fn text_events(
    out: &mut Steps<Sequence>,
    at: &Value,
    text: String,
    delta_event: &'static str,
    done_event: &'static str,
    field: &'static str,
) {
    let delta_at = at.clone();
    out.pieces(text.clone(), move |_, seq, piece, _| {
        seq.event_at(delta_event, &delta_at, json!({"delta": piece}))
    });
    let at = at.clone();
    out.whole(text, move |_, seq, text, _| {
        seq.event_at(done_event, &at, json!({ field: text }))
    });
}

/// A reasoning item's summary parts and reasoning text, with their delta events.
fn reasoning(
    out: &mut Steps<Sequence>,
    item_id: &Value,
    output_index: usize,
    at_item: &str,
    item: &Value,
) {
    let count = |key: &str| item.get(key).and_then(Value::as_array).map_or(0, Vec::len);
    for summary_index in 0..count("summary") {
        let at = json!({"item_id": item_id, "output_index": output_index,
                        "summary_index": summary_index});
        let part_at = format!("{at_item}/summary/{summary_index}");
        let (opening_at, opening_part) = (at.clone(), part_at.clone());
        out.event(move |response, seq| {
            let mut opening = cloned_at(response, &opening_part);
            if let Some(opening) = opening.as_object_mut() {
                opening.insert("text".into(), json!(""));
            }
            seq.event_at(
                "response.reasoning_summary_part.added",
                &opening_at,
                json!({"part": opening}),
            )
        });
        text_events(
            out,
            &at,
            format!("{part_at}/text"),
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.done",
            "text",
        );
        out.event(move |response, seq| {
            let part = cloned_at(response, &part_at);
            seq.event_at(
                "response.reasoning_summary_part.done",
                &at,
                json!({"part": part}),
            )
        });
    }
    for content_index in 0..count("content") {
        let at = json!({"item_id": item_id, "output_index": output_index,
                        "content_index": content_index});
        text_events(
            out,
            &at,
            format!("{at_item}/content/{content_index}/text"),
            "response.reasoning_text.delta",
            "response.reasoning_text.done",
            "text",
        );
    }
}

/// A message's content part at `part_at`: output text and refusals with their deltas (and
/// citations), any other part whole.
fn content_part(out: &mut Steps<Sequence>, at: Value, part_at: String, part: &Value) {
    let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
    let (field, delta_event, done_event) = match kind {
        "output_text" => (
            "text",
            "response.output_text.delta",
            "response.output_text.done",
        ),
        "refusal" => ("refusal", "response.refusal.delta", "response.refusal.done"),
        _ => {
            for kind in ["response.content_part.added", "response.content_part.done"] {
                let (at, part_at) = (at.clone(), part_at.clone());
                out.event(move |response, seq| {
                    let part = cloned_at(response, &part_at);
                    seq.event_at(kind, &at, json!({ "part": part }))
                });
            }
            return;
        }
    };
    let annotations = part.get("annotations").and_then(Value::as_array);
    let cited = annotations.is_some();
    let (opening_at, opening_part) = (at.clone(), part_at.clone());
    out.event(move |response, seq| {
        let mut opening = cloned_at(response, &opening_part);
        opening[field] = json!("");
        if cited {
            opening["annotations"] = json!([]);
        }
        seq.event_at(
            "response.content_part.added",
            &opening_at,
            json!({"part": opening}),
        )
    });
    let text = format!("{part_at}/{field}");
    let logprobs = format!("{part_at}/logprobs");
    let (delta_at, delta_logprobs) = (at.clone(), logprobs.clone());
    out.pieces(text.clone(), move |response, seq, piece, i| {
        let mut delta = json!({"delta": piece});
        if field == "text" {
            // Logprobs, when asked for, travel whole with the first delta.
            delta["logprobs"] = match (response.pointer(&delta_logprobs), i) {
                (Some(lp), 0) => lp.clone(),
                _ => json!([]),
            };
        }
        seq.event_at(delta_event, &delta_at, delta)
    });
    // Citations arrive as events of their own, after the text they cite.
    for annotation_index in 0..annotations.map_or(0, Vec::len) {
        let annotation = format!("{part_at}/annotations/{annotation_index}");
        let at = at.clone();
        out.event(move |response, seq| {
            let annotation = cloned_at(response, &annotation);
            seq.event_at(
                "response.output_text.annotation.added",
                &at,
                json!({"annotation_index": annotation_index, "annotation": annotation}),
            )
        });
    }
    let done_at = at.clone();
    out.whole(text, move |response, seq, text, _| {
        let mut done = json!({ field: text });
        if field == "text" {
            done["logprobs"] = response.pointer(&logprobs).cloned().unwrap_or(json!([]));
        }
        seq.event_at(done_event, &done_at, done)
    });
    out.event(move |response, seq| {
        let part = cloned_at(response, &part_at);
        seq.event_at("response.content_part.done", &at, json!({"part": part}))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::sse::SseParser;

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
        render_events(Arc::new(with_fresh_ids(&stored())))
            .flat_map(|bytes| parser.push(&bytes))
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
        let events: Vec<Value> = render_events(Arc::new(response.clone()))
            .flat_map(|bytes| parser.push(&bytes))
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
