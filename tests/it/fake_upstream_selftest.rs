use std::time::{Duration, Instant};

use crate::support::fake_upstream::{
    CHAT_PATH, COMPLETIONS_PATH, ChatMode, EMBEDDINGS_PATH, EmbedMode, FakeUpstream,
    RESPONSES_PATH, bag_of_words_embedding, cosine, http_client,
};
use futures_util::StreamExt;
use serde_json::{Value, json};

// === helpers ===

async fn post(fake: &FakeUpstream, path: &str, body: &Value) -> reqwest::Response {
    http_client()
        .post(format!("{}{path}", fake.base_url()))
        .header("authorization", "Bearer sk-test")
        .json(body)
        .send()
        .await
        .expect("request to fake upstream")
}

fn chat_body(text: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": text},
    ]})
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}])
}

/// One SSE event (`event:` name if any, `data:` payload) and when the client received it.
struct Event {
    at: Instant,
    event: Option<String>,
    data: String,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("SSE data is JSON")
    }
}

/// Reads the whole SSE body, timestamping each event as it completes.
async fn read_sse(resp: reqwest::Response) -> Vec<Event> {
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut events = Vec::new();
    while let Some(chunk) = stream.next().await {
        buf.push_str(std::str::from_utf8(&chunk.expect("body chunk")).expect("utf8"));
        while let Some(end) = buf.find("\n\n") {
            let raw: String = buf.drain(..end + 2).collect();
            let mut lines = raw.trim_end().lines();
            let mut line = lines.next().expect("event line");
            let event = line.strip_prefix("event: ").map(|name| {
                line = lines.next().expect("data line after event:");
                name.to_owned()
            });
            let data = line.strip_prefix("data: ").expect("data: prefix");
            assert!(lines.next().is_none(), "one data line per event: {raw:?}");
            events.push(Event {
                at: Instant::now(),
                event,
                data: data.to_owned(),
            });
        }
    }
    assert!(buf.is_empty(), "trailing partial event: {buf:?}");
    events
}

