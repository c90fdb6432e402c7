//! The cache's behaviour through the real server: exact and semantic hits, what must miss,
//! tenants, TTL, per-request controls, failure handling.

use std::time::Duration;

use crate::support::fake_upstream::{CHAT_PATH, ChatMode, EMBEDDINGS_PATH, EmbedMode};
use crate::support::proxy::{Harness, KEY_A, KEY_B, Reply, ask, ask_stream, at_cosine, axis};
use deja::cache::key::Hash32;
use deja::cache::{Cache, NewEntry};
use deja::clock::ManualClock;
use deja::config::CacheConfig;
use serde_json::json;

#[tokio::test]
async fn exact_repeat_is_served_from_cache() {
    let h = Harness::start().await;
    let first = h.chat(&ask("What is the capital of France?")).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.cache_status(), "miss");
    assert_eq!(
        first.header("x-request-id"),
        Some("req_1"),
        "upstream headers relayed"
    );

    let second = h.chat(&ask("What is the capital of France?")).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.cache_status(), "hit");
    assert_eq!(second.header("x-deja-match"), Some("exact"));
    assert_eq!(second.header("x-deja-similarity"), Some("1.0000"));
    assert!(second.header("x-deja-entry").is_some());
    assert_eq!(second.header("age"), Some("0"));
    assert_eq!(second.content(), first.content());
    assert_ne!(
        second.json()["id"],
        first.json()["id"],
        "fresh id per answer"
    );
    assert_eq!(second.json()["usage"], first.json()["usage"]);
    assert_eq!(h.upstream.calls(CHAT_PATH), 1);
    // The repeat needed no embedding: the exact tier answered first.
    assert_eq!(h.upstream.calls(EMBEDDINGS_PATH), 1);
}

#[tokio::test]
async fn reworded_question_hits_semantically_and_near_miss_does_not() {
    let h = Harness::start().await;
    h.upstream
        .set_embedding("What is the capital of France?", axis());
    h.upstream
        .set_embedding("Tell me France's capital city", at_cosine(0.95));
    h.upstream
        .set_embedding("What is the capital of Spain?", at_cosine(0.85));

    let original = h.chat(&ask("What is the capital of France?")).await;
    let reworded = h.chat(&ask("Tell me France's capital city")).await;
    assert_eq!(reworded.cache_status(), "hit");
    assert_eq!(reworded.header("x-deja-match"), Some("semantic"));
    assert_eq!(reworded.header("x-deja-similarity"), Some("0.9500"));
    assert_eq!(reworded.content(), original.content());

    let near_miss = h.chat(&ask("What is the capital of Spain?")).await;
    assert_eq!(near_miss.cache_status(), "miss");
    assert_eq!(near_miss.header("x-deja-best-similarity"), Some("0.8500"));
    assert!(near_miss.content().contains("Spain"));
    assert_eq!(h.upstream.calls(CHAT_PATH), 2);
}

#[tokio::test]
async fn the_same_text_from_another_participant_is_not_a_hit() {
    // A group chat: the last messages differ only in `name`. Their texts embed to the same
    // vector, so only the scope can tell them apart.
    let h = Harness::start().await;
    let from = |name: &str| {
        let mut body = ask("Say hello to me by name");
        body["messages"][1]["name"] = json!(name);
        body
    };
    let alice = h.chat(&from("alice")).await;
    assert_eq!(alice.cache_status(), "miss");
    let bob = h.chat(&from("bob")).await;
    assert_eq!(bob.cache_status(), "miss", "{:?}", bob.headers);
    assert_eq!(h.upstream.calls(CHAT_PATH), 2);
    let alice_again = h.chat(&from("alice")).await;
    assert_eq!(alice_again.header("x-deja-match"), Some("exact"));
    assert_eq!(alice_again.content(), alice.content());
}

#[tokio::test]
async fn verification_rejects_a_similar_prompt_with_other_numbers_or_negation() {
    let h = Harness::start().await;
    for text in [
        "What is 2+2?",
        "What is 2+3?",
        "Is it safe?",
        "Is it not safe?",
    ] {
        h.upstream.set_embedding(text, axis());
    }
    h.chat(&ask("What is 2+2?")).await;
    let other_number = h.chat(&ask("What is 2+3?")).await;
    assert_eq!(other_number.cache_status(), "miss");
    assert_eq!(
        other_number.header("x-deja-best-similarity"),
        Some("1.0000")
    );
    assert_eq!(other_number.header("x-deja-verify-rejected"), Some("1"));

    let off = Harness::with(|c| c.cache.verify.enabled = false).await;
    off.upstream.set_embedding("Is it safe?", axis());
    off.upstream.set_embedding("Is it not safe?", axis());
    off.chat(&ask("Is it safe?")).await;
    assert_eq!(
        off.chat(&ask("Is it not safe?")).await.cache_status(),
        "hit",
        "similarity alone"
    );
    h.chat(&ask("Is it safe?")).await;
    assert_eq!(h.chat(&ask("Is it not safe?")).await.cache_status(), "miss");
}

