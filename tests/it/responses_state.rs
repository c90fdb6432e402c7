//! The Responses API is cached by default, `store` true or absent included: a hit on a
//! response the upstream stored carries the upstream's ids, so `previous_response_id` and
//! `GET /v1/responses/{id}` keep working after it.

use crate::support::proxy::{Harness, KEY_A, Reply};
use serde_json::{Value, json};

const RESPONSES: &str = "/v1/responses";

async fn post(h: &Harness, body: &Value) -> Reply {
    let request = h
        .client
        .post(h.url(RESPONSES))
        .bearer_auth(KEY_A)
        .json(body);
    Reply::read(request.send().await.expect("proxy answers")).await
}

async fn retrieve(h: &Harness, id: &str) -> Reply {
    let request = h
        .client
        .get(h.url(&format!("{RESPONSES}/{id}")))
        .bearer_auth(KEY_A);
    Reply::read(request.send().await.expect("proxy answers")).await
}

/// What a typical app sends: no `store`, so the upstream stores the response.
fn typical(question: &str) -> Value {
    json!({"model": "gpt-4.1-mini", "input": question})
}

#[tokio::test]
async fn a_stored_response_is_cached_and_its_hit_can_be_retrieved_and_chained() {
    let h = Harness::start().await;
    let body = typical("What is the capital of France?");
    let miss = post(&h, &body).await;
    assert_eq!(miss.cache_status(), "miss");
    let hit = post(&h, &body).await;
    assert_eq!(hit.cache_status(), "hit");
    assert_eq!(h.upstream.calls(RESPONSES), 1);
    assert_eq!(
        hit.json(),
        miss.json(),
        "the upstream's response, ids included"
    );

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let replay = post(&h, &streamed).await;
    assert_eq!(replay.cache_status(), "hit");
    let completed = crate::support::sse::named_events(&replay.text)
        .pop()
        .unwrap();
    assert_eq!(completed.1["response"]["id"], miss.json()["id"]);

    let id = hit.json()["id"].as_str().unwrap().to_string();
    let retrieved = retrieve(&h, &id).await;
    assert_eq!(retrieved.status, 200, "{}", retrieved.text);
    assert_eq!(retrieved.json()["output"], hit.json()["output"]);

    let mut chained = typical("And of Italy?");
    chained["previous_response_id"] = json!(id);
    let next = post(&h, &chained).await;
    assert_eq!(next.status, 200, "{}", next.text);
    assert_eq!(
        next.cache_status(),
        "bypass",
        "chained requests stay uncached"
    );
}

#[tokio::test]
async fn an_unstored_response_never_answers_a_stored_request() {
    let h = Harness::start().await;
    let mut unstored = typical("Why is the sky blue?");
    unstored["store"] = json!(false);
    assert_eq!(post(&h, &unstored).await.cache_status(), "miss");
    let hit = post(&h, &unstored).await;
    assert_eq!(hit.cache_status(), "hit");
    assert_eq!(
        retrieve(&h, hit.json()["id"].as_str().unwrap())
            .await
            .status,
        404
    );

    let stored = typical("Why is the sky blue?");
    let miss = post(&h, &stored).await;
    assert_eq!(
        miss.cache_status(),
        "miss",
        "its id would not be retrievable"
    );
    assert_eq!(
        retrieve(&h, miss.json()["id"].as_str().unwrap())
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_shared_cache_bypasses_stored_responses_unless_told_otherwise() {
    let body = typical("What is the capital of France?");
    let shared = Harness::with(|c| c.cache.shared = true).await;
    for _ in 0..2 {
        assert_eq!(post(&shared, &body).await.cache_status(), "bypass");
    }
    let allowed = Harness::with(|c| {
        c.cache.shared = true;
        c.cache.cache_stored_responses = true;
    })
    .await;
    assert_eq!(post(&allowed, &body).await.cache_status(), "miss");
    assert_eq!(post(&allowed, &body).await.cache_status(), "hit");
}
