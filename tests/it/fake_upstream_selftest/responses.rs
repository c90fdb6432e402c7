//! The fake's `/v1/responses`, and failure modes and streaming shared with completions.

use super::completions::completion_body;
use super::*;

fn responses_body(input: Value) -> Value {
    json!({"model": "gpt-4.1-mini", "input": input})
}

fn flat_weather_tools() -> Value {
    json!([{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}])
}

/// Checks the Responses stream framing (`event:` name == `type`, sequence numbers 0, 1, ...)
/// and returns the event payloads.
fn typed_events(events: &[Event]) -> Vec<Value> {
    assert!(events.iter().all(|e| e.data != "[DONE]"), "no [DONE] line");
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let v = e.json();
            assert_eq!(e.event.as_deref(), v["type"].as_str(), "event {i}");
            assert_eq!(v["sequence_number"], i, "event {i}");
            v
        })
        .collect()
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn responses_non_stream_message() {
    let fake = FakeUpstream::start().await;
    let mut body = responses_body(json!("Hello  there"));
    body["instructions"] = json!("Be terse.");
    let resp = post(&fake, "/responses", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["x-request-id"], "req_resp_1");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v,
        json!({
            "id": "resp_fake1",
            "object": "response",
            "created_at": 1_700_000_001,
            "status": "completed",
            "model": "gpt-4.1-mini",
            "output": [{"id": "msg_fake1", "type": "message", "status": "completed",
                "role": "assistant", "content": [{"type": "output_text",
                "text": "response 1: Hello  there", "annotations": [], "logprobs": []}]}],
            // "Be terse." (2) + "Hello  there" (2); "response 1: Hello  there" (4).
            "usage": {"input_tokens": 4, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 8},
            "store": true,
            "instructions": "Be terse.",
            // Every other field of the real API's response object, defaults echoed.
            "background": false,
            "billing": {"payer": "developer"},
            "completed_at": 1_700_000_002,
            "error": null,
            "incomplete_details": null,
            "max_output_tokens": null,
            "max_tool_calls": null,
            "metadata": {},
            "parallel_tool_calls": true,
            "previous_response_id": null,
            "prompt_cache_key": null,
            "prompt_cache_retention": null,
            "reasoning": {"effort": null, "summary": null},
            "safety_identifier": null,
            "service_tier": "default",
            "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_logprobs": 0,
            "top_p": 1.0,
            "truncation": "disabled",
            "user": null,
        })
    );

    // Array input: the last item's text (a string, or concatenated content parts) is answered.
    let body = json!({"model": "m2", "store": false, "input": [
        {"role": "user", "content": "earlier question"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "earlier answer"}]},
        {"role": "user", "content": [
            {"type": "input_text", "text": "part one "}, {"type": "input_text", "text": "part two"}
        ]},
    ]});
    let v: Value = post(&fake, "/responses", &body).await.json().await.unwrap();
    assert_eq!(v["id"], "resp_fake2");
    assert_eq!(v["created_at"], 1_700_000_002);
    assert_eq!(v["model"], "m2");
    assert_eq!(v["store"], false);
    assert_eq!(v["instructions"], Value::Null);
    assert_eq!(
        v["output"][0]["content"][0]["text"],
        "response 2: part one part two"
    );
    assert_eq!(v["usage"]["input_tokens"], 8);
    assert_eq!(fake.calls(RESPONSES_PATH), 2);
    assert_eq!(fake.total_calls(), 2);
}

