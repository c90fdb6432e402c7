//! The fake's legacy `/v1/completions`.

use super::*;

pub(super) fn completion_body(prompt: Value) -> Value {
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
