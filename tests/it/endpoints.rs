//! The other generation endpoints: legacy completions, the Responses API (and its stateful
//! bypasses), and the per-input embeddings cache.

use crate::support::fake_upstream::{ChatMode, EMBEDDINGS_PATH};
use crate::support::proxy::{Harness, KEY_A, Reply};
use crate::support::sse::named_events;
use serde_json::{Value, json};

const COMPLETIONS: &str = "/v1/completions";
const RESPONSES: &str = "/v1/responses";

async fn post(h: &Harness, path: &str, body: &Value) -> Reply {
    Reply::read(
        h.client
            .post(h.url(path))
            .bearer_auth(KEY_A)
            .json(body)
            .send()
            .await
            .expect("proxy answers"),
    )
    .await
}

// === legacy completions ===

#[tokio::test]
async fn completions_hit_exactly_semantically_and_as_a_stream() {
    let h = Harness::start().await;
    let body = json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Write a haiku about caching", "max_tokens": 30});
    let first = post(&h, COMPLETIONS, &body).await;
    assert_eq!(first.cache_status(), "miss");
    let text = first.json()["choices"][0]["text"].clone();

    let repeat = post(&h, COMPLETIONS, &body).await;
    assert_eq!(repeat.cache_status(), "hit");
    assert_eq!(repeat.json()["choices"][0]["text"], text);
    assert!(repeat.json()["id"].as_str().unwrap().starts_with("cmpl-"));

    let mut reworded = body.clone();
    reworded["prompt"] = json!("write a haiku about caching");
    let reworded = post(&h, COMPLETIONS, &reworded).await;
    assert_eq!(reworded.header("x-deja-match"), Some("semantic"));

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let stream = post(&h, COMPLETIONS, &streamed).await;
    assert_eq!(stream.cache_status(), "hit");
    assert!(stream.ends_with_done());
    let joined: String = stream
        .chunks()
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str().map(String::from))
        .collect();
    assert_eq!(joined, text.as_str().unwrap());
    assert_eq!(h.upstream.calls(COMPLETIONS), 1);
}

#[tokio::test]
async fn completion_batches_bypass_and_partial_streams_are_not_stored() {
    let h = Harness::start().await;
    let batch = json!({"model": "m", "prompt": ["one", "two"]});
    assert_eq!(post(&h, COMPLETIONS, &batch).await.cache_status(), "bypass");

    let streamed = json!({"model": "m", "prompt": "Tell me a long story", "stream": true});
    h.upstream.set_chat_mode(ChatMode::PartialStream);
    let partial = post(&h, COMPLETIONS, &streamed).await;
    assert!(!partial.ends_with_done());
    h.upstream.set_chat_mode(ChatMode::Normal);
    assert_eq!(
        post(&h, COMPLETIONS, &streamed).await.cache_status(),
        "miss"
    );
}

// === responses ===

fn response_request(question: &str) -> Value {
    json!({"model": "gpt-4.1-mini", "instructions": "Be brief.", "store": false,
           "input": [{"role": "user", "content": question}]})
}

fn output_text(response: &Value) -> String {
    response["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn responses_hit_as_json_and_as_a_typed_event_stream() {
    let h = Harness::start().await;
    let body = response_request("What is the capital of France?");
    let first = post(&h, RESPONSES, &body).await;
    assert_eq!(first.cache_status(), "miss");
    let original = first.json();

    let repeat = post(&h, RESPONSES, &body).await;
    assert_eq!(repeat.cache_status(), "hit");
    let replayed = repeat.json();
    assert_eq!(output_text(&replayed), output_text(&original));
    assert_ne!(replayed["id"], original["id"], "fresh response id");
    assert_ne!(
        replayed["output"][0]["id"], original["output"][0]["id"],
        "fresh item id"
    );
    assert_eq!(replayed["usage"], original["usage"]);

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let stream = post(&h, RESPONSES, &streamed).await;
    assert_eq!(stream.cache_status(), "hit");
    let events = named_events(&stream.text);
    assert_eq!(events.first().unwrap().0, "response.created");
    assert_eq!(events.last().unwrap().0, "response.completed");
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], *name);
        assert_eq!(data["sequence_number"], i);
    }
    let deltas: String = events
        .iter()
        .filter(|(name, _)| name == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(deltas, output_text(&original));
    assert_eq!(h.upstream.calls(RESPONSES), 1);
}

#[tokio::test]
async fn streamed_response_is_stored_from_its_completed_event() {
    let h = Harness::start().await;
    let mut streamed = response_request("Why is the sky blue?");
    streamed["stream"] = json!(true);
    let live = post(&h, RESPONSES, &streamed).await;
    assert_eq!(live.cache_status(), "miss");
    let completed = named_events(&live.text).pop().unwrap();
    assert_eq!(completed.0, "response.completed");

    let mut plain = streamed.clone();
    plain["stream"] = json!(false);
    let hit = post(&h, RESPONSES, &plain).await;
    assert_eq!(hit.cache_status(), "hit");
    assert_eq!(
        output_text(&hit.json()),
        output_text(&completed.1["response"])
    );

    h.upstream.set_chat_mode(ChatMode::PartialStream);
    let mut other = streamed.clone();
    other["input"][0]["content"] = json!("Something else entirely");
    post(&h, RESPONSES, &other).await;
    h.upstream.set_chat_mode(ChatMode::Normal);
    assert_eq!(post(&h, RESPONSES, &other).await.cache_status(), "miss");
}

