//! `embedding.encoding_format`: the `openai` embedder asks for base64 vectors (little-endian
//! f32s, as the official SDKs do; 4x less to parse than JSON numbers) and reads them exactly;
//! `float` asks for JSON numbers, for servers that refuse base64.

use deja::config::EmbeddingEncoding;
use serde_json::Value;

use crate::support::fake_upstream::EMBEDDINGS_PATH;
use crate::support::proxy::{Harness, ask, at_cosine, axis};

async fn asked_and_read(encoding: Option<EmbeddingEncoding>, expected: &str) {
    let h = Harness::with(move |c| {
        if let Some(encoding) = encoding {
            c.embedding.encoding_format = encoding;
        }
    })
    .await;
    h.upstream
        .set_embedding("What is the capital of France?", axis());
    h.upstream
        .set_embedding("Tell me France's capital city", at_cosine(0.9625));
    h.upstream
        .set_embedding("What is the capital of Spain?", at_cosine(0.8125));

    assert_eq!(
        h.chat(&ask("What is the capital of France?"))
            .await
            .cache_status(),
        "miss"
    );
    let request = h.upstream.last_request(EMBEDDINGS_PATH).expect("embedded");
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["encoding_format"], expected);

    // The similarities come out of the decoded vectors: a wrong byte order or width would not
    // give these.
    let reworded = h.chat(&ask("Tell me France's capital city")).await;
    assert_eq!(reworded.header("x-deja-match"), Some("semantic"));
    assert_eq!(reworded.header("x-deja-similarity"), Some("0.9625"));
    let other = h.chat(&ask("What is the capital of Spain?")).await;
    assert_eq!(other.cache_status(), "miss");
    assert_eq!(other.header("x-deja-best-similarity"), Some("0.8125"));
}

#[tokio::test]
async fn vectors_are_asked_for_in_base64_by_default_and_read_exactly() {
    asked_and_read(None, "base64").await;
}

#[tokio::test]
async fn float_encoding_can_be_chosen_for_servers_without_base64() {
    asked_and_read(Some(EmbeddingEncoding::Float), "float").await;
}
