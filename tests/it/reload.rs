//! A reload applies the upstream's address and key to the next request: a leaked key is
//! rotated by writing the new one to `upstream.api_key_file` and reloading.

use crate::support::admin::{ADMIN_TOKEN, with_admin};
use crate::support::fake_upstream::{CHAT_PATH, EMBEDDINGS_PATH, FakeUpstream};
use crate::support::proxy::{Harness, KEY_A, ask};
use deja::config::Secret;

const OLD_KEY: &str = "sk-upstream-leaked-key";
const NEW_KEY: &str = "sk-upstream-rotated-key";

fn bearer(request: &crate::support::fake_upstream::RecordedRequest) -> String {
    request.headers["authorization"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn reload_rotates_the_upstream_key_and_moves_the_base_url() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let key_file = dir.path().join("upstream.key");
    let h = Harness::with(|c| {
        with_admin(c);
        c.upstream.api_key = Some(Secret::new(OLD_KEY));
        c.source = Some(path.clone());
    })
    .await;
    let first = h.chat(&ask("What is the capital of France?")).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let before = h.upstream.last_request(CHAT_PATH).unwrap();
    assert_eq!(bearer(&before), format!("Bearer {OLD_KEY}"));

    // The key leaked: a new one in the secret file, and the upstream moved too.
    let moved = FakeUpstream::start().await;
    std::fs::write(&key_file, format!("{NEW_KEY}\n")).unwrap();
    let text = format!(
        "[upstream]\nbase_url = \"{}\"\napi_key_file = \"{}\"\n[admin]\ntoken = \"{ADMIN_TOKEN}\"\n\
         [cache]\nsimilarity_threshold = 0.9\n",
        moved.base_url(),
        key_file.display()
    );
    std::fs::write(&path, text).unwrap();
    let reloaded = h.admin("POST", "/admin/reload", None).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text);
    let needs_restart = reloaded.json()["needs_restart"].clone();
    assert!(
        !needs_restart.to_string().contains("upstream.api_key")
            && !needs_restart.to_string().contains("upstream.base_url"),
        "{needs_restart}"
    );

    let calls_before = h.upstream.total_calls();
    let second = h.chat(&ask("What is the capital of Peru?")).await;
    assert_eq!(second.status, 200, "{}", second.text);
    assert_eq!(h.upstream.total_calls(), calls_before, "the old upstream");
    let chat = moved.last_request(CHAT_PATH).expect("the new upstream");
    assert_eq!(bearer(&chat), format!("Bearer {NEW_KEY}"));
    // The prompt's embedding goes with the upstream's key too.
    let embedding = moved.last_request(EMBEDDINGS_PATH).expect("embedded");
    assert_eq!(bearer(&embedding), format!("Bearer {NEW_KEY}"));
    for request in moved.requests() {
        assert!(!format!("{:?}", request.headers).contains(OLD_KEY));
    }
    // The caller's own key never replaces the configured one.
    assert!(!format!("{:?}", chat.headers).contains(KEY_A));
}