#[tokio::test]
async fn stateful_responses_bypass() {
    let h = Harness::start().await;
    let base = response_request("Continue.");
    let first = post(&h, RESPONSES, &base).await;
    let mut chained = base.clone();
    chained["previous_response_id"] = first.json()["id"].clone();
    let mut background = base.clone();
    background["background"] = json!(true);
    let mut conversation = base.clone();
    conversation["conversation"] = json!("conv_1");
    for body in [chained, background, conversation] {
        assert_eq!(
            post(&h, RESPONSES, &body).await.cache_status(),
            "bypass",
            "{body}"
        );
        assert_eq!(
            post(&h, RESPONSES, &body).await.cache_status(),
            "bypass",
            "{body}"
        );
    }
    assert_eq!(h.upstream.calls(RESPONSES), 7);
}

#[tokio::test]
async fn response_tool_calls_replay() {
    let h = Harness::start().await;
    let mut body = response_request("What's the weather in Paris?");
    body["tools"] =
        json!([{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]);
    let first = post(&h, RESPONSES, &body).await;
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let replay = post(&h, RESPONSES, &streamed).await;
    assert_eq!(replay.cache_status(), "hit");
    let done = named_events(&replay.text)
        .into_iter()
        .find(|(name, _)| name == "response.function_call_arguments.done")
        .expect("arguments done event");
    assert_eq!(done.1["arguments"], first.json()["output"][0]["arguments"]);
    let completed = named_events(&replay.text).pop().unwrap().1;
    assert_eq!(
        completed["response"]["output"][0]["call_id"],
        first.json()["output"][0]["call_id"]
    );
}

/// A streamed miss is relayed as the upstream sent it: deltas padded with `obfuscation` by
/// default, and without it when the request turns it off.
#[tokio::test]
async fn a_streamed_response_miss_keeps_the_requested_obfuscation() {
    let h = Harness::start().await;
    for (prompt, include) in [
        ("Name three caching strategies", None),
        ("Name four caching strategies", Some(false)),
    ] {
        let mut body = json!({"model": "gpt-4.1-mini", "input": prompt, "stream": true});
        if let Some(include) = include {
            body["stream_options"] = json!({"include_obfuscation": include});
        }
        let stream = post(&h, RESPONSES, &body).await;
        assert_eq!(stream.cache_status(), "miss");
        let deltas: Vec<Value> = named_events(&stream.text)
            .into_iter()
            .filter(|(name, _)| name == "response.output_text.delta")
            .map(|(_, data)| data)
            .collect();
        assert!(!deltas.is_empty());
        for delta in &deltas {
            assert_eq!(
                delta["obfuscation"].is_string(),
                include.is_none(),
                "{delta}"
            );
        }
    }
}

// === embeddings ===

#[tokio::test]
async fn embeddings_cache_per_input_and_send_only_what_is_missing() {
    let h = Harness::start().await;
    let first = post(
        &h,
        EMBEDDINGS_PATH,
        &json!({"model": "text-embedding-3-small", "input": ["alpha", "beta"]}),
    )
    .await;
    assert_eq!(first.cache_status(), "miss");
    let first = first.json();

    let mixed = post(
        &h,
        EMBEDDINGS_PATH,
        &json!({"model": "text-embedding-3-small", "input": ["gamma", "beta", "alpha"]}),
    )
    .await;
    assert_eq!(mixed.header("x-deja-cached-inputs"), Some("2/3"));
    let sent: Value =
        serde_json::from_slice(&h.upstream.last_request(EMBEDDINGS_PATH).unwrap().body).unwrap();
    assert_eq!(
        sent["input"],
        json!(["gamma"]),
        "only the missing input goes upstream"
    );
    let mixed = mixed.json();
    let data = mixed["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["index"], i);
        assert_eq!(item["object"], "embedding");
    }
    assert_eq!(
        data[1]["embedding"], first["data"][1]["embedding"],
        "beta in place"
    );
    assert_eq!(
        data[2]["embedding"], first["data"][0]["embedding"],
        "alpha in place"
    );
    assert_eq!(
        mixed["usage"]["prompt_tokens"], 1,
        "usage counts only what was sent"
    );

    let all_cached = post(
        &h,
        EMBEDDINGS_PATH,
        &json!({"model": "text-embedding-3-small", "input": "alpha"}),
    )
    .await;
    assert_eq!(all_cached.cache_status(), "hit");
    assert_eq!(
        all_cached.json()["data"][0]["embedding"],
        first["data"][0]["embedding"]
    );
    assert_eq!(all_cached.json()["usage"]["total_tokens"], 0);

    let other_dims = post(
        &h,
        EMBEDDINGS_PATH,
        &json!({"model": "text-embedding-3-small", "input": "alpha", "dimensions": 32}),
    )
    .await;
    assert_eq!(other_dims.cache_status(), "miss");
    let tokens = post(
        &h,
        EMBEDDINGS_PATH,
        &json!({"model": "text-embedding-3-small", "input": [[1, 2, 3]]}),
    )
    .await;
    assert_eq!(tokens.cache_status(), "bypass");
}
