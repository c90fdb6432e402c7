//! `POST /v1/completions` (legacy text completions): the prompt plays the part of the last user
//! message; every other field that shapes the text is in the scope.

use std::sync::Arc;

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::cache::Lookup;
use crate::cache::Partition;
use crate::cache::key::{KeyBuilder, scope_and_exact};
use crate::flow::{Assembler, Endpoint, Plan, plan_as, stream_flags};
use crate::replay::chunks::{ChunkReader, ChunkWriter, stored_choices};
use crate::replay::lazy_replay::{Replay, Steps, cloned_at};
use crate::replay::text::fresh_id;

/// Every field of a legacy completions request; unknown ones land in `other` (scope).
#[derive(Debug, Default, Deserialize)]
struct CompletionRequest {
    model: Option<Value>,
    prompt: Option<Value>,
    best_of: Option<Value>,
    echo: Option<Value>,
    frequency_penalty: Option<Value>,
    logit_bias: Option<Value>,
    logprobs: Option<Value>,
    max_tokens: Option<Value>,
    n: Option<Value>,
    presence_penalty: Option<Value>,
    seed: Option<Value>,
    stop: Option<Value>,
    suffix: Option<Value>,
    temperature: Option<Value>,
    top_p: Option<Value>,
    // Do not change the text:
    stream: Option<Value>,
    stream_options: Option<Value>,
    #[allow(dead_code)]
    user: Option<Value>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

impl CompletionRequest {
    fn plan(self, partition: &Partition) -> Plan {
        let CompletionRequest {
            model,
            prompt,
            best_of,
            echo,
            frequency_penalty,
            logit_bias,
            logprobs,
            max_tokens,
            n,
            presence_penalty,
            seed,
            stop,
            suffix,
            temperature,
            top_p,
            stream,
            stream_options,
            user: _,
            other,
        } = self;
        let (stream, include_usage) = stream_flags(&stream, &stream_options);
        let bypass = |reason| Plan::Bypass { reason, stream };
        let Some(Value::String(model)) = model else {
            return bypass("no_model");
        };
        // One prompt only: a batch answers several prompts in one response.
        let prompt = match prompt {
            Some(Value::Array(mut items)) if items.len() == 1 => items.remove(0),
            Some(Value::Array(_)) => return bypass("prompt_batch"),
            Some(prompt) => prompt,
            None => return bypass("no_prompt"),
        };
        if n.as_ref().is_some_and(|n| n.as_u64() != Some(1))
            || best_of.as_ref().is_some_and(|b| b.as_u64() != Some(1))
        {
            return bypass("n_not_1");
        }
        let mut scope = KeyBuilder::new("completions");
        scope
            .part(&partition.tenant)
            .part(&partition.namespace)
            .part(&model)
            .opt_json("echo", &echo)
            .opt_json("frequency_penalty", &frequency_penalty)
            .opt_json("logit_bias", &logit_bias)
            .opt_json("logprobs", &logprobs)
            .opt_json("max_tokens", &max_tokens)
            .opt_json("presence_penalty", &presence_penalty)
            .opt_json("seed", &seed)
            .opt_json("stop", &stop)
            .opt_json("suffix", &suffix)
            .opt_json("temperature", &temperature)
            .opt_json("top_p", &top_p);
        let (scope, exact) = scope_and_exact(scope, &other, &prompt);
        let semantic_text = prompt
            .as_str()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from);
        Plan::Cache(Lookup {
            scope,
            exact,
            semantic_text,
            model,
            stream,
            include_usage,
        })
    }
}

pub struct Completions;

impl Endpoint for Completions {
    fn name(&self) -> crate::wire::endpoint::EndpointName {
        crate::wire::endpoint::EndpointName::Completions
    }

    fn plan(&self, body: Value, partition: &Partition) -> Plan {
        plan_as(body, |request: CompletionRequest| request.plan(partition))
    }

    fn assembler(&self) -> Box<dyn Assembler> {
        Box::<CompletionAssembler>::default()
    }

    fn render_json(&self, stored: &Value) -> Bytes {
        let mut completion = stored.clone();
        completion["id"] = json!(fresh_id("cmpl-", 29));
        Bytes::from(completion.to_string())
    }

    fn render_json_text(&self, stored: &str) -> Option<Bytes> {
        crate::endpoints::chat::replay::render_json_text(stored, &fresh_id("cmpl-", 29))
    }

    fn render_stream(&self, stored: Arc<Value>, include_usage: bool) -> Replay {
        render_stream(stored, &fresh_id("cmpl-", 29), include_usage)
    }
}

/// Top-level fields every chunk repeats.
const HEADER_KEYS: &[&str] = &["id", "created", "model", "system_fingerprint"];

/// What a chunk's choice contributes (a JSON `null` reads as `None`).
#[derive(Deserialize)]
struct TextChoice {
    index: Option<Value>,
    text: Option<Value>,
    logprobs: Option<Value>,
    finish_reason: Option<Value>,
}

/// Collects `text_completion` chunks into one `text_completion`.
#[derive(Default)]
struct CompletionAssembler {
    reader: ChunkReader,
    choices: BTreeMap<u64, (String, Option<Value>, Vec<Value>)>,
}

impl Assembler for CompletionAssembler {
    fn push(&mut self, data: &str) {
        for choice in self.reader.choices::<TextChoice>(data, HEADER_KEYS) {
            let index = choice.index.as_ref().and_then(Value::as_u64).unwrap_or(0);
            let (text, finish, logprobs) = self.choices.entry(index).or_default();
            if let Some(Value::String(more)) = &choice.text {
                text.push_str(more);
            }
            if choice.finish_reason.is_some() {
                *finish = choice.finish_reason;
            }
            logprobs.extend(choice.logprobs);
        }
    }

