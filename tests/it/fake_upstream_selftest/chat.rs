//! The fake's `/v1/chat/completions`: answers, tool calls, streams, failure modes.

use super::*;

#[tokio::test]
async fn chat_non_stream_answers_and_records() {
    let fake = FakeUpstream::start().await;
    assert!(fake.base_url().starts_with("http://127.0.0.1:"));
    assert_eq!(fake.base_url(), format!("http://{}/v1", fake.addr()));

    let resp = post(&fake, "/chat/completions", &chat_body("Hello there")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["x-request-id"], "req_1");
    assert_eq!(resp.headers()["openai-processing-ms"], "1");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["id"], "chatcmpl-fake1");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["created"], 1_700_000_001);
    assert_eq!(v["model"], "gpt-4o-mini");
    assert_eq!(v["system_fingerprint"], "fp_fake");
    assert_eq!(v["service_tier"], "default");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["annotations"], json!([]));
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "answer 1: Hello there"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // "You are terse." (3) + "Hello there" (2); "answer 1: Hello there" (4).
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}})
    );

    // Second call: n increments; content parts are concatenated.
    let body = json!({"model": "m2", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "part one "}, {"type": "text", "text": "part two"}
    ]}]});
    let v: Value = post(&fake, "/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "answer 2: part one part two"
    );
    assert_eq!(v["model"], "m2");
    assert_eq!(v["created"], 1_700_000_002);

    assert_eq!(fake.calls(CHAT_PATH), 2);
    assert_eq!(fake.calls(EMBEDDINGS_PATH), 0);
    assert_eq!(fake.total_calls(), 2);
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        serde_json::from_slice::<Value>(&reqs[0].body).unwrap(),
        chat_body("Hello there")
    );
    let last = fake.last_request(CHAT_PATH).expect("recorded");
    assert_eq!(last.method, "POST");
    assert_eq!(last.path, CHAT_PATH);
    assert_eq!(last.query, None);
    assert_eq!(last.headers["authorization"], "Bearer sk-test");
    assert_eq!(serde_json::from_slice::<Value>(&last.body).unwrap(), body);
    assert!(fake.last_request("/nope").is_none());
}

#[tokio::test]
async fn chat_tool_call_non_stream() {
    let fake = FakeUpstream::start().await;
    let mut body = chat_body("what is the weather in Paris?");
    body["tools"] = weather_tools();
    let v: Value = post(&fake, "/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    assert_eq!(
        choice["message"]["tool_calls"],
        json!([{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}])
    );

    // Tools present but no "weather": ordinary answer. Empty tools: ordinary answer too.
    body["messages"][1]["content"] = json!("tell me a joke");
    let v: Value = post(&fake, "/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "answer 2: tell me a joke"
    );
    let mut body = chat_body("weather please");
    body["tools"] = json!([]);
    let v: Value = post(&fake, "/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "answer 3: weather please"
    );
}

#[tokio::test]
async fn chat_stream_with_usage() {
    let fake = FakeUpstream::start().await;
    let mut body = chat_body("stream  this please");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = post(&fake, "/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["x-request-id"], "req_1");
    let events = read_sse(resp).await;

    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Event::json).collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], "chatcmpl-fake1");
        assert_eq!(c["created"], 1_700_000_001);
        assert_eq!(c["model"], "gpt-4o-mini");
        assert_eq!(c["system_fingerprint"], "fp_fake");
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": "", "refusal": null})
    );
    // Double space survives: concatenated deltas reproduce the content exactly.
    assert_eq!(delta_content(&events), "answer 1: stream  this please");
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 6);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 5);
    assert_eq!(usage_chunk["usage"]["total_tokens"], 11);
    let finish = rest.last().unwrap();
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    for c in rest {
        assert_eq!(
            c.get("usage"),
            Some(&Value::Null),
            "usage: null on non-usage chunks"
        );
    }
    for c in &rest[..rest.len() - 1] {
        assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
    }
}

#[tokio::test]
async fn chat_stream_without_usage_omits_usage() {
    let fake = FakeUpstream::start().await;
    let mut body = chat_body("hi");
    body["stream"] = json!(true);
    let events = read_sse(post(&fake, "/chat/completions", &body).await).await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    // role + "answer " + "1: " + "hi" + finish + [DONE]
    assert_eq!(events.len(), 6);
    for e in &events[..events.len() - 1] {
        assert!(e.json().get("usage").is_none());
        assert_eq!(e.json()["choices"].as_array().unwrap().len(), 1);
    }
    assert_eq!(delta_content(&events), "answer 1: hi");
}