#[tokio::test]
async fn responses_tool_call_non_stream() {
    let fake = FakeUpstream::start().await;
    let mut body = responses_body(json!("what is the weather in Paris?"));
    body["tools"] = flat_weather_tools();
    let v: Value = post(&fake, "/responses", &body).await.json().await.unwrap();
    assert_eq!(
        v["output"],
        json!([{"id": "fc_fake1", "type": "function_call", "status": "completed",
            "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}])
    );
    assert_eq!(v["usage"]["output_tokens"], 1);

    // Tools but no "weather", or "weather" with empty tools: an ordinary message.
    body["input"] = json!([{"role": "user", "content": "tell me a joke"}]);
    let v: Value = post(&fake, "/responses", &body).await.json().await.unwrap();
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(
        v["output"][0]["content"][0]["text"],
        "response 2: tell me a joke"
    );
    let mut body = responses_body(json!("weather please"));
    body["tools"] = json!([]);
    let v: Value = post(&fake, "/responses", &body).await.json().await.unwrap();
    assert_eq!(
        v["output"][0]["content"][0]["text"],
        "response 3: weather please"
    );
}

#[tokio::test]
async fn responses_stream_message() {
    let fake = FakeUpstream::start().await;
    let mut body = responses_body(json!("stream  this"));
    body["stream"] = json!(true);
    let resp = post(&fake, "/responses", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["x-request-id"], "req_resp_1");
    let events = typed_events(&read_sse(resp).await);
    // Text "response 1: stream  this" → "response ", "1: ", "stream ", " ", "this".
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(["response.output_text.delta"; 5]);
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(types(&events), expected);

    let full: Value = {
        let mut plain = body.clone();
        plain["stream"] = json!(false);
        let mut v: Value = post(&fake, "/responses", &plain)
            .await
            .json()
            .await
            .unwrap();
        // Same request as call 1, answered as call 2: rewrite the call-specific fields.
        v["id"] = json!("resp_fake1");
        v["completed_at"] = json!(1_700_000_002);
        v["created_at"] = json!(1_700_000_001);
        v["output"][0]["id"] = json!("msg_fake1");
        v["output"][0]["content"][0]["text"] = json!("response 1: stream  this");
        v
    };
    let item = &full["output"][0];
    let part = &item["content"][0];
    for pending in &events[..2] {
        let r = &pending["response"];
        assert_eq!(r["id"], "resp_fake1");
        assert_eq!(r["status"], "in_progress");
        assert_eq!(r["output"], json!([]));
        assert_eq!(r["usage"], Value::Null);
        assert_eq!(r["model"], "gpt-4.1-mini");
        assert_eq!(r["store"], true);
    }
    assert_eq!(events[2]["output_index"], 0);
    assert_eq!(
        events[2]["item"],
        json!({"id": "msg_fake1", "type": "message", "status": "in_progress",
            "role": "assistant", "content": []})
    );
    for e in &events[3..11] {
        assert_eq!(e["item_id"], "msg_fake1");
        assert_eq!(e["output_index"], 0);
        assert_eq!(e["content_index"], 0);
    }
    assert_eq!(
        events[3]["part"],
        json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []})
    );
    let deltas: String = events[4..9]
        .iter()
        .map(|e| {
            assert_eq!(e["logprobs"], json!([]));
            e["delta"].as_str().unwrap()
        })
        .collect();
    assert_eq!(deltas, "response 1: stream  this");
    assert_eq!(events[9]["text"], deltas);
    assert_eq!(events[9]["logprobs"], json!([]));
    assert_eq!(&events[10]["part"], part);
    assert_eq!(events[11]["output_index"], 0);
    assert_eq!(&events[11]["item"], item);
    assert_eq!(events[12]["response"], full);
}

#[tokio::test]
async fn responses_stream_tool_call() {
    let fake = FakeUpstream::start().await;
    let mut body = responses_body(json!([{"role": "user", "content": "weather in Paris?"}]));
    body["tools"] = flat_weather_tools();
    body["stream"] = json!(true);
    body["instructions"] = json!("Use tools.");
    let events = typed_events(&read_sse(post(&fake, "/responses", &body).await).await);
    assert_eq!(
        types(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let item = json!({"id": "fc_fake1", "type": "function_call", "status": "completed",
        "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"});
    let mut started = item.clone();
    started["status"] = json!("in_progress");
    started["arguments"] = json!("");
    assert_eq!(events[2]["item"], started);
    for e in &events[3..6] {
        assert_eq!(e["item_id"], "fc_fake1");
        assert_eq!(e["output_index"], 0);
    }
    let args: String = events[3..5]
        .iter()
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert!(!events[3]["delta"].as_str().unwrap().is_empty());
    assert_eq!(args, item["arguments"]);
    assert_eq!(events[5]["arguments"], item["arguments"]);
    assert_eq!(events[6]["item"], item);
    let done = &events[7]["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"], json!([item]));
    assert_eq!(done["instructions"], "Use tools.");
    assert_eq!(done["usage"]["input_tokens"], 5);
    assert_eq!(done["usage"]["output_tokens"], 1);
    assert_eq!(done["usage"]["total_tokens"], 6);
}

#[tokio::test]
async fn responses_partial_stream_lacks_completed() {
    let fake = FakeUpstream::start().await;
    fake.set_chat_mode(ChatMode::PartialStream);
    let mut body = responses_body(json!("a b c d e"));
    body["stream"] = json!(true);
    let events = typed_events(&read_sse(post(&fake, "/responses", &body).await).await);
    assert_eq!(
        types(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added"
        ]
    );

    // Non-streaming requests are answered normally in this mode.
    let v: Value = post(&fake, "/responses", &responses_body(json!("x")))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["output"][0]["content"][0]["text"], "response 2: x");
}

#[tokio::test]
async fn completions_and_responses_failure_modes() {
    let fake = FakeUpstream::start().await;
    let err = r#"{"error":{"message":"boom","type":"server_error"}}"#;
    fake.set_chat_mode(ChatMode::Status(503, err.to_owned()));
    for (path, body) in [
        ("/completions", completion_body(json!("x"))),
        ("/responses", responses_body(json!("x"))),
    ] {
        let resp = post(&fake, path, &body).await;
        assert_eq!(resp.status(), 503, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.text().await.unwrap(), err);
    }

    fake.set_chat_mode(ChatMode::BrokenJson);
    for (path, body) in [
        ("/completions", completion_body(json!("x"))),
        ("/responses", responses_body(json!("x"))),
    ] {
        let resp = post(&fake, path, &body).await;
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.text().await.unwrap(), r#"{"id": "#);
    }

    fake.set_chat_mode(ChatMode::StallBeforeHeaders(Duration::from_millis(300)));
    let start = Instant::now();
    let v: Value = post(&fake, "/completions", &completion_body(json!("x")))
        .await
        .json()
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(v["choices"][0]["text"], "completion 3: x");

    fake.set_chat_mode(ChatMode::Normal);
    fake.set_latency(Duration::from_millis(250));
    let start = Instant::now();
    let v: Value = post(&fake, "/responses", &responses_body(json!("y")))
        .await
        .json()
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert_eq!(v["output"][0]["content"][0]["text"], "response 3: y");
    assert_eq!(fake.calls(COMPLETIONS_PATH), 3);
    assert_eq!(fake.calls(RESPONSES_PATH), 3);
}

#[tokio::test]
async fn completions_and_responses_streams_are_incremental() {
    let fake = FakeUpstream::start().await;
    fake.set_chunk_delay(Duration::from_millis(150));
    let mut completion = completion_body(json!("one"));
    completion["stream"] = json!(true);
    let mut response = responses_body(json!("one"));
    response["stream"] = json!(true);
    // completions: "completion ", "1: ", "one", finish, [DONE] = 5 events;
    // responses: created, in_progress, item added, part added, 3 deltas, text done,
    // part done, item done, completed = 11 events.
    for (path, body, count) in [
        ("/completions", completion, 5),
        ("/responses", response, 11),
    ] {
        let start = Instant::now();
        let events = read_sse(post(&fake, path, &body).await).await;
        assert_eq!(events.len(), count, "{path}");
        let first = events[0].at - start;
        let span = events[count - 1].at - events[0].at;
        assert!(
            first < Duration::from_millis(450),
            "{path}: first took {first:?}"
        );
        let min = Duration::from_millis(150 * (count as u64 - 1) - 100);
        assert!(span >= min, "{path}: whole stream took only {span:?}");
    }
}