    fn ended(&self) -> bool {
        self.reader.ended()
    }

    fn finish(self: Box<Self>) -> Option<Value> {
        if !self.reader.clean() || self.choices.is_empty() {
            return None;
        }
        let mut choices = Vec::new();
        for (index, (text, finish, logprobs)) in self.choices {
            choices.push(json!({
                "text": text,
                "index": index,
                "logprobs": merge_logprobs(logprobs),
                "finish_reason": finish?,
            }));
        }
        Some(self.reader.answer("text_completion", choices))
    }
}

/// Legacy logprobs are parallel arrays (`tokens`, `token_logprobs`, ...): concatenate them.
fn merge_logprobs(parts: Vec<Value>) -> Value {
    let mut merged = Map::new();
    for part in parts {
        let Value::Object(part) = part else { continue };
        for (key, value) in part {
            match (merged.get_mut(&key), value) {
                (Some(Value::Array(existing)), Value::Array(more)) => existing.extend(more),
                (_, value) => {
                    merged.insert(key, value);
                }
            }
        }
    }
    if merged.is_empty() {
        Value::Null
    } else {
        Value::Object(merged)
    }
}

/// The stored completion as SSE chunks, each rendered when the client reads on. With
/// logprobs (parallel arrays per token) a choice's text goes out whole.
pub(crate) fn render_stream(stored: Arc<Value>, id: &str, include_usage: bool) -> Replay {
    let writer = ChunkWriter::new(
        &stored,
        id,
        "text_completion",
        &HEADER_KEYS[1..],
        include_usage,
    );
    let mut steps = Steps::new(writer);
    for (position, choice) in stored_choices(&stored).iter().enumerate() {
        let index = choice.get("index").cloned().unwrap_or(json!(0));
        let at = format!("/choices/{position}");
        let has_logprobs = choice.get("logprobs").is_some_and(|lp| !lp.is_null());
        let logprobs_at = format!("{at}/logprobs");
        let part = index.clone();
        let text = move |stored: &Value, out: &mut ChunkWriter, piece: &str, _| {
            let logprobs = cloned_at(stored, &logprobs_at);
            out.choice(
                json!({"text": piece, "index": part, "logprobs": logprobs, "finish_reason": null}),
            )
        };
        if has_logprobs {
            steps.whole(format!("{at}/text"), text);
        } else {
            steps.pieces(format!("{at}/text"), text);
        }
        let finish = choice
            .get("finish_reason")
            .cloned()
            .unwrap_or(json!("stop"));
        steps.event(move |_, out| {
            out.choice(
                json!({"text": "", "index": index, "logprobs": null, "finish_reason": finish}),
            )
        });
    }
    ChunkWriter::finish(&mut steps, include_usage);
    steps.over(stored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::sse::SseParser;

    fn partition() -> Partition {
        Partition::of_tenant("t")
    }

    fn lookup(body: Value) -> Option<Lookup> {
        match Completions.plan(body, &partition()) {
            Plan::Cache(lookup) => Some(lookup),
            Plan::Bypass { .. } => None,
        }
    }

    #[test]
    fn prompt_is_the_question_and_the_rest_is_scope() {
        let a = lookup(json!({"model": "m", "prompt": "Say hi", "max_tokens": 5})).unwrap();
        let b = lookup(json!({"model": "m", "prompt": ["Say hi"], "max_tokens": 5})).unwrap();
        let c = lookup(json!({"model": "m", "prompt": "Say bye", "max_tokens": 5})).unwrap();
        let d = lookup(json!({"model": "m", "prompt": "Say hi", "max_tokens": 6})).unwrap();
        assert_eq!(a.exact, b.exact, "a one-element array is the same prompt");
        assert_eq!(a.scope, c.scope);
        assert_ne!(a.exact, c.exact);
        assert_ne!(a.scope, d.scope);
        assert_eq!(a.semantic_text.as_deref(), Some("Say hi"));
    }

    #[test]
    fn batches_and_multiple_choices_bypass() {
        assert!(lookup(json!({"model": "m", "prompt": ["a", "b"]})).is_none());
        assert!(lookup(json!({"model": "m", "prompt": "a", "n": 2})).is_none());
        assert!(lookup(json!({"model": "m", "prompt": "a", "best_of": 3})).is_none());
        let tokens = lookup(json!({"model": "m", "prompt": [[1, 2, 3]]})).unwrap();
        assert_eq!(tokens.semantic_text, None, "token prompts are exact-only");
    }

    #[test]
    fn stream_round_trip() {
        let stored = json!({
            "id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"text": "Once upon a time there was a cache that remembered everything.",
                         "index": 0, "logprobs": null, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 12, "total_tokens": 13}
        });
        let mut parser = SseParser::new();
        let mut assembler: Box<dyn Assembler> = Completions.assembler();
        let events: Vec<Bytes> = Completions
            .render_stream(Arc::new(stored.clone()), true)
            .collect();
        assert!(events.len() > 3);
        for bytes in &events {
            for event in parser.push(bytes) {
                assembler.push(&event.data);
            }
        }
        let mut rebuilt = assembler.finish().expect("complete");
        rebuilt["id"] = json!("cmpl-1");
        assert_eq!(rebuilt, stored);
    }
}