fn delta_content(events: &[Event]) -> String {
    events
        .iter()
        .filter(|e| e.data != "[DONE]")
        .filter_map(|e| {
            e.json()["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

// === chat completions ===

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
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "answer 1: Hello there"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // "You are terse." (3) + "Hello there" (2); "answer 1: Hello there" (4).
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9})
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

// === embeddings ===

async fn embed(fake: &FakeUpstream, input: Value) -> Value {
    let resp = post(
        fake,
        "/embeddings",
        &json!({"model": "text-embedding-3-small", "input": input}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

fn vector(v: &Value, i: usize) -> Vec<f32> {
    let arr = v["data"][i]["embedding"]
        .as_array()
        .expect("embedding array");
    arr.iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[tokio::test]
async fn embeddings_bag_of_words() {
    let fake = FakeUpstream::start().await;
    let v = embed(
        &fake,
        json!([
            "What is the capital of France",
            "what is the capital of france?",
            "Bananas grow quickly in tropical greenhouses"
        ]),
    )
    .await;
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "text-embedding-3-small");
    assert_eq!(v["usage"], json!({"prompt_tokens": 18, "total_tokens": 18}));
    for i in 0..3 {
        assert_eq!(v["data"][i]["object"], "embedding");
        assert_eq!(v["data"][i]["index"], i);
    }
    let (a, b, c) = (vector(&v, 0), vector(&v, 1), vector(&v, 2));
    assert_eq!(a.len(), 64);
    let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
    assert!(
        (cosine(&a, &b) - 1.0).abs() < 1e-6,
        "cos = {}",
        cosine(&a, &b)
    );
    assert!(cosine(&a, &c) < 0.5, "cos = {}", cosine(&a, &c));
    assert_eq!(a, bag_of_words_embedding("What is the capital of France"));

    // Single-string input, deterministic across calls; empty text stays all-zero.
    let single = embed(&fake, json!("what is the capital of france?")).await;
    assert_eq!(vector(&single, 0), b);
    assert!(
        vector(&embed(&fake, json!("?!")).await, 0)
            .iter()
            .all(|x| *x == 0.0)
    );
    assert_eq!(fake.calls(EMBEDDINGS_PATH), 3);
}

#[tokio::test]
async fn embeddings_override_and_modes() {
    let fake = FakeUpstream::start().await;
    fake.set_embedding("pinned", vec![0.5, -0.25, 1.0]);
    let v = embed(&fake, json!(["pinned", "Pinned"])).await;
    assert_eq!(vector(&v, 0), vec![0.5, -0.25, 1.0]);
    assert_eq!(
        vector(&v, 1),
        bag_of_words_embedding("Pinned"),
        "override is exact-text only"
    );

    fake.set_embed_mode(EmbedMode::Status(503));
    let resp = post(&fake, "/embeddings", &json!({"model": "m", "input": "x"})).await;
    assert_eq!(resp.status(), 503);
    let err: Value = resp.json().await.unwrap();
    assert!(err["error"]["message"].is_string());
    assert!(err["error"]["type"].is_string());

    fake.set_embed_mode(EmbedMode::Stall(Duration::from_millis(300)));
    let start = Instant::now();
    let v = embed(&fake, json!("pinned")).await;
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(vector(&v, 0), vec![0.5, -0.25, 1.0]);
    assert_eq!(fake.calls(EMBEDDINGS_PATH), 3);
}

#[tokio::test]
async fn embeddings_honour_dimensions_as_the_api_does() {
    let fake = FakeUpstream::start().await;
    let text = "What is the capital of France";
    let ask = |model: &str, dimensions: Value| {
        let body = json!({"model": model, "input": [text], "dimensions": dimensions});
        let fake = &fake;
        async move { post(fake, "/embeddings", &body).await }
    };
    let resp = ask("text-embedding-3-small", json!(8)).await;
    assert_eq!(resp.status(), 200);
    let short = vector(&resp.json().await.unwrap(), 0);
    // The first 8 values of the full vector, back at unit length.
    let full = bag_of_words_embedding(text);
    assert_eq!(short.len(), 8);
    let norm: f32 = short.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    assert!((cosine(&short, &full[..8]) - 1.0).abs() < 1e-6);

    for (model, dimensions) in [
        ("text-embedding-3-small", json!(0)),
        ("text-embedding-3-small", json!(65)),
        ("text-embedding-ada-002", json!(8)),
    ] {
        let resp = ask(model, dimensions.clone()).await;
        assert_eq!(resp.status(), 400, "{model} {dimensions}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["type"], "invalid_request_error");
    }
}

// === legacy completions ===

fn completion_body(prompt: Value) -> Value {
    json!({"model": "gpt-3.5-turbo-instruct", "prompt": prompt, "max_tokens": 16})
}

fn completion_text(events: &[Event]) -> String {
    events
        .iter()
        .filter(|e| e.data != "[DONE]")
        .filter_map(|e| e.json()["choices"][0]["text"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn completions_non_stream() {
    let fake = FakeUpstream::start().await;
    let resp = post(&fake, "/completions", &completion_body(json!("Say  hi"))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["x-request-id"], "req_cmpl_1");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v,
        json!({
            "id": "cmpl-fake1",
            "object": "text_completion",
            "created": 1_700_000_001,
            "model": "gpt-3.5-turbo-instruct",
            "choices": [{"text": "completion 1: Say  hi", "index": 0, "logprobs": null,
                "finish_reason": "stop"}],
            // "Say  hi" (2); "completion 1: Say  hi" (4).
            "usage": {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6},
        })
    );

    // An array prompt uses its first element; n counts /v1/completions calls only.
    post(&fake, "/chat/completions", &chat_body("unrelated")).await;
    let v: Value = post(
        &fake,
        "/completions",
        &completion_body(json!(["first one", "second"])),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["id"], "cmpl-fake2");
    assert_eq!(v["created"], 1_700_000_002);
    assert_eq!(v["choices"][0]["text"], "completion 2: first one");
    assert_eq!(v["usage"]["prompt_tokens"], 2);
    assert_eq!(fake.calls(COMPLETIONS_PATH), 2);
    assert_eq!(fake.calls(CHAT_PATH), 1);
    let last = fake.last_request(COMPLETIONS_PATH).expect("recorded");
    assert_eq!(
        serde_json::from_slice::<Value>(&last.body).unwrap()["prompt"][1],
        "second"
    );
}

#[tokio::test]
async fn completions_stream_with_usage() {
    let fake = FakeUpstream::start().await;
    let mut body = completion_body(json!("stream  this please"));
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = post(&fake, "/completions", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = read_sse(resp).await;
    assert!(events.iter().all(|e| e.event.is_none()));
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert_eq!(
        completion_text(&events),
        "completion 1: stream  this please"
    );

    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Event::json).collect();
    // "completion ", "1: ", "stream ", " ", "this ", "please", finish, usage.
    assert_eq!(chunks.len(), 8);
    for c in &chunks {
        assert_eq!(c["id"], "cmpl-fake1");
        assert_eq!(c["object"], "text_completion");
        assert_eq!(c["created"], 1_700_000_001);
        assert_eq!(c["model"], "gpt-3.5-turbo-instruct");
    }
    for c in &chunks[..6] {
        let choice = &c["choices"][0];
        assert_eq!(choice["index"], 0);
        assert_eq!(choice["logprobs"], Value::Null);
        assert_eq!(choice["finish_reason"], Value::Null);
        assert_eq!(c.get("usage"), Some(&Value::Null));
    }
    assert_eq!(
        chunks[6]["choices"],
        json!([{"text": "", "index": 0, "logprobs": null, "finish_reason": "stop"}])
    );
    assert_eq!(chunks[7]["choices"], json!([]));
    assert_eq!(
        chunks[7]["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8})
    );
}

#[tokio::test]
async fn completions_stream_without_usage_and_partial() {
    let fake = FakeUpstream::start().await;
    let mut body = completion_body(json!(["a b c"]));
    body["stream"] = json!(true);
    let events = read_sse(post(&fake, "/completions", &body).await).await;
    // "completion ", "1: ", "a ", "b ", "c", finish, [DONE]
    assert_eq!(events.len(), 7);
    assert_eq!(events[6].data, "[DONE]");
    assert!(events[..6].iter().all(|e| e.json().get("usage").is_none()));
    assert_eq!(events[5].json()["choices"][0]["finish_reason"], "stop");
    assert_eq!(completion_text(&events), "completion 1: a b c");

    fake.set_chat_mode(ChatMode::PartialStream);
    let events = read_sse(post(&fake, "/completions", &body).await).await;
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e.data != "[DONE]"));
    assert!(
        events
            .iter()
            .all(|e| e.json()["choices"][0]["finish_reason"].is_null())
    );
    assert_eq!(completion_text(&events), "completion 2: a ");
}

// === responses ===

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

// === echo, protocols, shutdown ===

#[tokio::test]
async fn other_paths_echo() {
    let fake = FakeUpstream::start().await;
    let resp = http_client()
        .get(format!("{}/models?limit=2", fake.base_url()))
        .header("x-custom", "yes")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-fake-upstream"], "echo");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/v1/models");
    assert_eq!(v["query"], "limit=2");
    assert_eq!(v["headers"]["x-custom"], "yes");
    assert_eq!(v["body"], "");

    // Wrong method on a known path also echoes.
    let resp = http_client()
        .get(format!("{}/chat/completions", fake.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-fake-upstream"], "echo");

    let resp = http_client()
        .put(format!("http://{}/other", fake.addr()))
        .body("raw text")
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["path"], "/other");
    assert_eq!(v["query"], Value::Null);
    assert_eq!(v["body"], "raw text");

    assert_eq!(fake.calls("/v1/models"), 1);
    assert_eq!(fake.calls(CHAT_PATH), 1);
    assert_eq!(fake.total_calls(), 3);
    let paths: Vec<String> = fake.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/v1/models", CHAT_PATH, "/other"]);
    assert_eq!(fake.requests()[0].query.as_deref(), Some("limit=2"));
}

#[tokio::test]
async fn serves_http2_prior_knowledge() {
    let fake = FakeUpstream::start().await;
    let _ = http_client(); // installs the crypto provider
    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = client
        .post(format!("{}/chat/completions", fake.base_url()))
        .json(&chat_body("over h2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "answer 1: over h2");
}

#[tokio::test]
async fn drop_stops_serving() {
    let fake = FakeUpstream::start().await;
    let url = format!("{}/models", fake.base_url());
    let client = http_client();
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    drop(fake);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let result = client
        .get(&url)
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(result.is_err(), "fake upstream still answering after drop");
}
