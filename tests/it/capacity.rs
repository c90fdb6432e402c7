//! `cache.max_entries` and `cache.max_bytes` through the real server: past a cap the least
//! recently used entry (last hit, or stored when never hit) leaves store and index together,
//! and recently hit entries survive.

use crate::support::fake_upstream::{CHAT_PATH, EMBED_DIM};
use crate::support::proxy::{Harness, KEY_B, Reply, ask};

/// Questions asked in these tests.
const QUESTIONS: usize = 300;

/// Question `i`'s embedding: a random unit vector. In 64 dimensions two of them have a cosine
/// far below the 0.9 threshold, so no question is a semantic hit for another.
fn embedding(i: usize) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(i as u64);
    let mut v: Vec<f32> = (0..EMBED_DIM).map(|_| rng.f32() - 0.5).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

async fn capped(max_entries: u64, max_bytes: u64) -> Harness {
    let h = Harness::with(|c| {
        c.cache.max_entries = max_entries;
        c.cache.max_bytes = max_bytes;
    })
    .await;
    for i in 0..QUESTIONS {
        h.upstream
            .set_embedding(&format!("question {i}"), embedding(i));
    }
    h
}

/// Asks question `i`; returns whether it was a cache hit.
async fn hit(h: &Harness, i: usize) -> bool {
    let reply = h.chat(&ask(&format!("question {i}"))).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.cache_status() == "hit"
}

fn assert_consistent(h: &Harness) {
    assert_eq!(
        h.cache().entries(),
        h.cache().indexed(),
        "store and index agree"
    );
}

#[tokio::test]
async fn entry_count_stays_at_the_cap() {
    let h = capped(3, 0).await;
    for i in 0..8 {
        assert!(!hit(&h, i).await);
        assert_eq!(h.cache().entries(), (i + 1).min(3), "after storing {i}");
        assert_consistent(&h);
    }
    // The three newest are the ones left.
    for i in 5..8 {
        assert!(hit(&h, i).await, "question {i}");
    }
}

#[tokio::test]
async fn least_recently_hit_is_evicted_and_a_recent_hit_survives() {
    let h = capped(3, 0).await;
    for i in 0..3 {
        assert!(!hit(&h, i).await);
    }
    // 0 is the oldest stored, but hit now: 1 becomes the least recently used.
    assert!(hit(&h, 0).await);
    assert!(!hit(&h, 3).await);
    assert_eq!(h.cache().entries(), 3);
    assert_consistent(&h);
    let calls = h.upstream.calls(CHAT_PATH);
    assert!(hit(&h, 0).await, "recently hit entry survives");
    assert!(hit(&h, 2).await);
    assert!(hit(&h, 3).await);
    assert_eq!(h.upstream.calls(CHAT_PATH), calls);
    assert!(!hit(&h, 1).await, "least recently used was evicted");
    assert_eq!(h.upstream.calls(CHAT_PATH), calls + 1);
}

#[tokio::test]
async fn byte_cap_keeps_the_newest_that_fit() {
    let h = capped(0, 64 * 1024).await;
    let mut stored = 0;
    while h.cache().stored_bytes() < 60 * 1024 || stored < 4 {
        assert!(!hit(&h, stored).await);
        stored += 1;
        assert!(
            stored < QUESTIONS - 20,
            "entries too small to reach the cap"
        );
    }
    for i in stored..stored + 20 {
        assert!(!hit(&h, i).await);
        assert!(h.cache().stored_bytes() <= 64 * 1024);
    }
    assert_consistent(&h);
    let kept = h.cache().entries();
    assert!(kept < stored + 20, "nothing was evicted");
    assert!(!hit(&h, 0).await, "the oldest went first");
    assert!(hit(&h, stored + 19).await, "the newest stays");
}

/// One answer larger than `max_bytes` on its own is not stored (and counted): storing it
/// would evict every other tenant's entries, then itself.
#[tokio::test]
async fn an_answer_larger_than_the_byte_cap_is_skipped_and_evicts_nothing() {
    let h = capped(0, 64 * 1024).await;
    for i in 0..3 {
        assert!(!hit(&h, i).await);
    }
    let other_tenant = Reply::read(h.chat_with(KEY_B, &[], &ask("question 3")).await).await;
    assert_eq!(other_tenant.cache_status(), "miss");
    let (entries, bytes) = (h.cache().entries(), h.cache().stored_bytes());
    assert_eq!(entries, 4);

    // The fake echoes the question, so the answer is as large: about 80 KB.
    let huge = ask(&format!("question {}", "padding ".repeat(10 * 1024)));
    for _ in 0..2 {
        let reply = h.chat(&huge).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.cache_status(), "miss", "never stored, so never a hit");
    }
    assert_eq!(h.cache().entries(), entries, "nothing was evicted");
    assert_eq!(h.cache().oversized_skipped(), 2);
    assert_eq!(h.cache().stored_bytes(), bytes);
    assert_consistent(&h);
    for i in 0..3 {
        assert!(hit(&h, i).await, "question {i} survived");
    }
    let other_tenant = Reply::read(h.chat_with(KEY_B, &[], &ask("question 3")).await).await;
    assert_eq!(
        other_tenant.cache_status(),
        "hit",
        "other tenant's entry survived"
    );
}
