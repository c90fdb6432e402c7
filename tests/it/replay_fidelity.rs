//! A hit carries the same fields and values as the miss it was stored from, whichever form
//! (JSON or stream) each of them takes: tool calls and refusals keep `content: null`, logprobs
//! keep their `refusal: null`, streamed audio stays decodable, and a Responses stream hit
//! replays every event type the miss streamed (reasoning summaries included).

use crate::support::fake_upstream::{REFUSAL, base64, fake_audio};
use crate::support::proxy::{Harness, KEY_A, Reply, ask};
use serde_json::{Map, Value, json};

async fn chat(h: &Harness, namespace: &str, body: &Value) -> Reply {
    let response = h
        .chat_with(KEY_A, &[("x-deja-namespace", namespace)], body)
        .await;
    Reply::read(response).await
}

fn streaming(body: &Value) -> Value {
    let mut body = body.clone();
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    body
}

/// What a client (like the SDK's stream accumulator) rebuilds from a chat stream: each delta
/// field as first seen (a null included), strings concatenated, tool calls merged by index,
/// logprob lists extended.
fn accumulate(chunks: &[Value]) -> Value {
    let mut completion = Map::new();
    let mut choices: Vec<Value> = Vec::new();
    for chunk in chunks {
        for key in ["id", "created", "model", "system_fingerprint", "usage"] {
            if let Some(value) = chunk.get(key).filter(|v| !v.is_null()) {
                completion.insert(key.into(), value.clone());
            }
        }
        for choice in chunk["choices"].as_array().into_iter().flatten() {
            let index = choice["index"].as_u64().unwrap() as usize;
            if choices.len() <= index {
                choices.resize(index + 1, json!({"message": {}, "logprobs": null}));
            }
            let slot = &mut choices[index];
            slot["index"] = json!(index);
            merge(&mut slot["message"], &choice["delta"]);
            if !choice["logprobs"].is_null() {
                if slot["logprobs"].is_null() {
                    slot["logprobs"] = json!({});
                }
                merge(&mut slot["logprobs"], &choice["logprobs"]);
            }
            if !choice["finish_reason"].is_null() {
                slot["finish_reason"] = choice["finish_reason"].clone();
            }
        }
    }
    completion.insert("choices".into(), Value::Array(choices));
    Value::Object(completion)
}

fn merge(target: &mut Value, delta: &Value) {
    let (Value::Object(target), Value::Object(delta)) = (target, delta) else {
        return;
    };
    for (key, value) in delta {
        match (target.get_mut(key), value) {
            (None, value) => {
                target.insert(key.clone(), value.clone());
            }
            (Some(_), Value::Null) => {}
            (Some(Value::String(have)), Value::String(more)) if key != "id" => have.push_str(more),
            (Some(Value::Array(have)), Value::Array(more)) if key == "tool_calls" => {
                for call in more {
                    match have.iter_mut().find(|c| c["index"] == call["index"]) {
                        Some(existing) => merge(existing, call),
                        None => have.push(call.clone()),
                    }
                }
            }
            (Some(Value::Array(have)), Value::Array(more)) => have.extend(more.iter().cloned()),
            (Some(have @ Value::Object(_)), Value::Object(_)) => merge(have, value),
            (Some(have), value) => *have = value.clone(),
        }
    }
}

/// A completion without what differs between two upstream calls for the same question (ids,
/// creation time), and with streamed tool calls' `index` dropped, as JSON has none.
fn comparable(completion: &Value) -> Value {
    let mut completion = completion.clone();
    completion["id"] = Value::Null;
    completion["created"] = Value::Null;
    completion.as_object_mut().unwrap().remove("object");
    for choice in completion["choices"].as_array_mut().into_iter().flatten() {
        let message = &mut choice["message"];
        let calls = message.get_mut("tool_calls").and_then(Value::as_array_mut);
        for call in calls.into_iter().flatten() {
            call["id"] = Value::Null;
            call.as_object_mut().unwrap().remove("index");
        }
        if message.get("audio").is_some() {
            message["audio"]["id"] = Value::Null;
        }
    }
    completion
}

fn with_tools(mut body: Value) -> Value {
    body["tools"] = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object"}}}]);
    body
}

fn with_logprobs(mut body: Value) -> Value {
    body["logprobs"] = json!(true);
    body
}

/// The three answers whose `content` is not plain text, or that carry logprobs.
fn cases() -> Vec<(&'static str, Value)> {
    vec![
        (
            "tool call",
            with_tools(ask("What is the weather in Paris?")),
        ),
        ("refusal", with_logprobs(ask("Please refuse this request."))),
        ("text with logprobs", with_logprobs(ask("Name a colour."))),
    ]
}

#[tokio::test]
async fn a_stream_hit_rebuilds_what_the_stream_miss_did() {
    let h = Harness::start().await;
    h.upstream.set_deterministic(true);
    for (what, body) in cases() {
        let miss = chat(&h, "stream", &streaming(&body)).await;
        assert_eq!(miss.cache_status(), "miss", "{what}");
        let hit = chat(&h, "stream", &streaming(&body)).await;
        assert_eq!(hit.cache_status(), "hit", "{what}");
        let (miss, hit) = (miss.chunks(), hit.chunks());
        assert_eq!(
            hit[0]["choices"][0]["delta"]["content"], miss[0]["choices"][0]["delta"]["content"],
            "{what}: the opening delta's content"
        );
        let (mut miss, mut hit) = (accumulate(&miss), accumulate(&hit));
        miss["id"] = Value::Null;
        hit["id"] = Value::Null;
        assert_eq!(hit, miss, "{what}");
    }
}

