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

/// `POST /v1/responses`: an assistant message `response {n}: {last}`, or a `function_call`
/// (non-empty `tools` and the last input mentions "weather"), after a `reasoning` item with a
/// two-part summary when the request asks for one (`reasoning.summary`). `input_tokens`
/// counts the words of `instructions` and of every input item's content. Streams the typed
/// events (`event: <type>` + `data: <json>`, numbered by `sequence_number`), no `[DONE]`. The
/// response object has every field of the real API's, `"error": null` included. A response
/// made without `store: false` is kept for `GET /v1/responses/{id}` and `previous_response_id`;
/// an unknown `previous_response_id` is refused as the API does.
pub(super) async fn responses(state: &State, n: usize, body: &Bytes) -> Response<Body> {
    let (mode, chunk_delay, req) = match begin(state, body).await {
        Ok(begun) => begun,
        Err(resp) => return resp,
    };
    if let Some(previous) = req["previous_response_id"].as_str()
        && !state.stored_responses.lock().contains_key(previous)
    {
        let error = json!({"error": {
            "message": format!("Previous response with id '{previous}' not found."),
            "type": "invalid_request_error", "param": "previous_response_id",
            "code": "previous_response_not_found"}});
        return json_response(400, error.to_string());
    }
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
    let (item, mut output_tokens) = match &call_name {
        Some(name) => (
            json!({"id": format!("fc_fake{n}"), "type": "function_call", "status": "completed",
                "call_id": format!("call_{n}"), "name": name, "arguments": WEATHER_ARGS}),
            word_count(WEATHER_ARGS),
        ),
        None => (
            json!({"id": format!("msg_fake{n}"), "type": "message", "status": "completed",
                "role": "assistant", "content": [
                    {"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}),
            word_count(&text),
        ),
    };
    let mut output = Vec::new();
    let mut reasoning_tokens = 0;
    if !req["reasoning"]["summary"].is_null() {
        let summary = [
            format!("Reading the question: {last}"),
            "Then answering it briefly.".to_owned(),
        ];
        reasoning_tokens = summary.iter().map(|s| word_count(s)).sum();
        output.push(
            json!({"id": format!("rs_fake{n}"), "type": "reasoning", "summary":
            summary.iter().map(|text| json!({"type": "summary_text", "text": text}))
                .collect::<Vec<_>>()}),
        );
    }
    output.push(item);
    output_tokens += reasoning_tokens;
    let or = |value: &Value, default: Value| {
        if value.is_null() {
            default
        } else {
            value.clone()
        }
    };
    let created_at = 1_700_000_000 + n as u64;
    let response = json!({
        "id": format!("resp_fake{n}"),
        "object": "response",
        "created_at": created_at,
        "status": "completed",
        "background": false,
        "billing": {"payer": "developer"},
        "completed_at": created_at + 1,
        "error": null,
        "incomplete_details": null,
        "instructions": req["instructions"],
        "max_output_tokens": req["max_output_tokens"],
        "max_tool_calls": req["max_tool_calls"],
        "model": req["model"],
        "output": output,
        "parallel_tool_calls": or(&req["parallel_tool_calls"], json!(true)),
        "previous_response_id": req["previous_response_id"],
        "prompt_cache_key": req["prompt_cache_key"],
        "prompt_cache_retention": null,
        "reasoning": {"effort": req["reasoning"]["effort"], "summary": req["reasoning"]["summary"]},
        "safety_identifier": req["safety_identifier"],
        "service_tier": "default",
        "store": or(&req["store"], json!(true)),
        "temperature": or(&req["temperature"], json!(1.0)),
        "text": or(&req["text"], json!({"format": {"type": "text"}, "verbosity": "medium"})),
        "tool_choice": or(&req["tool_choice"], json!("auto")),
        "tools": or(&req["tools"], json!([])),
        "top_logprobs": or(&req["top_logprobs"], json!(0)),
        "top_p": or(&req["top_p"], json!(1.0)),
        "truncation": or(&req["truncation"], json!("disabled")),
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": input_tokens + output_tokens,
        },
        "user": req["user"],
        "metadata": or(&req["metadata"], json!({})),
    });
    if response["store"] == json!(true) {
        let id = format!("resp_fake{n}");
        state.stored_responses.lock().insert(id, response.clone());
    }

    let mut resp = if req["stream"] == json!(true) {
        let mut events = response_events(&response);
        if mode == ChatMode::PartialStream {
            events.truncate(3);
        }
        // Deltas carry `obfuscation` padding unless the request turns it off.
        let obfuscation = req["stream_options"]["include_obfuscation"] != json!(false);
        let events = events
            .into_iter()
            .enumerate()
            .map(|(seq, (kind, mut data))| {
                if !obfuscation && let Some(fields) = data.as_object_mut() {
                    fields.remove("obfuscation");
                }
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

/// `GET /v1/responses/{id}`: a response made with `store` true or absent, else the API's 404.
pub(super) fn retrieve_response(state: &State, id: &str) -> Response<Body> {
    match state.stored_responses.lock().get(id) {
        Some(response) => json_response(200, response.to_string()),
        None => {
            let error = json!({"error": {
                "message": format!("Response with id '{id}' not found."),
                "type": "invalid_request_error", "param": null, "code": null}});
            json_response(404, error.to_string())
        }
    }
}

/// The typed events delivering `response`, without `type` and `sequence_number` yet.
fn response_events(response: &Value) -> Vec<(&'static str, Value)> {
    let mut pending = response.clone();
    pending["status"] = json!("in_progress");
    pending["completed_at"] = Value::Null;
    pending["output"] = json!([]);
    pending["usage"] = Value::Null;
    let mut events = vec![
        ("response.created", json!({"response": pending})),
        ("response.in_progress", json!({"response": pending})),
    ];
    let empty = Vec::new();
    let items = response["output"].as_array().unwrap_or(&empty);
    for (index, item) in items.iter().enumerate() {
        item_events(&mut events, index, item);
    }
    events.push(("response.completed", json!({"response": response})));
    events
}

/// The events of one output item, from `output_item.added` to `output_item.done`.
fn item_events(events: &mut Vec<(&'static str, Value)>, index: usize, item: &Value) {
    let item_id = &item["id"];
    let at = |fields: Value| {
        let mut obj = json!({"item_id": item_id, "output_index": index});
        for (k, v) in fields.as_object().into_iter().flatten() {
            obj[k] = v.clone();
        }
        obj
    };
    let mut started = item.clone();
    match item["type"].as_str() {
        Some("function_call") => {
            started["status"] = json!("in_progress");
            started["arguments"] = json!("");
        }
        Some("reasoning") => started["summary"] = json!([]),
        _ => {
            started["status"] = json!("in_progress");
            started["content"] = json!([]);
        }
    }
    events.push((
        "response.output_item.added",
        json!({"output_index": index, "item": started}),
    ));
    match item["type"].as_str() {
        Some("function_call") => {
            let args = item["arguments"].as_str().unwrap_or_default();
            let (a, b) = halves(args);
            for delta in [a, b] {
                events.push((
                    "response.function_call_arguments.delta",
                    at(json!({"delta": delta})),
                ));
            }
            events.push((
                "response.function_call_arguments.done",
                at(json!({"arguments": args})),
            ));
        }
        Some("reasoning") => {
            let empty = Vec::new();
            let parts = item["summary"].as_array().unwrap_or(&empty);
            for (summary_index, part) in parts.iter().enumerate() {
                let text = part["text"].as_str().unwrap_or_default();
                let mut opening = part.clone();
                opening["text"] = json!("");
                let at = |fields: Value| {
                    let mut obj = at(fields);
                    obj["summary_index"] = json!(summary_index);
                    obj
                };
                events.push((
                    "response.reasoning_summary_part.added",
                    at(json!({"part": opening})),
                ));
                for word in text.split_inclusive(' ') {
                    events.push((
                        "response.reasoning_summary_text.delta",
                        at(json!({"delta": word})),
                    ));
                }
                events.push((
                    "response.reasoning_summary_text.done",
                    at(json!({"text": text})),
                ));
                events.push((
                    "response.reasoning_summary_part.done",
                    at(json!({"part": part})),
                ));
            }
        }
        _ => {
            let part = &item["content"][0];
            let at = |fields: Value| {
                let mut obj = at(fields);
                obj["content_index"] = json!(0);
                obj
            };
            let mut empty = part.clone();
            empty["text"] = json!("");
            events.push(("response.content_part.added", at(json!({"part": empty}))));
            let text = part["text"].as_str().unwrap_or_default();
            for (i, word) in text.split_inclusive(' ').enumerate() {
                // The API pads each delta with random `obfuscation` characters (default on).
                let pad = &"kQ9xR2mT7pL4w"[..1 + (i * 5) % 12];
                events.push((
                    "response.output_text.delta",
                    at(json!({"delta": word, "logprobs": [], "obfuscation": pad})),
                ));
            }
            events.push((
                "response.output_text.done",
                at(json!({"text": text, "logprobs": []})),
            ));
            events.push(("response.content_part.done", at(json!({"part": part}))));
        }
    }
    events.push((
        "response.output_item.done",
        json!({"output_index": index, "item": item}),
    ));
}