#[tokio::test]
async fn anything_else_that_shapes_the_answer_must_match() {
    let h = Harness::start().await;
    let question = "What is the capital of France?";
    h.chat(&ask(question)).await;

    let mut other_system = ask(question);
    other_system["messages"][0]["content"] = json!("Answer in French.");
    let mut with_tools = ask(question);
    with_tools["tools"] =
        json!([{"type": "function", "function": {"name": "lookup", "parameters": {}}}]);
    let mut earlier_turn = ask(question);
    earlier_turn["messages"] = json!([
        {"role": "user", "content": "Let's talk about Germany."},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": question}
    ]);
    let mut other_model = ask(question);
    other_model["model"] = json!("gpt-4o");
    let mut sampling = ask(question);
    sampling["temperature"] = json!(1.5);
    let mut format = ask(question);
    format["response_format"] = json!({"type": "json_object"});

    for (what, body) in [
        ("system prompt", other_system),
        ("tools", with_tools),
        ("earlier turn", earlier_turn),
        ("model", other_model),
        ("temperature", sampling),
        ("response_format", format),
    ] {
        let reply = h.chat(&body).await;
        assert_eq!(reply.cache_status(), "miss", "a different {what} must miss");
    }
    assert_eq!(h.upstream.calls(CHAT_PATH), 7);
}

#[tokio::test]
async fn tenants_never_share_unless_configured() {
    let h = Harness::start().await;
    let body = ask("What is the capital of France?");
    Reply::read(h.chat_with(KEY_A, &[], &body).await).await;
    let other = Reply::read(h.chat_with(KEY_B, &[], &body).await).await;
    assert_eq!(
        other.cache_status(),
        "miss",
        "another key must not see A's entry"
    );
    let same = Reply::read(h.chat_with(KEY_A, &[], &body).await).await;
    assert_eq!(same.cache_status(), "hit");
    assert_eq!(h.upstream.calls(CHAT_PATH), 2);

    let shared = Harness::with(|c| c.cache.shared = true).await;
    Reply::read(shared.chat_with(KEY_A, &[], &body).await).await;
    let other = Reply::read(shared.chat_with(KEY_B, &[], &body).await).await;
    assert_eq!(other.cache_status(), "hit", "cache.shared = true shares");
}

