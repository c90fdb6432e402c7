mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::fake_upstream::{
    CHAT_PATH, ChatMode, EMBEDDINGS_PATH, EmbedMode, FakeUpstream, bag_of_words_embedding, cosine,
    http_client,
};

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

/// One SSE event (`data:` payload) and when the client received it.
struct Event {
    at: Instant,
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
            let data = raw.trim_end().strip_prefix("data: ").expect("data: prefix");
            events.push(Event {
                at: Instant::now(),
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
        json!({"role": "assistant", "content": ""})
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
        5,
        "role, tool header, 2 argument parts, finish"
    );
    let header = &chunks[1]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(header["index"], 0);
    assert_eq!(header["id"], "call_1");
    assert_eq!(header["type"], "function");
    assert_eq!(
        header["function"],
        json!({"name": "get_weather", "arguments": ""})
    );
    let args: String = chunks[2..4]
        .iter()
        .map(|c| {
            c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(args, "{\"city\":\"Paris\"}");
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "tool_calls");
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
