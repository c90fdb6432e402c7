//! The fake's `/v1/embeddings`: vectors, overrides, `dimensions`.

use super::*;

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