#[tokio::test]
async fn namespace_partitions_further() {
    let h = Harness::start().await;
    let body = ask("What is the capital of France?");
    h.chat_headers(&[("x-deja-namespace", "team-a")], &body)
        .await;
    let other = h
        .chat_headers(&[("x-deja-namespace", "team-b")], &body)
        .await;
    assert_eq!(other.cache_status(), "miss");
    let none = h.chat(&body).await;
    assert_eq!(none.cache_status(), "miss");
    let same = h
        .chat_headers(&[("x-deja-namespace", "team-a")], &body)
        .await;
    assert_eq!(same.cache_status(), "hit");
    let bad = h
        .chat_headers(&[("x-deja-namespace", "no spaces")], &body)
        .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn expired_entries_are_never_served_and_are_swept() {
    let h = Harness::with(|c| c.cache.ttl_secs = 60).await;
    let body = ask("What is the capital of France?");
    h.chat(&body).await;
    h.clock.advance(Duration::from_secs(30));
    let young = h.chat(&body).await;
    assert_eq!(young.cache_status(), "hit");
    assert_eq!(young.header("age"), Some("30"));

    h.clock.advance(Duration::from_secs(31));
    let expired = h.chat(&body).await;
    assert_eq!(expired.cache_status(), "miss");
    assert_eq!(h.upstream.calls(CHAT_PATH), 2);

    // The fresh answer replaced the expired one; expire it too and let the sweeper run.
    wait_until(|| h.cache().entries() == 1).await;
    h.clock.advance(Duration::from_secs(61));
    wait_until(|| h.cache().entries() == 0 && h.cache().indexed() == 0).await;
}

#[tokio::test]
async fn max_age_limits_what_a_request_accepts() {
    let h = Harness::start().await;
    let body = ask("What is the capital of France?");
    h.chat(&body).await;
    h.clock.advance(Duration::from_secs(100));
    let fresh_enough = h
        .chat_headers(&[("cache-control", "max-age=200")], &body)
        .await;
    assert_eq!(fresh_enough.cache_status(), "hit");
    let too_old = h
        .chat_headers(&[("cache-control", "max-age=50")], &body)
        .await;
    assert_eq!(too_old.cache_status(), "miss");
    assert_eq!(h.upstream.calls(CHAT_PATH), 2);
}

#[tokio::test]
async fn max_age_never_shortens_the_entry_others_rely_on() {
    let h = Harness::with(|c| c.cache.ttl_secs = 600).await;
    let body = ask("What is the capital of France?");
    h.chat(&body).await;
    h.clock.advance(Duration::from_secs(10));
    // max-age=0 accepts no entry, so this goes upstream; its answer must not be stored to
    // expire at once, deleting the entry everyone else hits.
    let strict = h
        .chat_headers(&[("cache-control", "max-age=0")], &body)
        .await;
    assert_eq!(strict.cache_status(), "miss");
    let after = h.chat(&body).await;
    assert_eq!(after.cache_status(), "hit", "max-age=0 emptied the entry");
    assert_eq!(
        after.content(),
        strict.content(),
        "the fresh answer is served"
    );

    // A small max-age refreshes the entry; what it stores lives for the configured TTL.
    h.clock.advance(Duration::from_secs(20));
    let short = h
        .chat_headers(&[("cache-control", "max-age=5")], &body)
        .await;
    assert_eq!(short.cache_status(), "miss");
    h.clock.advance(Duration::from_secs(300));
    let later = h.chat(&body).await;
    assert_eq!(later.cache_status(), "hit", "max-age=5 shortened the entry");
    assert_eq!(later.content(), short.content());
    assert_eq!(h.upstream.calls(CHAT_PATH), 3);
}

#[tokio::test]
async fn no_cache_refreshes_and_no_store_leaves_nothing() {
    let h = Harness::start().await;
    let body = ask("What is the capital of France?");
    let first = h.chat(&body).await;
    let refreshed = h
        .chat_headers(&[("cache-control", "no-cache")], &body)
        .await;
    assert_eq!(refreshed.cache_status(), "miss");
    assert_ne!(refreshed.content(), first.content(), "went upstream");
    let after = h.chat(&body).await;
    assert_eq!(
        after.content(),
        refreshed.content(),
        "no-cache still stores"
    );

    let unstored = ask("Do not remember this");
    let reply = h
        .chat_headers(&[("cache-control", "no-store")], &unstored)
        .await;
    assert_eq!(reply.cache_status(), "miss");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.chat(&unstored).await.cache_status(), "miss");
}

