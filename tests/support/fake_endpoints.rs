//! The fake upstream's legacy `/v1/completions` and `/v1/responses` endpoints. Declared as a
//! private child module of `fake_upstream.rs`; both honour `ChatMode`, the latency and the
//! chunk delay exactly as chat does.

use bytes::Bytes;
use http::Response;
use serde_json::{Value, json};

use super::{
    Body, ChatMode, State, begin, content_text, halves, json_response, set_request_id,
    sse_response, word_count,
};

/// The tool call arguments both chat and responses produce for a "weather" question.
const WEATHER_ARGS: &str = r#"{"city":"Paris"}"#;

// === legacy completions ===

/// `POST /v1/completions`: answers `completion {n}: {prompt}`, where `prompt` is the request's
/// `prompt` string (or the first element of an array of strings). Streams one chunk per word,
/// a `finish_reason: "stop"` chunk, an optional usage chunk, then `data: [DONE]`.
pub(super) async fn completions(state: &State, n: usize, body: &Bytes) -> Response<Body> {
    let (mode, chunk_delay, req) = match begin(state, body).await {
        Ok(begun) => begun,
        Err(resp) => return resp,
    };
    let prompt = match &req["prompt"] {
        Value::String(s) => s.as_str(),
        Value::Array(items) => items.first().and_then(Value::as_str).unwrap_or_default(),
        _ => "",
    };
    let text = format!("completion {n}: {prompt}");
    let (prompt_tokens, completion_tokens) = (word_count(prompt), word_count(&text));
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let base = json!({
        "id": format!("cmpl-fake{n}"),
        "object": "text_completion",
        "created": 1_700_000_000 + n as u64,
        "model": req["model"],
    });
    let choice = |text: &str, finish: Value| json!([{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]);

    let mut resp = if req["stream"] == json!(true) {
        let include_usage = req["stream_options"]["include_usage"] == json!(true);
        let chunk = |text: &str, finish: Value| {
            let mut obj = base.clone();
            obj["choices"] = choice(text, finish);
            if include_usage {
                obj["usage"] = Value::Null;
            }
            obj
        };
        let mut chunks: Vec<Value> = text
            .split_inclusive(' ')
            .map(|word| chunk(word, Value::Null))
            .collect();
        chunks.push(chunk("", json!("stop")));
        if include_usage {
            let mut obj = base.clone();
            obj["choices"] = json!([]);
            obj["usage"] = usage;
            chunks.push(obj);
        }
        let mut events: Vec<Bytes> = chunks
            .iter()
            .map(|c| Bytes::from(format!("data: {c}\n\n")))
            .collect();
        if mode == ChatMode::PartialStream {
            events.truncate(3);
        } else {
            events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        }
        sse_response(events, chunk_delay)
    } else {
        let mut obj = base;
        obj["choices"] = choice(&text, json!("stop"));
        obj["usage"] = usage;
        json_response(200, obj.to_string())
    };
    set_request_id(&mut resp, &format!("req_cmpl_{n}"));
    resp
}

// === responses ===

/// `POST /v1/responses`: one output item, either a `function_call` (non-empty `tools` and the
/// last input mentions "weather") or an assistant message `response {n}: {last}`. `input_tokens`
/// counts the words of `instructions` and of every input item's content. Streams the typed
/// events (`event: <type>` + `data: <json>`, numbered by `sequence_number`), no `[DONE]`.
pub(super) async fn responses(state: &State, n: usize, body: &Bytes) -> Response<Body> {
    let (mode, chunk_delay, req) = match begin(state, body).await {
        Ok(begun) => begun,
        Err(resp) => return resp,
    };
    let (last, input_words) = match &req["input"] {
        Value::String(s) => (s.clone(), word_count(s)),
        Value::Array(items) => (
            items
                .last()
                .map(|item| content_text(&item["content"]))
                .unwrap_or_default(),
            items
                .iter()
                .map(|item| word_count(&content_text(&item["content"])))
                .sum(),
        ),
        _ => (String::new(), 0),
    };
    let input_tokens = input_words + req["instructions"].as_str().map_or(0, word_count);
    let first_tool = req["tools"].as_array().and_then(|t| t.first());
    let call_name = match first_tool {
        Some(tool) if last.contains("weather") => Some(
            tool["name"]
                .as_str()
                .or(tool["function"]["name"].as_str())
                .unwrap_or_default()
                .to_owned(),
        ),
        _ => None,
    };
    let text = format!("response {n}: {last}");
    let part = json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
    let (item, output_tokens) = match &call_name {
        Some(name) => (
            json!({"id": format!("fc_fake{n}"), "type": "function_call", "status": "completed",
                "call_id": format!("call_{n}"), "name": name, "arguments": WEATHER_ARGS}),
            word_count(WEATHER_ARGS),
        ),
        None => (
            json!({"id": format!("msg_fake{n}"), "type": "message", "status": "completed",
                "role": "assistant", "content": [part]}),
            word_count(&text),
        ),
    };
    let response = json!({
        "id": format!("resp_fake{n}"),
        "object": "response",
        "created_at": 1_700_000_000 + n as u64,
        "status": "completed",
        "model": req["model"],
        "output": [item],
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        },
        "store": match &req["store"] {
            Value::Null => json!(true),
            store => store.clone(),
        },
        "instructions": req["instructions"],
    });

    let mut resp = if req["stream"] == json!(true) {
        let mut events = response_events(&response, &item, &part);
        if mode == ChatMode::PartialStream {
            events.truncate(3);
        }
        let events = events
            .into_iter()
            .enumerate()
            .map(|(seq, (kind, mut data))| {
                data["type"] = json!(kind);
                data["sequence_number"] = json!(seq);
                Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
            })
            .collect();
        sse_response(events, chunk_delay)
    } else {
        json_response(200, response.to_string())
    };
    set_request_id(&mut resp, &format!("req_resp_{n}"));
    resp
}

