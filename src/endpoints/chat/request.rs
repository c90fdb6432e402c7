//! Reading a chat-completions request: which fields shape the answer (and so belong in the
//! cache scope), which do not, and when the request must bypass the cache.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::cache::Lookup;
use crate::cache::Partition;
use crate::cache::key::{KeyBuilder, scope_and_exact};
use crate::flow::{Plan, beyond_text, stream_flags};

/// Every field of `POST /v1/chat/completions` that deja knows. Unknown fields land in
/// `other` and are put in the scope (unknown means "may shape the answer").
#[derive(Debug, Default, Deserialize)]
pub struct ChatRequest {
    model: Option<Value>,
    messages: Option<Value>,
    audio: Option<Value>,
    frequency_penalty: Option<Value>,
    function_call: Option<Value>,
    functions: Option<Value>,
    logit_bias: Option<Value>,
    logprobs: Option<Value>,
    max_completion_tokens: Option<Value>,
    max_tokens: Option<Value>,
    modalities: Option<Value>,
    n: Option<Value>,
    parallel_tool_calls: Option<Value>,
    prediction: Option<Value>,
    presence_penalty: Option<Value>,
    reasoning_effort: Option<Value>,
    response_format: Option<Value>,
    seed: Option<Value>,
    stop: Option<Value>,
    temperature: Option<Value>,
    tool_choice: Option<Value>,
    tools: Option<Value>,
    top_logprobs: Option<Value>,
    top_p: Option<Value>,
    verbosity: Option<Value>,
    web_search_options: Option<Value>,
    // Fields below do not change the answer's content. The ignored ones are still named so
    // that they do not fall into `other` (which is part of the scope).
    stream: Option<Value>,
    stream_options: Option<Value>,
    store: Option<Value>,
    #[allow(dead_code)]
    user: Option<Value>,
    #[allow(dead_code)]
    metadata: Option<Value>,
    #[allow(dead_code)]
    service_tier: Option<Value>,
    #[allow(dead_code)]
    prompt_cache_key: Option<Value>,
    #[allow(dead_code)]
    safety_identifier: Option<Value>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

impl ChatRequest {
    /// Decides how the cache treats this request. The destructuring below is exhaustive on
    /// purpose: adding a field to `ChatRequest` does not compile until it is placed either in
    /// the scope or among the ignored fields.
    pub fn plan(self, partition: &Partition) -> Plan {
        let ChatRequest {
            model,
            messages,
            audio,
            frequency_penalty,
            function_call,
            functions,
            logit_bias,
            logprobs,
            max_completion_tokens,
            max_tokens,
            modalities,
            n,
            parallel_tool_calls,
            prediction,
            presence_penalty,
            reasoning_effort,
            response_format,
            seed,
            stop,
            temperature,
            tool_choice,
            tools,
            top_logprobs,
            top_p,
            verbosity,
            web_search_options,
            stream,
            stream_options,
            // Identify the end user or tag the request; the answer is the same without them.
            user: _,
            metadata: _,
            service_tier: _,
            prompt_cache_key: _,
            safety_identifier: _,
            store,
            other,
        } = self;

        let (stream, include_usage) = stream_flags(&stream, &stream_options);
        let bypass = |reason| Plan::Bypass { reason, stream };

        let Some(Value::String(model)) = model else {
            return bypass("no_model");
        };
        let Some(Value::Array(mut messages)) = messages else {
            return bypass("no_messages");
        };
        let Some(last) = messages.pop() else {
            return bypass("no_messages");
        };
        if !last.is_object() {
            return bypass("bad_message");
        }
        if n.as_ref().is_some_and(|n| n.as_u64() != Some(1)) {
            return bypass("n_not_1");
        }
        // `store: true` asks OpenAI to keep this completion (evals, distillation); a hit would
        // silently skip that, so such requests always go upstream.
        if store.as_ref().and_then(Value::as_bool) == Some(true) {
            return bypass("store");
        }

        let mut scope = KeyBuilder::new("chat.completions");
        scope
            .part(&partition.tenant)
            .part(&partition.namespace)
            .part(&model)
            .json("messages", &Value::Array(messages))
            .opt_json("audio", &audio)
            .opt_json("frequency_penalty", &frequency_penalty)
            .opt_json("function_call", &function_call)
            .opt_json("functions", &functions)
            .opt_json("logit_bias", &logit_bias)
            .opt_json("logprobs", &logprobs)
            .opt_json("max_completion_tokens", &max_completion_tokens)
            .opt_json("max_tokens", &max_tokens)
            .opt_json("modalities", &modalities)
            .opt_json("parallel_tool_calls", &parallel_tool_calls)
            .opt_json("prediction", &prediction)
            .opt_json("presence_penalty", &presence_penalty)
            .opt_json("reasoning_effort", &reasoning_effort)
            .opt_json("response_format", &response_format)
            .opt_json("seed", &seed)
            .opt_json("stop", &stop)
            .opt_json("temperature", &temperature)
            .opt_json("tool_choice", &tool_choice)
            .opt_json("tools", &tools)
            .opt_json("top_logprobs", &top_logprobs)
            .opt_json("top_p", &top_p)
            .opt_json("verbosity", &verbosity)
            .opt_json("web_search_options", &web_search_options);
        let semantic_text = user_text(&last);
        // A semantic hit compares only the text: the rest of the message (`name`...) must
        // match exactly. (Without semantic text the exact key holds the whole message.)
        if semantic_text.is_some()
            && let Some(extra) = beyond_text(&last, &["role"])
        {
            scope.json("last_message", &extra);
        }
        let (scope, exact) = scope_and_exact(scope, &other, &last);

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

/// The text of a user message when it is only text; `None` for other roles or for content
/// with images, audio or files (an embedding of the text alone would not capture those).
fn user_text(message: &Value) -> Option<String> {
    if message.get("role").and_then(Value::as_str) != Some("user") {
        return None;
    }
    let text = match message.get("content")? {
        Value::String(text) => text.clone(),
        Value::Array(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in parts {
                if part.get("type").and_then(Value::as_str) != Some("text") {
                    return None;
                }
                texts.push(part.get("text")?.as_str()?);
            }
            texts.join("\n")
        }
        _ => return None,
    };
    let trimmed = text.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn partition(tenant: &str) -> Partition {
        Partition::of_tenant(tenant)
    }

    fn plan(body: Value) -> Plan {
        let request: ChatRequest = serde_json::from_value(body).unwrap();
        request.plan(&partition("t1"))
    }

    fn lookup(body: Value) -> Lookup {
        match plan(body) {
            Plan::Cache(lookup) => lookup,
            Plan::Bypass { reason, .. } => panic!("unexpected bypass: {reason}"),
        }
    }

    fn base() -> Value {
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "What is the capital of France?"}
            ],
            "temperature": 0.2
        })
    }

    #[test]
    fn identical_requests_share_keys() {
        let a = lookup(base());
        let b = lookup(base());
        assert_eq!(a.exact, b.exact);
        assert_eq!(a.scope, b.scope);
        assert_eq!(
            a.semantic_text.as_deref(),
            Some("What is the capital of France?")
        );
    }

    #[test]
    fn last_message_changes_exact_not_scope() {
        let a = lookup(base());
        let mut body = base();
        body["messages"][1]["content"] = json!("Capital of France?");
        let b = lookup(body);
        assert_eq!(a.scope, b.scope);
        assert_ne!(a.exact, b.exact);
    }

    #[test]
    fn everything_that_shapes_the_answer_changes_the_scope() {
        let original = lookup(base()).scope;
        let variations = [
            ("model", json!("gpt-4o")),
            ("temperature", json!(0.3)),
            (
                "tools",
                json!([{"type": "function", "function": {"name": "f"}}]),
            ),
            ("tool_choice", json!("required")),
            ("response_format", json!({"type": "json_object"})),
            ("seed", json!(7)),
            ("max_tokens", json!(10)),
            ("stop", json!(["\n"])),
            ("logit_bias", json!({"50256": -100})),
            ("some_future_field", json!(true)),
        ];
        for (field, value) in variations {
            let mut body = base();
            body[field] = value;
            assert_ne!(lookup(body).scope, original, "{field} must be in the scope");
        }
        let mut body = base();
        body["messages"][0]["content"] = json!("You are verbose.");
        assert_ne!(lookup(body).scope, original, "system prompt");
    }

    #[test]
    fn the_last_message_beyond_its_text_is_in_the_scope() {
        let original = lookup(base()).scope;
        let mut alice = base();
        alice["messages"][1]["name"] = json!("alice");
        let mut bob = base();
        bob["messages"][1]["name"] = json!("bob");
        let (alice, bob) = (lookup(alice), lookup(bob));
        assert_ne!(alice.scope, bob.scope, "name");
        assert_ne!(alice.scope, original);
        assert_eq!(alice.semantic_text, bob.semantic_text);
        let mut reworded = base();
        reworded["messages"][1]["name"] = json!("alice");
        reworded["messages"][1]["content"] = json!("Capital of France?");
        assert_eq!(
            lookup(reworded).scope,
            alice.scope,
            "only the text may differ"
        );
    }

    #[test]
    fn fields_that_do_not_shape_the_answer_are_ignored() {
        let original = lookup(base());
        let mut body = base();
        body["user"] = json!("u-123");
        body["metadata"] = json!({"k": "v"});
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        body["temperature"] = json!(0.2000);
        let other = lookup(body);
        assert_eq!(other.exact, original.exact);
        assert!(other.stream && other.include_usage);
    }

    #[test]
    fn tenant_and_namespace_partition() {
        let request = |p: &Partition| match serde_json::from_value::<ChatRequest>(base())
            .unwrap()
            .plan(p)
        {
            Plan::Cache(lookup) => lookup.scope,
            Plan::Bypass { .. } => panic!(),
        };
        let a = request(&partition("a"));
        let b = request(&partition("b"));
        let mut namespaced = partition("a");
        namespaced.namespace = "n".into();
        assert_ne!(a, b);
        assert_ne!(a, request(&namespaced));
    }

    #[test]
    fn bypasses() {
        let mut body = base();
        body["n"] = json!(2);
        assert!(matches!(
            plan(body),
            Plan::Bypass {
                reason: "n_not_1",
                ..
            }
        ));
        let mut body = base();
        body["store"] = json!(true);
        assert!(matches!(
            plan(body),
            Plan::Bypass {
                reason: "store",
                ..
            }
        ));
        assert!(matches!(plan(json!({"messages": []})), Plan::Bypass { .. }));
        let mut body = base();
        body["n"] = json!(1);
        assert!(matches!(plan(body), Plan::Cache(_)));
    }

    #[test]
    fn semantic_text_only_for_plain_user_text() {
        let mut body = base();
        body["messages"][1]["content"] =
            json!([{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]);
        assert_eq!(lookup(body).semantic_text.as_deref(), Some("hi\nthere"));
        let mut body = base();
        body["messages"][1]["content"] = json!([{"type": "image_url", "image_url": {"url": "x"}}]);
        assert_eq!(lookup(body).semantic_text, None);
        let mut body = base();
        body["messages"][1] = json!({"role": "tool", "tool_call_id": "c", "content": "42"});
        assert_eq!(lookup(body).semantic_text, None);
    }
}