#[tokio::test]
async fn threshold_header_raises_but_never_lowers() {
    let h = Harness::start().await;
    h.upstream.set_embedding("original", axis());
    h.upstream.set_embedding("close", at_cosine(0.95));
    h.upstream.set_embedding("far", at_cosine(0.80));
    h.chat(&ask("original")).await;
    let lax = h
        .chat_headers(&[("x-deja-threshold", "0.5")], &ask("far"))
        .await;
    assert_eq!(
        lax.cache_status(),
        "miss",
        "a request cannot lower the threshold"
    );
    let strict = h
        .chat_headers(&[("x-deja-threshold", "0.99")], &ask("close"))
        .await;
    assert_eq!(strict.cache_status(), "miss");
    assert_eq!(
        h.chat(&ask("close")).await.cache_status(),
        "hit",
        "0.95 passes the default"
    );
    let invalid = h
        .chat_headers(&[("x-deja-threshold", "2")], &ask("far"))
        .await;
    assert_eq!(invalid.status, 400);
    assert_eq!(invalid.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn per_model_threshold_applies() {
    let h = Harness::with(|c| {
        c.cache.model_thresholds.insert("gpt-4o-mini".into(), 0.99);
    })
    .await;
    h.upstream.set_embedding("original", axis());
    h.upstream.set_embedding("close", at_cosine(0.95));
    h.chat(&ask("original")).await;
    assert_eq!(h.chat(&ask("close")).await.cache_status(), "miss");
}

#[tokio::test]
async fn multiple_choices_bypass() {
    let h = Harness::start().await;
    let mut body = ask("Give me two names");
    body["n"] = json!(2);
    assert_eq!(h.chat(&body).await.cache_status(), "bypass");
    assert_eq!(h.chat(&body).await.cache_status(), "bypass");
    assert_eq!(h.upstream.calls(CHAT_PATH), 2);
}

#[tokio::test]
async fn disabled_cache_only_relays() {
    let h = Harness::with(|c| c.cache.enabled = false).await;
    let body = ask("What is the capital of France?");
    assert_eq!(h.chat(&body).await.cache_status(), "bypass");
    assert_eq!(h.chat(&body).await.cache_status(), "bypass");
    assert_eq!(h.upstream.calls(CHAT_PATH), 2);
}

#[tokio::test]
async fn embedding_outage_degrades_to_a_miss() {
    let h = Harness::with(|c| c.embedding.timeout_ms = 300).await;
    h.upstream.set_embed_mode(EmbedMode::Status(500));
    let reply = h.chat(&ask("What is the capital of France?")).await;
    assert_eq!((reply.status, reply.cache_status()), (200, "miss"));
    assert!(reply.content().contains("France"));

    h.upstream
        .set_embed_mode(EmbedMode::Stall(Duration::from_secs(5)));
    let started = std::time::Instant::now();
    let reply = h.chat(&ask("What is the capital of Italy?")).await;
    assert_eq!((reply.status, reply.cache_status()), (200, "miss"));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "embedding timeout applied"
    );

    // The exact tier still works without embeddings.
    let repeat = h.chat(&ask("What is the capital of France?")).await;
    assert_eq!(repeat.cache_status(), "hit");
}

#[tokio::test]
async fn upstream_errors_are_relayed_and_never_cached() {
    // One attempt per request: retries are tests/it/resilience.rs's subject.
    let h = Harness::with(|c| c.upstream.retry.max_attempts = 1).await;
    let body = ask("What is the capital of France?");
    let error = r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
    h.upstream
        .set_chat_mode(ChatMode::Status(429, error.into()));
    let reply = h.chat(&body).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.text, error);
    h.upstream.set_chat_mode(ChatMode::BrokenJson);
    let reply = h.chat(&body).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text, r#"{"id": "#, "relayed verbatim");
    h.upstream.set_chat_mode(ChatMode::Normal);
    let reply = h.chat(&body).await;
    assert_eq!(reply.cache_status(), "miss");
    assert_eq!(h.chat(&body).await.cache_status(), "hit");
    assert_eq!(h.upstream.calls(CHAT_PATH), 3);
}

#[tokio::test]
async fn concurrent_identical_requests_make_one_upstream_call() {
    let h = Harness::start().await;
    h.upstream.set_latency(Duration::from_millis(400));
    let body = ask("What is the capital of France?");
    let replies = futures_util::future::join_all((0..8).map(|_| h.chat(&body))).await;
    assert_eq!(h.upstream.calls(CHAT_PATH), 1);
    let content = replies[0].content();
    assert!(
        replies
            .iter()
            .all(|r| r.status == 200 && r.content() == content)
    );
    let coalesced = replies
        .iter()
        .filter(|r| r.header("x-deja-match") == Some("coalesced"))
        .count();
    assert_eq!(coalesced, 7);
}

#[tokio::test]
async fn concurrent_identical_streams_make_one_upstream_call() {
    let h = Harness::start().await;
    h.upstream.set_chunk_delay(Duration::from_millis(50));
    let body = ask_stream("Tell me a story about a cache", true);
    let replies = futures_util::future::join_all((0..4).map(|_| h.chat(&body))).await;
    assert_eq!(h.upstream.calls(CHAT_PATH), 1);
    let content = replies[0].content();
    assert!(!content.is_empty());
    for reply in &replies {
        assert!(reply.is_stream() && reply.ends_with_done());
        assert_eq!(reply.content(), content);
    }
}