#[tokio::test]
async fn a_json_hit_from_a_stored_stream_equals_a_json_miss() {
    let h = Harness::start().await;
    h.upstream.set_deterministic(true);
    for (what, body) in cases() {
        chat(&h, "stream-first", &streaming(&body)).await;
        let hit = chat(&h, "stream-first", &body).await;
        assert_eq!(hit.cache_status(), "hit", "{what}");
        let miss = chat(&h, "json-first", &body).await;
        assert_eq!(miss.cache_status(), "miss", "{what}");
        assert_eq!(comparable(&hit.json()), comparable(&miss.json()), "{what}");
    }
    let refusal = chat(&h, "json-first", &cases()[1].1).await.json();
    assert_eq!(refusal["choices"][0]["message"]["refusal"], REFUSAL);
    assert_eq!(refusal["choices"][0]["message"]["content"], Value::Null);
}

#[tokio::test]
async fn a_stream_hit_from_a_stored_json_answer_equals_a_stream_miss() {
    let h = Harness::start().await;
    h.upstream.set_deterministic(true);
    for (what, body) in cases() {
        chat(&h, "json-first", &body).await;
        let hit = chat(&h, "json-first", &streaming(&body)).await;
        assert_eq!(hit.cache_status(), "hit", "{what}");
        let miss = chat(&h, "stream-first", &streaming(&body)).await;
        assert_eq!(miss.cache_status(), "miss", "{what}");
        assert_eq!(
            comparable(&accumulate(&hit.chunks())),
            comparable(&accumulate(&miss.chunks())),
            "{what}"
        );
    }
}

#[tokio::test]
async fn streamed_audio_is_served_as_json_whose_data_decodes() {
    let h = Harness::start().await;
    h.upstream.set_deterministic(true);
    let mut body = ask("Say hello to the listeners of the morning show.");
    body["modalities"] = json!(["text", "audio"]);
    body["audio"] = json!({"voice": "alloy", "format": "pcm16"});
    let live = chat(&h, "audio", &streaming(&body)).await;
    assert_eq!(live.cache_status(), "miss");
    let hit = chat(&h, "audio", &body).await;
    assert_eq!(hit.cache_status(), "hit");
    let audio = &hit.json()["choices"][0]["message"]["audio"];
    let transcript = audio["transcript"].as_str().unwrap();
    assert_eq!(audio["data"], base64(&fake_audio(transcript)));

    let miss = chat(&h, "audio-json", &body).await;
    assert_eq!(miss.cache_status(), "miss");
    assert_eq!(comparable(&hit.json()), comparable(&miss.json()));
}

// === responses ===

const RESPONSES: &str = "/v1/responses";

async fn respond(h: &Harness, body: &Value) -> Reply {
    let request = h
        .client
        .post(h.url(RESPONSES))
        .bearer_auth(KEY_A)
        .json(body);
    Reply::read(request.send().await.expect("proxy answers")).await
}

fn response_request(question: &str) -> Value {
    json!({"model": "o4-mini", "store": false, "reasoning": {"effort": "low", "summary": "auto"},
           "input": [{"role": "user", "content": question}]})
}

#[tokio::test]
async fn a_response_object_with_a_null_error_is_cached() {
    let h = Harness::start().await;
    let body = response_request("What is the capital of France?");
    let miss = respond(&h, &body).await;
    assert_eq!(miss.cache_status(), "miss");
    assert_eq!(miss.json()["error"], Value::Null, "as the real API answers");
    assert!(miss.json().as_object().unwrap().contains_key("error"));
    let hit = respond(&h, &body).await;
    assert_eq!(hit.cache_status(), "hit");
    let (mut miss, mut hit) = (miss.json(), hit.json());
    for response in [&mut miss, &mut hit] {
        response["id"] = Value::Null;
        for item in response["output"].as_array_mut().unwrap() {
            item["id"] = Value::Null;
        }
    }
    assert_eq!(hit, miss, "the same fields and values, but for the ids");
}

/// Event types in order, repeats of one type (deltas) collapsed.
fn event_kinds(events: &[(String, Value)]) -> Vec<String> {
    let mut kinds: Vec<String> = events.iter().map(|(kind, _)| kind.clone()).collect();
    kinds.dedup();
    kinds
}

fn joined(events: &[(String, Value)], kind: &str) -> String {
    events
        .iter()
        .filter(|(name, _)| name == kind)
        .map(|(_, data)| data["delta"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_responses_stream_hit_replays_every_event_type_of_the_miss() {
    let h = Harness::start().await;
    let mut body = response_request("Why is the sky blue?");
    body["stream"] = json!(true);
    let miss = respond(&h, &body).await;
    assert_eq!(miss.cache_status(), "miss");
    let hit = respond(&h, &body).await;
    assert_eq!(hit.cache_status(), "hit");
    let (miss, hit) = (
        crate::support::sse::named_events(&miss.text),
        crate::support::sse::named_events(&hit.text),
    );
    assert!(
        event_kinds(&miss).contains(&"response.reasoning_summary_text.delta".to_string()),
        "the fake streams a reasoning summary"
    );
    assert_eq!(event_kinds(&hit), event_kinds(&miss));
    for kind in [
        "response.reasoning_summary_text.delta",
        "response.output_text.delta",
    ] {
        assert_eq!(joined(&hit, kind), joined(&miss, kind), "{kind}");
    }
    let same_place = |events: &[(String, Value)]| -> Vec<Value> {
        events
            .iter()
            .filter(|(kind, _)| kind.starts_with("response.reasoning_summary_part"))
            .map(|(kind, data)| json!([kind, data["summary_index"], data["part"]]))
            .collect()
    };
    assert_eq!(same_place(&hit), same_place(&miss));
}
