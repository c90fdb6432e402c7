//! Turning a streamed chat completion (`chat.completion.chunk` events) back into the
//! `chat.completion` object a non-streaming call would have returned, so that one stored form
//! serves both kinds of request. Nothing is dropped: unknown delta fields are merged by the
//! same rules as the known ones (strings concatenate, indexed arrays merge by `index`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::audio;
use crate::replay::chunks::ChunkReader;

/// Accumulates chunks; `finish` yields the completion only for a clean, successful stream.
#[derive(Debug, Default)]
pub struct ChatStreamAssembler {
    reader: ChunkReader,
    choices: BTreeMap<u64, Choice>,
}

#[derive(Debug, Default)]
struct Choice {
    message: Map<String, Value>,
    logprobs: Option<Value>,
    finish_reason: Option<Value>,
    /// The decoded bytes of `audio.data` so far; `Err` once a piece did not decode.
    audio: Option<Result<Vec<u8>, ()>>,
}

/// What a chunk's choice contributes; other fields of a choice are not kept. (A JSON `null`
/// reads as `None`.)
#[derive(Deserialize)]
struct ChoiceDelta {
    index: Option<Value>,
    delta: Option<Value>,
    logprobs: Option<Value>,
    finish_reason: Option<Value>,
}

/// Top-level fields every chunk repeats; kept on the assembled completion.
pub const HEADER_KEYS: &[&str] = &[
    "id",
    "created",
    "model",
    "system_fingerprint",
    "service_tier",
];

/// Keys whose value is an identifier, repeated rather than split across chunks.
const REPLACED_KEYS: [&str; 5] = ["id", "type", "role", "name", "expires_at"];

impl ChatStreamAssembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one event's `data` payload.
    pub fn push(&mut self, data: &str) {
        for choice in self.reader.choices::<ChoiceDelta>(data, HEADER_KEYS) {
            let index = choice.index.as_ref().and_then(Value::as_u64).unwrap_or(0);
            let entry = self.choices.entry(index).or_default();
            if let Some(Value::Object(mut delta)) = choice.delta {
                if let Some(data) = take_audio_data(&mut delta) {
                    entry.push_audio(&data);
                }
                merge_object(&mut entry.message, delta);
            }
            if let Some(logprobs) = choice.logprobs {
                let merged = entry.logprobs.get_or_insert_with(|| json!({}));
                merge_value(merged, logprobs);
            }
            if choice.finish_reason.is_some() {
                entry.finish_reason = choice.finish_reason;
            }
        }
    }

    /// True once `[DONE]` (or a failure) was seen: nothing after it can change the outcome.
    pub fn ended(&self) -> bool {
        self.reader.ended()
    }

    /// The assembled `chat.completion`, or `None` if the stream did not end cleanly with
    /// `[DONE]`, carried an error, or left a choice without a finish reason.
    pub fn finish(self) -> Option<Value> {
        if !self.reader.clean() || self.choices.is_empty() {
            return None;
        }
        let mut choices = Vec::with_capacity(self.choices.len());
        for (index, choice) in self.choices {
            let finish_reason = choice.finish_reason?;
            let mut message = choice.message;
            match choice.audio {
                Some(Ok(bytes)) => {
                    if let Some(Value::Object(audio)) = message.get_mut("audio") {
                        audio.insert("data".into(), audio::encode(&bytes).into());
                    }
                }
                Some(Err(())) => return None, // no valid JSON form to store
                None => {}
            }
            message
                .entry("role")
                .or_insert_with(|| Value::String("assistant".into()));
            message.entry("content").or_insert(Value::Null);
            message.entry("refusal").or_insert(Value::Null);
            // The API's JSON message always lists its annotations; its stream sends none
            // when there are none.
            message
                .entry("annotations")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Some(Value::Array(calls)) = message.get_mut("tool_calls") {
                for call in calls.iter_mut().filter_map(Value::as_object_mut) {
                    call.remove("index");
                }
            }
            choices.push(json!({
                "index": index,
                "message": message,
                "logprobs": choice.logprobs.unwrap_or(Value::Null),
                "finish_reason": finish_reason,
            }));
        }
        Some(self.reader.answer("chat.completion", choices))
    }
}