/// The typed events delivering `response` (whose only output is `item`), without `type` and
/// `sequence_number` yet.
fn response_events(response: &Value, item: &Value, part: &Value) -> Vec<(&'static str, Value)> {
    let mut pending = response.clone();
    pending["status"] = json!("in_progress");
    pending["output"] = json!([]);
    pending["usage"] = Value::Null;
    let mut started = item.clone();
    started["status"] = json!("in_progress");
    let is_call = item["type"] == "function_call";
    if is_call {
        started["arguments"] = json!("");
    } else {
        started["content"] = json!([]);
    }
    let item_id = &item["id"];

    let mut events = vec![
        ("response.created", json!({"response": pending})),
        ("response.in_progress", json!({"response": pending})),
        (
            "response.output_item.added",
            json!({"output_index": 0, "item": started}),
        ),
    ];
    if is_call {
        let args = item["arguments"].as_str().unwrap_or_default();
        let (a, b) = halves(args);
        for delta in [a, b] {
            events.push((
                "response.function_call_arguments.delta",
                json!({"item_id": item_id, "output_index": 0, "delta": delta}),
            ));
        }
        events.push((
            "response.function_call_arguments.done",
            json!({"item_id": item_id, "output_index": 0, "arguments": args}),
        ));
    } else {
        let at = json!({"item_id": item_id, "output_index": 0, "content_index": 0});
        let with = |fields: Value| {
            let mut obj = at.clone();
            for (k, v) in fields.as_object().into_iter().flatten() {
                obj[k] = v.clone();
            }
            obj
        };
        let mut empty = part.clone();
        empty["text"] = json!("");
        events.push(("response.content_part.added", with(json!({"part": empty}))));
        let text = part["text"].as_str().unwrap_or_default();
        for word in text.split_inclusive(' ') {
            events.push((
                "response.output_text.delta",
                with(json!({"delta": word, "logprobs": []})),
            ));
        }
        events.push((
            "response.output_text.done",
            with(json!({"text": text, "logprobs": []})),
        ));
        events.push(("response.content_part.done", with(json!({"part": part}))));
    }
    events.push((
        "response.output_item.done",
        json!({"output_index": 0, "item": item}),
    ));
    events.push(("response.completed", json!({"response": response})));
    events
}
