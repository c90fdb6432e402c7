//! `embedding.dimensions`: the `openai` embedder asks for shorter vectors, the index compares
//! those, and a cache filled with vectors of another length does not mix them with the new ones.

use std::path::Path;

use crate::support::fake_upstream::{EMBED_DIM, EMBEDDINGS_PATH};
use crate::support::proxy::{Harness, ask};
use serde_json::Value;

const SHORT: usize = 16;

/// A unit vector along axes 0 and `other`.
fn two_axes(other: usize) -> Vec<f32> {
    let mut v = vec![0.0; EMBED_DIM];
    v[0] = 0.5f32.sqrt();
    v[other] = 0.5f32.sqrt();
    v
}

/// "alpha" and "beta" share axis 0 and differ beyond the first `SHORT` values: cosine 0.5 at
/// full length, 1 once shortened to `SHORT`.
async fn start(dir: &Path, dimensions: Option<usize>) -> Harness {
    let dir = dir.to_path_buf();
    let h = Harness::with(move |c| {
        c.cache.dir = dir;
        c.embedding.dimensions = dimensions;
    })
    .await;
    h.upstream.set_embedding("alpha", two_axes(SHORT + 10));
    h.upstream.set_embedding("beta", two_axes(SHORT + 20));
    h
}

#[tokio::test]
async fn shorter_vectors_are_asked_for_compared_and_never_mixed_with_others() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), Some(SHORT)).await;
    assert_eq!(h.chat(&ask("alpha")).await.cache_status(), "miss");
    let request = h.upstream.last_request(EMBEDDINGS_PATH).expect("embedded");
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["dimensions"], SHORT);
    // Alike in their first SHORT values: a semantic hit on the shortened vectors.
    let beta = h.chat(&ask("beta")).await;
    assert_eq!(beta.header("x-deja-match"), Some("semantic"));
    assert_eq!(h.cache().indexed(), 1);
    h.proxy.shutdown().await;

    // Back to the model's own length: the short vectors are dropped, not compared.
    let h = start(dir.path(), None).await;
    assert_eq!(h.cache().indexed(), 0, "vectors of another length dropped");
    assert_eq!(
        h.chat(&ask("alpha")).await.header("x-deja-match"),
        Some("exact")
    );
    let beta = h.chat(&ask("beta")).await;
    assert_eq!(beta.cache_status(), "miss", "0.5 apart at full length");
    let request = h.upstream.last_request(EMBEDDINGS_PATH).expect("embedded");
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body.get("dimensions"), None);
}
