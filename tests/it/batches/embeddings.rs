//! Batches for `/v1/embeddings` go through the synchronous call's per-input cache.

use super::*;
use crate::support::fake_upstream::EMBEDDINGS_PATH;

const MODEL: &str = "text-embedding-3-small";

fn embed_line(custom_id: &str, input: Value) -> Value {
    json!({"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings",
        "body": {"model": MODEL, "input": input}})
}

async fn embed(h: &Harness, input: Value) -> (Value, Option<String>) {
    let response = h
        .client
        .post(h.url("/v1/embeddings"))
        .bearer_auth(KEY_A)
        .json(&json!({"model": MODEL, "input": input}))
        .send()
        .await
        .expect("embeddings");
    assert_eq!(response.status(), 200);
    let cached = response
        .headers()
        .get("x-deja-cached-inputs")
        .map(|v| v.to_str().unwrap().to_string());
    (response.json().await.expect("json"), cached)
}

fn vectors(body: &Value) -> Vec<Value> {
    body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|item| item["embedding"].clone())
        .collect()
}

#[tokio::test]
async fn cached_lines_are_answered_and_answers_stored_per_input() {
    let h = harness().await;
    h.upstream.set_batch_polls(1);
    let (synchronous, _) = embed(&h, json!(["alpha", "beta"])).await;
    let (alpha, beta) = (
        vectors(&synchronous)[0].clone(),
        vectors(&synchronous)[1].clone(),
    );
    assert_eq!(h.upstream.calls(EMBEDDINGS_PATH), 1);
    let input = jsonl(&[
        embed_line("both", json!(["beta", "alpha"])),
        embed_line("one", json!("alpha")),
        embed_line("partly", json!(["gamma", "alpha"])),
        embed_line("partly-again", json!(["gamma", "alpha"])),
    ]);
    let file = upload(&h, KEY_A, &input).await;
    let response = h
        .client
        .post(h.url("/v1/batches"))
        .bearer_auth(KEY_A)
        .json(&json!({"input_file_id": file, "endpoint": "/v1/embeddings",
            "completion_window": "24h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let batch: Value = response.json().await.unwrap();
    let id = batch["id"].as_str().unwrap();
    assert!(id.starts_with("batch_deja_"), "{batch}");
    assert_eq!(batch["endpoint"], "/v1/embeddings");
    // Only the line with an uncached input goes upstream, once.
    assert_eq!(custom_ids(&h.upstream.batch_lines()), ["partly"]);

    let done = ended(&h, id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let output = file_lines(&h, &done["output_file_id"]).await;
    assert_eq!(
        custom_ids(&output),
        ["both", "one", "partly", "partly-again"]
    );
    let body = |i: usize| &output[i]["response"]["body"];
    assert_eq!(vectors(body(0)), [beta.clone(), alpha.clone()]);
    assert_eq!(body(0)["object"], "list");
    assert_eq!(body(0)["usage"]["total_tokens"], 0);
    assert_eq!(vectors(body(1)), std::slice::from_ref(&alpha));
    assert_eq!(vectors(body(2))[1], alpha);
    assert_eq!(vectors(body(3)), vectors(body(2)));

    // The batch's answer is now in the synchronous call's cache, per input.
    let (again, cached) = embed(&h, json!(["gamma"])).await;
    assert_eq!(cached.as_deref(), Some("1/1"));
    assert_eq!(vectors(&again)[0], vectors(body(2))[0]);
    assert_eq!(h.upstream.calls(EMBEDDINGS_PATH), 1);
    let text = h.metrics().await;
    let series = "deja_batch_lines_total{outcome=\"cached\"}";
    assert_eq!(metric(&text, series), 2.0);
}