impl Choice {
    fn push_audio(&mut self, data: &str) {
        let decoded = audio::decode(data);
        match (self.audio.get_or_insert(Ok(Vec::new())), decoded) {
            (Ok(bytes), Some(more)) => bytes.extend(more),
            (slot, _) => *slot = Err(()),
        }
    }
}

/// Takes a delta's `audio.data` piece out (leaving an empty string, so the merge does not
/// concatenate base64 text).
fn take_audio_data(delta: &mut Map<String, Value>) -> Option<String> {
    match delta.get_mut("audio")?.get_mut("data")? {
        Value::String(data) => Some(std::mem::take(data)),
        _ => None,
    }
}

/// Merges a delta. A null is kept only for a key not seen yet (the message's `content: null`,
/// the logprobs' `refusal: null`); later it means "nothing new".
fn merge_object(target: &mut Map<String, Value>, delta: Map<String, Value>) {
    for (key, value) in delta {
        if value.is_null() {
            target.entry(key).or_insert(Value::Null);
            continue;
        }
        match target.get_mut(&key) {
            Some(existing) if !REPLACED_KEYS.contains(&key.as_str()) => {
                merge_value(existing, value)
            }
            _ => {
                target.insert(key, value);
            }
        }
    }
}

fn merge_value(target: &mut Value, delta: Value) {
    match (target, delta) {
        (Value::String(existing), Value::String(more)) => existing.push_str(&more),
        (Value::Object(existing), Value::Object(more)) => merge_object(existing, more),
        (Value::Array(existing), Value::Array(more)) => merge_array(existing, more),
        (target, delta) => *target = delta,
    }
}

