//! What chat completions and legacy completions streams share: `data:` chunks that end with
//! `data: [DONE]`, each carrying the same header fields (id, created, model...).

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::replay::lazy_replay::Steps;
use crate::replay::raw_chunk::{RawChunk, RawHeader};
use crate::wire::sse::data_event;

/// Tracks a chunk stream's end and failures while assembling it (`ChunkReader`'s).
#[derive(Debug, Default)]
struct ChunkGate {
    done: bool,
    failed: bool,
}

impl ChunkGate {
    /// The chunk in `data` if it should be merged; `None` for `[DONE]`, and for anything that
    /// makes the stream unusable (not a JSON object, an `error`, data after `[DONE]`).
    fn accept<'a>(&mut self, data: &'a str) -> Option<RawChunk<'a>> {
        if self.done || self.failed {
            self.failed = true;
            return None;
        }
        if data.trim() == "[DONE]" {
            self.done = true;
            return None;
        }
        match RawChunk::parse(data) {
            Some(chunk) if chunk.get("error").is_none() => Some(chunk),
            _ => {
                self.failed = true;
                None
            }
        }
    }

    /// A chunk did not have the shape its stream promises: the stream is not stored.
    fn fail(&mut self) {
        self.failed = true;
    }

    /// `[DONE]` or a failure was seen: nothing after it can change the outcome.
    fn ended(&self) -> bool {
        self.done || self.failed
    }

    /// The stream ended with `[DONE]` and nothing went wrong.
    fn clean(&self) -> bool {
        self.done && !self.failed
    }
}

/// Reads a chunk stream for its assembler: the gate, the header fields every chunk repeats,
/// and the usage chunk's `usage`.
#[derive(Debug, Default)]
pub struct ChunkReader {
    gate: ChunkGate,
    header: RawHeader,
    usage: Option<Value>,
}

impl ChunkReader {
    /// The choices of the chunk in `data`, its `header_keys` and usage kept. None for
    /// `[DONE]` and for what spoils the stream (see `ChunkGate::accept`, and choices of
    /// another shape than `C`).
    pub fn choices<'a, C: Deserialize<'a>>(
        &mut self,
        data: &'a str,
        header_keys: &[&'static str],
    ) -> Vec<C> {
        let Some(chunk) = self.gate.accept(data) else {
            return Vec::new();
        };
        self.header.update(&chunk, header_keys);
        match (
            chunk.decode::<Value>("usage"),
            chunk.decode::<Vec<C>>("choices"),
        ) {
            (Ok(usage), Ok(choices)) => {
                if usage.is_some() {
                    self.usage = usage;
                }
                choices.unwrap_or_default()
            }
            _ => {
                self.gate.fail();
                Vec::new()
            }
        }
    }

    /// `[DONE]` or a failure was seen: nothing after it can change the outcome.
    pub fn ended(&self) -> bool {
        self.gate.ended()
    }

    /// The stream ended with `[DONE]` and nothing went wrong.
    pub fn clean(&self) -> bool {
        self.gate.clean()
    }

    /// The assembled answer: the header fields, `object`, the `choices` and the usage.
    pub fn answer(self, object: &str, choices: Vec<Value>) -> Value {
        let mut answer = self.header.into_map();
        answer.insert("object".into(), object.into());
        answer.insert("choices".into(), Value::Array(choices));
        if let Some(usage) = self.usage {
            answer.insert("usage".into(), usage);
        }
        Value::Object(answer)
    }
}

/// An answer (or chunk) that reports an error. Only a non-null `error` counts: every
/// Responses API object carries `"error": null` when all went well.
pub fn carries_error(answer: &Value) -> bool {
    answer.as_object().is_some_and(has_error)
}

fn has_error(object: &Map<String, Value>) -> bool {
    object.get("error").is_some_and(|error| !error.is_null())
}

/// Copies the non-null `keys` of `from` into `to`.
pub fn copy_fields(from: &Map<String, Value>, to: &mut Map<String, Value>, keys: &[&str]) {
    for key in keys {
        if let Some(value) = from.get(*key).filter(|v| !v.is_null()) {
            to.insert((*key).into(), value.clone());
        }
    }
}

/// The header every chunk of a replayed chunk stream shares, and the events that close it.
pub struct ChunkWriter {
    header: Map<String, Value>,
    include_usage: bool,
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
        }
    }

    /// One chunk carrying `choice`.
    pub fn choice(&self, choice: Value) -> Bytes {
        let mut chunk = self.header.clone();
        chunk.insert("choices".into(), json!([choice]));
        if self.include_usage {
            // OpenAI marks every chunk but the last with `usage: null` when usage is asked for.
            chunk.insert("usage".into(), Value::Null);
        }
        data_event(&Value::Object(chunk).to_string())
    }

    /// Adds the closing events to `steps`: the usage chunk (when asked for; rendered from the
    /// stored answer's `usage`) and `[DONE]`.
    pub fn finish(steps: &mut Steps<ChunkWriter>, include_usage: bool) {
        if include_usage {
            steps.event(|stored, out| {
                let mut chunk = out.header.clone();
                chunk.insert("choices".into(), json!([]));
                let usage = stored.get("usage").cloned().unwrap_or(Value::Null);
                chunk.insert("usage".into(), usage);
                data_event(&Value::Object(chunk).to_string())
            });
        }
        steps.event(|_, _| data_event("[DONE]"));
    }
}

/// The `choices` array of a stored answer (empty if missing).
pub fn stored_choices(stored: &Value) -> &[Value] {
    stored
        .get("choices")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_accepts_chunks_until_done() {
        let mut gate = ChunkGate::default();
        assert!(gate.accept(r#"{"id":"x"}"#).is_some());
        assert!(gate.accept("[DONE]").is_none());
        assert!(gate.ended() && gate.clean());
        assert!(gate.accept(r#"{"id":"late"}"#).is_none());
        assert!(!gate.clean(), "data after [DONE] spoils the stream");
    }

    #[test]
    fn gate_accepts_a_null_error() {
        let mut gate = ChunkGate::default();
        assert!(gate.accept(r#"{"id":"x","error":null}"#).is_some());
        gate.accept("[DONE]");
        assert!(gate.clean());
    }

    #[test]
    fn gate_fails_on_errors_and_garbage() {
        for bad in [r#"{"error":{"message":"x"}}"#, "{not json", "[1]"] {
            let mut gate = ChunkGate::default();
            assert!(gate.accept(bad).is_none());
            gate.accept("[DONE]");
            assert!(!gate.clean(), "{bad}");
        }
    }
}
