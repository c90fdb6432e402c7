//! Verification of numbers through the real server, with the fake upstream's bag-of-words
//! embeddings: prompts that share every other word score near 1, so only the numbers check
//! stands between them and the other prompt's answer.

use crate::support::fake_upstream::CHAT_PATH;
use crate::support::proxy::{Harness, Reply, ask};

/// Long enough that one changed word keeps the bag-of-words cosine above the threshold.
const CONTEXT: &str = "Please answer briefly and precisely, using the standard conventions \
                       of the textbook we use in our evening mathematics course:";

fn prompt(question: &str) -> String {
    format!("{CONTEXT} {question}")
}

/// Asks `first` then `second` in a namespace of their own; returns the second reply.
async fn second_of(h: &Harness, namespace: &str, first: &str, second: &str) -> Reply {
    let headers = [("x-deja-namespace", namespace)];
    let stored = h.chat_headers(&headers, &ask(&prompt(first))).await;
    assert_eq!(stored.cache_status(), "miss", "{first:?}");
    h.chat_headers(&headers, &ask(&prompt(second))).await
}

#[tokio::test]
async fn a_changed_number_is_not_served_the_other_answer() {
    let h = Harness::start().await;
    let changed = [
        ("Is .25 a rational number?", "Is 25 a rational number?"),
        (
            "Which customer placed order 123456789012345678?",
            "Which customer placed order 123456789012345679?",
        ),
        ("What is 2 squared?", "What is \u{FF13} squared?"),
        ("What is 2 squared?", "What is \u{0663} squared?"),
        ("What is 2 squared?", "What is \u{06F3} squared?"),
        (
            "Is -3 a root of the polynomial?",
            "Is 3 a root of the polynomial?",
        ),
    ];
    for (i, (first, second)) in changed.iter().enumerate() {
        let reply = second_of(&h, &format!("changed-{i}"), first, second).await;
        assert_eq!(reply.cache_status(), "miss", "{second:?} after {first:?}");
        assert_eq!(
            reply.header("x-deja-verify-rejected"),
            Some("1"),
            "{second:?}: the candidate was above the threshold and turned down"
        );
    }
    assert_eq!(h.upstream.calls(CHAT_PATH), 2 * changed.len());
}

#[tokio::test]
async fn the_same_number_written_another_way_still_hits() {
    let h = Harness::start().await;
    let same = [
        ("Is 1.50 enough?", "Is 1.5 enough?"),
        ("Is .25 a rational number?", "Is 0.25 a rational number?"),
        ("What is 1,000 doubled?", "What is 1000 doubled?"),
        ("What is 2 squared?", "What is \u{FF12} squared?"),
        ("What is 2 squared?", "What is \u{0662} squared?"),
        ("Is -3 a root?", "Is \u{2212}3 a root?"),
    ];
    for (i, (first, second)) in same.iter().enumerate() {
        let reply = second_of(&h, &format!("same-{i}"), first, second).await;
        assert_eq!(reply.cache_status(), "hit", "{second:?} after {first:?}");
        assert_eq!(reply.header("x-deja-match"), Some("semantic"), "{second:?}");
    }
}
