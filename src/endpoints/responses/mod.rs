//! `POST /v1/responses`: the Responses API, cached with the same two tiers as chat.
//!
//! The scope holds the model, instructions, every input item but the last user message,
//! tools, tool choice, text format, reasoning and sampling settings, and whether the upstream
//! stores the response. Requests that depend on server-side state bypass:
//! `previous_response_id`, `conversation`, `background` and stored `prompt` templates.
//!
//! A response the upstream stored (`store` true or absent) is served with the ids the upstream
//! gave it, so `previous_response_id` and `GET /v1/responses/{id}` keep working after a hit:
//! the response exists upstream, in the organization of the tenant that made it. With
//! `cache.shared` other organizations could not retrieve it, so stored responses then bypass
//! unless `cache.cache_stored_responses` says the apps never refer back to response ids.
//!
//! - `stream`: assembling the typed SSE events and replaying them

pub mod stream;

use std::sync::Arc;

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use crate::cache::Lookup;
use crate::cache::Partition;
use crate::cache::key::{KeyBuilder, scope_and_exact};
use crate::flow::{Assembler, Endpoint, Plan, beyond_text, plan_as};
use crate::replay::lazy_replay::Replay;

/// Every field of a Responses request that deja knows; unknown ones land in `other` (scope).
#[derive(Debug, Default, Deserialize)]
struct ResponsesRequest {
    model: Option<Value>,
    input: Option<Value>,
    instructions: Option<Value>,
    include: Option<Value>,
    max_output_tokens: Option<Value>,
    max_tool_calls: Option<Value>,
    parallel_tool_calls: Option<Value>,
    reasoning: Option<Value>,
    temperature: Option<Value>,
    text: Option<Value>,
    tool_choice: Option<Value>,
    tools: Option<Value>,
    top_logprobs: Option<Value>,
    top_p: Option<Value>,
    truncation: Option<Value>,
    // Server-side state: bypass when present.
    background: Option<Value>,
    conversation: Option<Value>,
    previous_response_id: Option<Value>,
    prompt: Option<Value>,
    store: Option<Value>,
    // Do not change the answer:
    stream: Option<Value>,
    #[allow(dead_code)]
    stream_options: Option<Value>,
    #[allow(dead_code)]
    metadata: Option<Value>,
    #[allow(dead_code)]
    user: Option<Value>,
    #[allow(dead_code)]
    safety_identifier: Option<Value>,
    #[allow(dead_code)]
    prompt_cache_key: Option<Value>,
    #[allow(dead_code)]
    service_tier: Option<Value>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

impl ResponsesRequest {
    fn plan(self, partition: &Partition, cache_stored: bool) -> Plan {
        let ResponsesRequest {
            model,
            input,
            instructions,
            include,
            max_output_tokens,
            max_tool_calls,
            parallel_tool_calls,
            reasoning,
            temperature,
            text,
            tool_choice,
            tools,
            top_logprobs,
            top_p,
            truncation,
            background,
            conversation,
            previous_response_id,
            prompt,
            store,
            stream,
            stream_options: _,
            metadata: _,
            user: _,
            safety_identifier: _,
            prompt_cache_key: _,
            service_tier: _,
            other,
        } = self;
        let stream = stream.as_ref().and_then(Value::as_bool).unwrap_or(false);
        let bypass = |reason| Plan::Bypass { reason, stream };
        let present = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
        if present(&previous_response_id) {
            return bypass("previous_response_id");
        }
        if present(&conversation) {
            return bypass("conversation");
        }
        if background.as_ref().and_then(Value::as_bool) == Some(true) {
            return bypass("background");
        }
        if present(&prompt) {
            return bypass("stored_prompt");
        }
        // Upstream stores responses unless told `store: false`.
        let stored_upstream = store.as_ref().and_then(Value::as_bool) != Some(false);
        if stored_upstream && !cache_stored {
            return bypass("store");
        }
        let Some(Value::String(model)) = model else {
            return bypass("no_model");
        };
        let (earlier, last) = match input {
            Some(Value::String(text)) => (Vec::new(), Value::String(text)),
            Some(Value::Array(mut items)) => match items.pop() {
                Some(last) => (items, last),
                None => return bypass("no_input"),
            },
            _ => return bypass("no_input"),
        };

        let mut scope = KeyBuilder::new("responses");
        scope
            .part(&partition.tenant)
            .part(&partition.namespace)
            .part(&model)
            .json("input", &Value::Array(earlier))
            .opt_json("instructions", &instructions)
            .opt_json("include", &include)
            .opt_json("max_output_tokens", &max_output_tokens)
            .opt_json("max_tool_calls", &max_tool_calls)
            .opt_json("parallel_tool_calls", &parallel_tool_calls)
            .opt_json("reasoning", &reasoning)
            .opt_json("temperature", &temperature)
            .opt_json("text", &text)
            .opt_json("tool_choice", &tool_choice)
            .opt_json("tools", &tools)
            .opt_json("top_logprobs", &top_logprobs)
            .opt_json("top_p", &top_p)
            .opt_json("truncation", &truncation);
        let semantic_text = user_text(&last);
        // As for chat: what the last message carries besides its text must match exactly.
        if semantic_text.is_some()
            && let Some(extra) = beyond_text(&last, &["role", "type"])
        {
            scope.json("last_input", &extra);
        }
        if stored_upstream {
            // A hit then carries an id the upstream knows; one stored with `store: false`
            // could not serve it.
            scope.part("stored upstream");
        }
        let (scope, exact) = scope_and_exact(scope, &other, &last);
        Plan::Cache(Lookup {
            scope,
            exact,
            semantic_text,
            model,
            stream,
            include_usage: false,
        })
    }
}

/// The text of the last input when it is a user message made only of text.
fn user_text(item: &Value) -> Option<String> {
    let text = match item {
        Value::String(text) => text.clone(),
        Value::Object(item) => {
            if item.get("role").and_then(Value::as_str) != Some("user")
                || item
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("message")
                    != "message"
            {
                return None;
            }
            match item.get("content")? {
                Value::String(text) => text.clone(),
                Value::Array(parts) => {
                    let mut texts = Vec::with_capacity(parts.len());
                    for part in parts {
                        if part.get("type").and_then(Value::as_str) != Some("input_text") {
                            return None;
                        }
                        texts.push(part.get("text")?.as_str()?);
                    }
                    texts.join("\n")
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    let trimmed = text.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

/// The Responses endpoint; `cache_stored`: cache responses the upstream stores (off only for
/// `cache.shared` without `cache.cache_stored_responses`).
pub struct Responses {
    pub cache_stored: bool,
}

pub static RESPONSES: Responses = Responses {
    cache_stored: false,
};
pub static RESPONSES_CACHING_STORED: Responses = Responses { cache_stored: true };

impl Endpoint for Responses {
    fn name(&self) -> crate::wire::endpoint::EndpointName {
        crate::wire::endpoint::EndpointName::Responses
    }

    fn plan(&self, body: Value, partition: &Partition) -> Plan {
        plan_as(body, |request: ResponsesRequest| {
            request.plan(partition, self.cache_stored)
        })
    }

    fn assembler(&self) -> Box<dyn Assembler> {
        Box::<stream::ResponseAssembler>::default()
    }

    fn render_json(&self, stored: &Value) -> Bytes {
        Bytes::from(stream::as_served(stored).to_string())
    }

    fn render_stream(&self, stored: Arc<Value>, _include_usage: bool) -> Replay {
        stream::render_events(stream::into_served(stored))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(body: Value) -> Plan {
        RESPONSES.plan(body, &Partition::of_tenant("t"))
    }

    fn lookup(body: Value) -> Lookup {
        match RESPONSES_CACHING_STORED.plan(body, &Partition::of_tenant("t")) {
            Plan::Cache(lookup) => lookup,
            Plan::Bypass { reason, .. } => panic!("bypass: {reason}"),
        }
    }

    fn base() -> Value {
        json!({"model": "gpt-4.1-mini", "instructions": "Be brief.", "store": false,
               "input": [{"role": "user", "content": "What is the capital of France?"}]})
    }

    #[test]
    fn stateful_requests_bypass() {
        for (field, value) in [
            ("previous_response_id", json!("resp_1")),
            ("conversation", json!("conv_1")),
            ("background", json!(true)),
            ("prompt", json!({"id": "pmpt_1"})),
            ("store", json!(true)),
        ] {
            let mut body = base();
            body[field] = value;
            assert!(matches!(plan(body), Plan::Bypass { .. }), "{field}");
        }
        let mut absent = base();
        absent.as_object_mut().unwrap().remove("store");
        assert!(
            matches!(
                plan(absent),
                Plan::Bypass {
                    reason: "store",
                    ..
                }
            ),
            "store defaults to true upstream"
        );
    }

    #[test]
    fn stored_and_unstored_responses_have_their_own_scopes() {
        let unstored = lookup(base());
        let mut stored = base();
        stored["store"] = json!(true);
        let stored = lookup(stored);
        let mut absent = base();
        absent.as_object_mut().unwrap().remove("store");
        assert_ne!(stored.scope, unstored.scope);
        assert_eq!(lookup(absent).scope, stored.scope, "store defaults to true");
    }

    #[test]
    fn scope_and_semantic_text() {
        let a = lookup(base());
        assert_eq!(
            a.semantic_text.as_deref(),
            Some("What is the capital of France?")
        );
        let mut other_instructions = base();
        other_instructions["instructions"] = json!("Be verbose.");
        assert_ne!(lookup(other_instructions).scope, a.scope);
        let mut other_format = base();
        other_format["text"] = json!({"format": {"type": "json_object"}});
        assert_ne!(lookup(other_format).scope, a.scope);
        let mut reworded = base();
        reworded["input"][0]["content"] = json!("France's capital?");
        let reworded = lookup(reworded);
        assert_eq!(reworded.scope, a.scope);
        assert_ne!(reworded.exact, a.exact);
        let mut tagged = base();
        tagged["input"][0]["future_field"] = json!(true);
        assert_ne!(
            lookup(tagged).scope,
            a.scope,
            "the last input beyond its text"
        );
        let mut typed = base();
        typed["input"][0]["type"] = json!("message");
        assert_eq!(
            lookup(typed).scope,
            a.scope,
            "`type: message` is the default"
        );
        let mut string_input = base();
        string_input["input"] = json!("Hi there");
        assert_eq!(
            lookup(string_input).semantic_text.as_deref(),
            Some("Hi there")
        );
        let mut tool_output = base();
        tool_output["input"] =
            json!([{"type": "function_call_output", "call_id": "c", "output": "42"}]);
        assert_eq!(lookup(tool_output).semantic_text, None);
    }
}
