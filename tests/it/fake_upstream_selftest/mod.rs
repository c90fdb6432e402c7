//! The fake upstream checked against what the real API answers, one file per endpoint;
//! here the helpers they share, and the fake's other paths, protocols and shutdown.

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

mod chat;
mod completions;
mod embeddings;
mod responses;

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
