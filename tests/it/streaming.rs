//! Streams through the proxy: relayed live on a miss, stored only when complete, replayed as
//! valid `chat.completion.chunk` streams on a hit, and interchangeable with JSON entries.

use std::time::{Duration, Instant};

use crate::support::fake_upstream::{CHAT_PATH, ChatMode};
use crate::support::proxy::{Harness, KEY_A, ask, ask_stream};
use futures_util::StreamExt;
use serde_json::json;

#[tokio::test]
async fn first_chunk_arrives_before_upstream_finishes() {
    let h = Harness::start().await;
    h.upstream.set_chunk_delay(Duration::from_millis(250));
    let started = Instant::now();
    let response = h
        .chat_with(
            KEY_A,
            &[],
            &ask_stream("one two three four five six", false),
        )
        .await;
    assert_eq!(response.headers()["x-deja-cache"], "miss");
    let mut body = response.bytes_stream();
    let first = body.next().await.expect("a first chunk").expect("ok");
    let first_at = started.elapsed();
    assert!(String::from_utf8_lossy(&first).contains("chat.completion.chunk"));
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.expect("ok"));
    }
    let total = started.elapsed();
    // The fake needs ~10 delays of 250 ms for this answer; the first chunk must not wait.
    assert!(total >= Duration::from_millis(2000), "total {total:?}");
    assert!(
        first_at < total / 2,
        "first chunk at {first_at:?} of {total:?}"
    );
    assert!(
        String::from_utf8_lossy(&rest)
            .trim_end()
            .ends_with("data: [DONE]")
    );
}

#[tokio::test]
async fn streamed_answer_is_stored_and_served_both_ways() {
    let h = Harness::start().await;
    let question = "Why is the sky blue?";
    let live = h.chat(&ask_stream(question, true)).await;
    assert_eq!(live.cache_status(), "miss");
    assert!(live.ends_with_done());

    let replay = h.chat(&ask_stream(question, true)).await;
    assert_eq!(replay.cache_status(), "hit");
    assert!(replay.is_stream() && replay.ends_with_done());
    assert_eq!(replay.content(), live.content());
    let chunks = replay.chunks();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("stop"));
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(*usage, live.chunks().last().unwrap()["usage"]);
    assert!(usage["total_tokens"].as_u64().unwrap() > 0);

    let as_json = h.chat(&ask(question)).await;
    assert_eq!(as_json.cache_status(), "hit");
    let completion = as_json.json();
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        live.content()
    );
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    assert_eq!(h.upstream.calls(CHAT_PATH), 1);
}

#[tokio::test]
async fn json_answer_replays_as_a_stream() {
    let h = Harness::start().await;
    let question = "Explain HNSW in one sentence.";
    let original = h.chat(&ask(question)).await;
    let stream = h.chat(&ask_stream(question, false)).await;
    assert_eq!(stream.cache_status(), "hit");
    assert!(stream.ends_with_done());
    assert_eq!(stream.content(), original.content());
    assert!(stream.chunks().iter().all(|c| c.get("usage").is_none()));

    let with_usage = h.chat(&ask_stream(question, true)).await;
    assert_eq!(with_usage.cache_status(), "hit");
    assert_eq!(
        with_usage.chunks().last().unwrap()["usage"],
        original.json()["usage"]
    );
}

