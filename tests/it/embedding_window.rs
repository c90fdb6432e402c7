//! A prompt longer than the `openai` embedding model's window uses the exact tier only: the
//! API's 400 for a too-long input is neither an outage warning nor a vector. (The local
//! embedder's window is tested with the real model in tests/it/local_embedding.rs.)

use crate::support::fake_upstream::{CHAT_PATH, EMBEDDINGS_PATH, EmbedMode};
use crate::support::proxy::{Harness, ask};

#[tokio::test]
async fn a_prompt_past_the_window_is_exact_only_and_says_so() {
    let h = Harness::start().await;
    h.upstream.set_embed_mode(EmbedMode::Window(40));
    let context = "Here is a long description of our refund policy and shipping rules. ".repeat(5);
    let first = format!("{context} Can I return an unused mug?");
    let second = format!("{context} Do you ship to Norway?");

    let reply = h.chat(&ask(&first)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.cache_status(), "miss");
    assert_eq!(reply.header("x-deja-semantic-skipped"), Some("too-long"));
    let other = h.chat(&ask(&second)).await;
    assert_eq!(other.cache_status(), "miss");
    assert_eq!(other.header("x-deja-semantic-skipped"), Some("too-long"));
    let repeat = h.chat(&ask(&first)).await;
    assert_eq!(repeat.header("x-deja-match"), Some("exact"));
    assert_eq!(h.upstream.calls(CHAT_PATH), 2);
    assert_eq!(h.cache().indexed(), 0, "nothing indexed without a vector");

    // A short prompt is embedded and hits semantically as before.
    h.chat(&ask("How do I reset my password?")).await;
    let reworded = h.chat(&ask("how do I reset my password")).await;
    assert_eq!(reworded.header("x-deja-match"), Some("semantic"));
    assert_eq!(reworded.header("x-deja-semantic-skipped"), None);
    assert_eq!(h.upstream.calls(EMBEDDINGS_PATH), 4);
}