#[tokio::test]
async fn a_follower_takes_a_semantic_answer_only_at_its_own_threshold() {
    let h = Harness::start().await;
    h.upstream
        .set_embedding("What is the capital of France?", axis());
    h.upstream
        .set_embedding("Tell me France's capital city", at_cosine(0.95));
    let original = h.chat(&ask("What is the capital of France?")).await;
    assert_eq!(original.cache_status(), "miss");
    // A slow embedding keeps the first reworded request in the lead while the others join.
    h.upstream
        .set_embed_mode(EmbedMode::Stall(Duration::from_millis(500)));
    let body = ask("Tell me France's capital city");
    let leading = async {
        let embeddings = h.upstream.calls(EMBEDDINGS_PATH);
        let reply = h.chat(&body);
        tokio::pin!(reply);
        // Poll the request until its embedding call has reached the upstream.
        tokio::select! {
            _ = &mut reply => panic!("answered before the followers joined"),
            _ = wait_until(|| h.upstream.calls(EMBEDDINGS_PATH) > embeddings) => {}
        }
        let strict = h.chat_headers(&[("x-deja-threshold", "0.99")], &body);
        let lenient = h.chat(&body);
        tokio::join!(reply, strict, lenient)
    };
    let (leader, strict, lenient) = leading.await;
    assert_eq!(leader.header("x-deja-match"), Some("semantic"));
    assert_eq!(leader.content(), original.content());
    // Alone, the strict request misses; waiting on a twin must not change that.
    assert_eq!(strict.cache_status(), "miss", "{:?}", strict.headers);
    assert!(strict.content().contains("Tell me France's capital city"));
    // The lenient one got the stored answer for another prompt, and is told so.
    assert_eq!(lenient.cache_status(), "hit");
    assert_eq!(lenient.header("x-deja-match"), Some("semantic"));
    assert_eq!(lenient.header("x-deja-similarity"), Some("0.9500"));
    assert_eq!(
        lenient.header("x-deja-entry"),
        leader.header("x-deja-entry")
    );
    assert_eq!(lenient.content(), original.content());
    assert_eq!(h.upstream.calls(CHAT_PATH), 2);
}

#[tokio::test]
async fn failed_leader_releases_its_followers() {
    let h = Harness::start().await;
    h.upstream.set_chat_mode(ChatMode::Status(
        500,
        r#"{"error":{"message":"boom"}}"#.into(),
    ));
    h.upstream.set_latency(Duration::from_millis(300));
    let body = ask("What is the capital of France?");
    let replies = futures_util::future::join_all((0..3).map(|_| h.chat(&body))).await;
    assert!(replies.iter().all(|r| r.status == 500));
}

/// Concurrent stores under one exact key (here `no-cache` refreshes, which never coalesce)
/// replace each other in any interleaving; the index must end up with exactly the vector of
/// the surviving entry, or vectors of deleted entries crowd out the few candidates a lookup
/// examines.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refreshes_leave_index_and_store_in_agreement() {
    let h = Harness::start().await;
    let question = "How do I reset my password?";
    let paraphrase = "How can I reset my password?";
    h.upstream.set_embedding(question, axis());
    h.upstream.set_embedding(paraphrase, at_cosine(0.977));
    let body = ask(question);
    for round in 0..10 {
        let refreshes = (0..32).map(|_| h.chat_headers(&[("cache-control", "no-cache")], &body));
        for reply in futures_util::future::join_all(refreshes).await {
            assert_eq!(reply.status, 200, "{}", reply.text);
        }
        assert_eq!(h.cache().entries(), 1, "round {round}");
        assert_eq!(
            h.cache().indexed(),
            h.cache().entries(),
            "round {round}: vectors of deleted entries left in the index"
        );
    }
    let reworded = h.chat(&ask(paraphrase)).await;
    assert_eq!(reworded.cache_status(), "hit");
    assert_eq!(reworded.header("x-deja-match"), Some("semantic"));
}

/// The same race without HTTP in between, so far more stores overlap: threads storing under
/// one exact key, each store replacing the one before.
#[test]
fn concurrent_stores_under_one_key_leave_one_vector() {
    let dir = tempfile::tempdir().unwrap();
    let config = CacheConfig {
        dir: dir.path().to_path_buf(),
        ..CacheConfig::default()
    };
    let cache = Cache::open(&config, "e", ManualClock::starting_now()).unwrap();
    let entry = || NewEntry {
        scope: Hash32([1; 32]),
        exact: Hash32([2; 32]),
        model: "m".into(),
        response: "{}".into(),
        has_usage: true,
        vector: Some(axis()),
        prompt: None,
        owner: Default::default(),
    };
    std::thread::scope(|threads| {
        for _ in 0..8 {
            threads.spawn(|| {
                for _ in 0..200 {
                    cache.insert(entry()).unwrap();
                }
            });
        }
    });
    assert_eq!(cache.entries(), 1);
    assert_eq!(
        cache.indexed(),
        1,
        "vectors of replaced entries left behind"
    );
}

async fn wait_until(condition: impl Fn() -> bool) {
    for _ in 0..100 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached within 5 s");
}