#[tokio::test]
async fn stream_without_usage_cannot_answer_a_request_that_needs_usage() {
    let h = Harness::start().await;
    let question = "Name a prime number.";
    h.chat(&ask_stream(question, false)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The stored stream had no usage; a JSON request must report usage, so it goes upstream.
    let json_reply = h.chat(&ask(question)).await;
    assert_eq!(json_reply.cache_status(), "miss");
    assert!(
        json_reply.json()["usage"]["total_tokens"]
            .as_u64()
            .is_some()
    );
    assert_eq!(h.upstream.calls(CHAT_PATH), 2);
}

#[tokio::test]
async fn partial_stream_is_relayed_but_not_stored() {
    let h = Harness::start().await;
    let question = "Tell me something long";
    h.upstream.set_chat_mode(ChatMode::PartialStream);
    let partial = h.chat(&ask_stream(question, false)).await;
    assert_eq!(partial.status, 200);
    assert!(!partial.ends_with_done());
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.upstream.set_chat_mode(ChatMode::Normal);
    let retry = h.chat(&ask_stream(question, false)).await;
    assert_eq!(retry.cache_status(), "miss");
    assert!(retry.ends_with_done());
    assert_eq!(h.upstream.calls(CHAT_PATH), 2);
}

#[tokio::test]
async fn tool_calls_replay_in_both_forms() {
    let h = Harness::start().await;
    let mut body = ask("What's the weather in Paris?");
    body["tools"] = json!([{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}
    }}]);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);

    let live = h.chat(&streamed).await;
    assert_eq!(live.cache_status(), "miss");
    let reply = h.chat(&streamed).await;
    assert_eq!(reply.cache_status(), "hit");
    let chunks = reply.chunks();
    let name = chunks.iter().find_map(|c| {
        c.pointer("/choices/0/delta/tool_calls/0/function/name")?
            .as_str()
    });
    assert_eq!(name, Some("get_weather"));
    let arguments: String = chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/tool_calls/0/function/arguments")?
                .as_str()
        })
        .collect();
    assert_eq!(arguments, r#"{"city":"Paris"}"#);
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("tool_calls"));
    // A stored stream without usage cannot answer the JSON form, so ask for usage first.
    let mut with_usage = streamed.clone();
    with_usage["stream_options"] = json!({"include_usage": true});
    h.chat(&with_usage).await;
    let as_json = h.chat(&body).await;
    assert_eq!(as_json.cache_status(), "hit");
    let call = &as_json.json()["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], r#"{"city":"Paris"}"#);
    assert!(call.get("index").is_none());
}

#[tokio::test]
async fn a_client_that_stops_reading_does_not_stall_its_twins() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::start().await;
    // An answer of ~40 000 chunks (several MB): far more than the socket buffers between
    // deja and a client that never reads can absorb.
    let prompt: String = (0..40_000).map(|i| format!("w{i} ")).collect();
    let body = ask_stream(prompt.trim_end(), false);
    let json = body.to_string();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(h.proxy.addr).await.unwrap();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {KEY_A}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
        json.len()
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    // The stalled request leads: it is upstream before its twin arrives.
    for _ in 0..200 {
        if h.upstream.calls(CHAT_PATH) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        h.upstream.calls(CHAT_PATH),
        1,
        "the first request went upstream"
    );

    // A hang detector, not a speed bound: before the fix the twin waited for ever.
    let twin = tokio::time::timeout(Duration::from_secs(60), h.chat(&body))
        .await
        .expect("the twin is answered although the first client reads nothing");
    assert_eq!(twin.status, 200);
    assert!(twin.ends_with_done());
    assert_eq!(twin.header("x-deja-match"), Some("coalesced"));
    assert_eq!(twin.content(), format!("answer 1: {}", prompt.trim_end()));
    assert_eq!(h.upstream.calls(CHAT_PATH), 1);
    drop(stalled);
}

/// Starts a streamed miss for `prompt`, reads its first chunk, and hands the open response
/// back (dropping it hangs up).
async fn start_streamed_miss(h: &Harness, prompt: &str) -> reqwest::Response {
    let response = h.chat_with(KEY_A, &[], &ask_stream(prompt, false)).await;
    assert_eq!(response.headers()["x-deja-cache"], "miss");
    let mut response = response;
    let first = response.chunk().await.expect("ok").expect("a first chunk");
    assert!(String::from_utf8_lossy(&first).contains("chat.completion.chunk"));
    response
}