/// Arrays of `{"index": i, ...}` (tool calls) merge element by index; others append.
fn merge_array(existing: &mut Vec<Value>, more: Vec<Value>) {
    for item in more {
        let index = item.get("index").and_then(Value::as_u64);
        let slot = index.and_then(|i| {
            existing
                .iter_mut()
                .find(|e| e.get("index").and_then(Value::as_u64) == Some(i))
        });
        match (slot, item) {
            (Some(Value::Object(slot)), Value::Object(item)) => merge_object(slot, item),
            (_, item) => existing.push(item),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(delta: Value, finish: Option<&str>) -> String {
        json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 5,
            "model": "m", "system_fingerprint": "fp",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
        })
        .to_string()
    }

    #[test]
    fn assembles_text_and_usage() {
        let mut assembler = ChatStreamAssembler::new();
        assembler.push(&chunk(
            json!({"role": "assistant", "content": "", "refusal": null}),
            None,
        ));
        assembler.push(&chunk(json!({"content": "Hello "}), None));
        assembler.push(&chunk(json!({"content": "world"}), None));
        assembler.push(&chunk(json!({}), Some("stop")));
        assembler.push(
            &json!({"id": "chatcmpl-1", "choices": [], "usage": {"total_tokens": 3}}).to_string(),
        );
        assembler.push("[DONE]");
        let completion = assembler.finish().expect("complete");
        assert_eq!(completion["object"], "chat.completion");
        assert_eq!(completion["id"], "chatcmpl-1");
        assert_eq!(completion["system_fingerprint"], "fp");
        assert_eq!(
            completion["choices"][0]["message"]["content"],
            "Hello world"
        );
        assert_eq!(completion["choices"][0]["message"]["role"], "assistant");
        assert_eq!(completion["choices"][0]["finish_reason"], "stop");
        assert_eq!(completion["usage"]["total_tokens"], 3);
    }

    #[test]
    fn assembles_tool_calls_by_index() {
        let mut assembler = ChatStreamAssembler::new();
        assembler.push(&chunk(json!({"role": "assistant", "content": null, "tool_calls": [
            {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}
        ]}), None));
        assembler.push(&chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"x\":"}}]}),
            None,
        ));
        assembler.push(&chunk(json!({"tool_calls": [
            {"index": 1, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}}
        ]}), None));
        assembler.push(&chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
            None,
        ));
        assembler.push(&chunk(json!({}), Some("tool_calls")));
        assembler.push("[DONE]");
        let completion = assembler.finish().unwrap();
        let calls = &completion["choices"][0]["message"]["tool_calls"];
        assert_eq!(calls[0]["id"], "call_a");
        assert_eq!(calls[0]["function"]["arguments"], "{\"x\":1}");
        assert_eq!(calls[1]["function"]["name"], "g");
        assert!(calls[0].get("index").is_none());
        assert_eq!(completion["choices"][0]["message"]["content"], Value::Null);
    }

    #[test]
    fn keeps_unknown_string_fields() {
        let mut assembler = ChatStreamAssembler::new();
        assembler.push(&chunk(json!({"reasoning_content": "think "}), None));
        assembler.push(&chunk(json!({"reasoning_content": "hard"}), None));
        assembler.push(&chunk(json!({"content": "ok"}), Some("stop")));
        assembler.push("[DONE]");
        let completion = assembler.finish().unwrap();
        assert_eq!(
            completion["choices"][0]["message"]["reasoning_content"],
            "think hard"
        );
    }

    #[test]
    fn incomplete_or_failed_streams_are_not_stored() {
        let mut no_done = ChatStreamAssembler::new();
        no_done.push(&chunk(json!({"content": "partial"}), None));
        assert!(no_done.finish().is_none());

        let mut no_finish = ChatStreamAssembler::new();
        no_finish.push(&chunk(json!({"content": "partial"}), None));
        no_finish.push("[DONE]");
        assert!(no_finish.finish().is_none());

        let mut error = ChatStreamAssembler::new();
        error.push(&chunk(json!({"content": "x"}), Some("stop")));
        error.push(&json!({"error": {"message": "boom"}}).to_string());
        error.push("[DONE]");
        assert!(error.finish().is_none());

        let mut garbage = ChatStreamAssembler::new();
        garbage.push(&chunk(json!({"content": "x"}), Some("stop")));
        garbage.push("{not json");
        garbage.push("[DONE]");
        assert!(garbage.finish().is_none());

        for bad_choices in [
            json!({"index": 0}),
            json!([1]),
            json!([{"index": 0, "delta": 5}]),
        ] {
            let mut misshapen = ChatStreamAssembler::new();
            misshapen.push(&chunk(json!({"content": "x"}), Some("stop")));
            misshapen.push(&json!({"id": "chatcmpl-1", "choices": bad_choices}).to_string());
            misshapen.push("[DONE]");
            let finished = misshapen.finish();
            if bad_choices[0]["delta"] == 5 {
                // A delta that is not an object adds nothing; the choices still have a shape.
                assert!(finished.is_some());
            } else {
                assert!(finished.is_none(), "{bad_choices}");
            }
        }
    }

    #[test]
    fn the_header_is_the_latest_non_null_value_of_each_field() {
        let mut assembler = ChatStreamAssembler::new();
        assembler.push(&chunk(json!({"content": "a"}), None));
        assembler.push(
            &json!({"id": "chatcmpl-1", "model": "m2", "system_fingerprint": null,
                    "service_tier": "default", "choices": []})
            .to_string(),
        );
        assembler.push(&chunk(json!({}), Some("stop")));
        assembler.push("[DONE]");
        let completion = assembler.finish().expect("complete");
        assert_eq!(completion["model"], "m", "the last chunk names m again");
        assert_eq!(completion["system_fingerprint"], "fp");
        assert_eq!(completion["service_tier"], "default");
        assert_eq!(completion["created"], 5);
    }
}