#[tokio::test]
async fn chat_stream_tool_call() {
    let fake = FakeUpstream::start().await;
    let mut body = chat_body("weather in Paris?");
    body["stream"] = json!(true);
    body["tools"] = weather_tools();
    let events = read_sse(post(&fake, "/chat/completions", &body).await).await;
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Event::json).collect();
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert_eq!(
        chunks.len(),
        4,
        "role with tool header, 2 argument parts, finish"
    );
    let opening = &chunks[0]["choices"][0]["delta"];
    assert_eq!(opening["role"], "assistant");
    assert_eq!(opening["content"], Value::Null, "content stays null");
    assert_eq!(opening["refusal"], Value::Null);
    let header = &opening["tool_calls"][0];
    assert_eq!(header["index"], 0);
    assert_eq!(header["id"], "call_1");
    assert_eq!(header["type"], "function");
    assert_eq!(
        header["function"],
        json!({"name": "get_weather", "arguments": ""})
    );
    let args: String = chunks[1..3]
        .iter()
        .map(|c| {
            c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(args, "{\"city\":\"Paris\"}");
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn chat_stream_is_really_incremental() {
    let fake = FakeUpstream::start().await;
    fake.set_chunk_delay(Duration::from_millis(200));
    let mut body = chat_body("one two three");
    body["stream"] = json!(true);
    let start = Instant::now();
    let events = read_sse(post(&fake, "/chat/completions", &body).await).await;
    // role, 5 words, finish, [DONE] = 8 events, 7 gaps of 200ms.
    assert_eq!(events.len(), 8);
    let first = events[0].at - start;
    let last = events[7].at - start;
    assert!(
        first < Duration::from_millis(600),
        "first chunk took {first:?}"
    );
    assert!(
        last >= Duration::from_millis(1300),
        "whole stream took only {last:?}"
    );
    assert!(events[7].at - events[0].at >= Duration::from_millis(1200));
}

#[tokio::test]
async fn chat_partial_stream_lacks_done() {
    let fake = FakeUpstream::start().await;
    fake.set_chat_mode(ChatMode::PartialStream);
    let mut body = chat_body("a b c d e");
    body["stream"] = json!(true);
    let events = read_sse(post(&fake, "/chat/completions", &body).await).await;
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e.data != "[DONE]"));
    assert_eq!(events[0].json()["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(delta_content(&events), "answer 1: ");

    // Non-streaming requests are answered normally in this mode.
    let v: Value = post(&fake, "/chat/completions", &chat_body("x"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "answer 2: x");
}

#[tokio::test]
async fn chat_failure_modes_are_counted() {
    let fake = FakeUpstream::start().await;
    let err = r#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#;
    fake.set_chat_mode(ChatMode::Status(429, err.to_owned()));
    let resp = post(&fake, "/chat/completions", &chat_body("x")).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.text().await.unwrap(), err);

    fake.set_chat_mode(ChatMode::BrokenJson);
    let resp = post(&fake, "/chat/completions", &chat_body("x")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.text().await.unwrap(), r#"{"id": "#);

    fake.set_chat_mode(ChatMode::StallBeforeHeaders(Duration::from_millis(300)));
    let start = Instant::now();
    let resp = post(&fake, "/chat/completions", &chat_body("x")).await;
    assert!(start.elapsed() >= Duration::from_millis(300));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "answer 3: x");

    fake.set_chat_mode(ChatMode::Normal);
    fake.set_latency(Duration::from_millis(250));
    let start = Instant::now();
    let v: Value = post(&fake, "/chat/completions", &chat_body("y"))
        .await
        .json()
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert_eq!(v["choices"][0]["message"]["content"], "answer 4: y");
    assert_eq!(fake.calls(CHAT_PATH), 4);
}

#[tokio::test]
async fn chat_stall_times_out_client_but_is_recorded() {
    let fake = FakeUpstream::start().await;
    fake.set_chat_mode(ChatMode::StallBeforeHeaders(Duration::from_secs(30)));
    let result = http_client()
        .post(format!("{}/chat/completions", fake.base_url()))
        .json(&chat_body("x"))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(result.expect_err("should time out").is_timeout());
    assert_eq!(fake.calls(CHAT_PATH), 1);
}

#[tokio::test]
async fn chat_structured_outputs_answer_json_of_the_schema_shape() {
    let fake = FakeUpstream::start().await;
    let content = |body: &Value| {
        let (fake, body) = (&fake, body.clone());
        async move {
            let v: Value = post(fake, "/chat/completions", &body)
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(v["choices"][0]["message"]["refusal"], Value::Null);
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    // A Pydantic-style schema: a nested model under $defs, a nullable number, an enum.
    let schema = json!({"type": "object", "additionalProperties": false,
        "required": ["city", "population", "coastal", "tags", "mayor", "rank", "size"],
        "properties": {
            "city": {"type": "string"}, "population": {"type": "integer"},
            "coastal": {"type": "boolean"}, "tags": {"type": "array", "items": {"type": "string"}},
            "mayor": {"$ref": "#/$defs/Person"}, "rank": {"type": ["number", "null"]},
            "size": {"enum": ["small", "large"]}},
        "$defs": {"Person": {"type": "object", "properties": {"name": {"type": "string"}}}}});
    let mut body = chat_body("Paris");
    body["response_format"] = json!({"type": "json_schema",
        "json_schema": {"name": "facts", "strict": true, "schema": schema}});
    let parsed: Value = serde_json::from_str(&content(&body).await).unwrap();
    assert_eq!(
        parsed,
        json!({"city": "answer 1: Paris", "population": 3, "coastal": false,
            "tags": ["answer 1: Paris"], "mayor": {"name": "answer 1: Paris"}, "rank": 3.5,
            "size": "small"})
    );

    // Streamed, the deltas put the same JSON text together.
    body["stream"] = json!(true);
    let events = read_sse(post(&fake, "/chat/completions", &body).await).await;
    let streamed: Value = serde_json::from_str(&delta_content(&events)).unwrap();
    assert_eq!(streamed["city"], "answer 2: Paris");

    // JSON mode: some JSON object; a text format: text.
    body["stream"] = json!(false);
    body["response_format"] = json!({"type": "json_object"});
    assert_eq!(content(&body).await, r#"{"answer":"answer 3: Paris"}"#);
    body["response_format"] = json!({"type": "text"});
    assert_eq!(content(&body).await, "answer 4: Paris");
}