#[tokio::test]
async fn a_client_that_hangs_up_alone_leaves_nothing_stored() {
    let h = Harness::start().await;
    h.upstream.set_chunk_delay(Duration::from_millis(50));
    let prompt = "one two three four five six seven eight";
    let first = start_streamed_miss(&h, prompt).await;
    drop(first);
    // The pump notices the client is gone at a following chunk and stops without storing;
    // until then a repeat would wait on it as a twin.
    for _ in 0..400 {
        if h.proxy.app.inflight.in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        h.proxy.app.inflight.in_flight(),
        0,
        "the abandoned miss ended"
    );
    let again = h.chat(&ask_stream(prompt, false)).await;
    assert_eq!(again.cache_status(), "miss", "half an answer is not stored");
    assert!(again.ends_with_done());
    assert_eq!(again.content(), format!("answer 2: {prompt}"));
    assert_eq!(h.upstream.calls(CHAT_PATH), 2);
}

#[tokio::test]
async fn a_twin_gets_the_whole_answer_when_the_first_client_hangs_up() {
    let h = Harness::start().await;
    h.upstream.set_chunk_delay(Duration::from_millis(100));
    let prompt = "one two three four five six seven eight";
    let first = start_streamed_miss(&h, prompt).await;
    let twin = {
        let client = reqwest::Client::new();
        let url = h.url("/v1/chat/completions");
        let body = ask_stream(prompt, false);
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(KEY_A)
                .json(&body)
                .send()
                .await
                .expect("twin sent")
        })
    };
    // Let the twin start waiting on the first request, then hang that one up mid-answer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(first);
    let twin = crate::support::proxy::Reply::read(twin.await.expect("twin task")).await;
    assert_eq!(twin.status, 200);
    assert_eq!(twin.header("x-deja-match"), Some("coalesced"));
    assert!(twin.ends_with_done());
    assert_eq!(twin.content(), format!("answer 1: {prompt}"));
    assert_eq!(h.upstream.calls(CHAT_PATH), 1);
    // The whole answer was read for the twin, so it is stored too.
    let later = h.chat(&ask_stream(prompt, false)).await;
    assert_eq!(later.cache_status(), "hit");
    assert_eq!(h.upstream.calls(CHAT_PATH), 1);
}

/// A repeat can land anywhere around the moment deja notices the first client has hung up:
/// while the pump still reads (it waits as a twin), after it stopped (a miss of its own), or
/// after it read the whole answer before noticing (a stored hit).
/// Either way it gets the whole answer, and only a miss goes upstream.
#[tokio::test]
async fn a_repeat_landing_around_a_hang_up_gets_the_whole_answer() {
    let h = Harness::start().await;
    h.upstream.set_chunk_delay(Duration::from_millis(5));
    let rounds = 60;
    let mut repeats_upstream = 0;
    for round in 0..rounds {
        let prompt = format!("round {round} one two three four five six seven eight");
        drop(start_streamed_miss(&h, &prompt).await);
        // The fake's answer takes ~60 ms; the repeat lands anywhere in it.
        tokio::time::sleep(Duration::from_micros(fastrand::u64(0..40_000))).await;
        let again = h.chat(&ask_stream(&prompt, false)).await;
        assert_eq!(again.status, 200, "round {round}: {}", again.text);
        assert!(
            again.ends_with_done() && again.content().ends_with(&prompt),
            "round {round}: not the whole answer ({:?}): {}",
            again.header("x-deja-match"),
            again.text
        );
        match again.cache_status() {
            "miss" => repeats_upstream += 1,
            // Waited as a twin, or found stored: the pump read the whole answer before it
            // noticed the hang-up.
            "hit" => assert!(
                matches!(again.header("x-deja-match"), Some("coalesced" | "exact")),
                "round {round}: x-deja-match {:?}",
                again.header("x-deja-match")
            ),
            other => panic!("round {round}: x-deja-cache {other}"),
        }
    }
    assert_eq!(h.upstream.calls(CHAT_PATH), rounds + repeats_upstream);
}
