//! Property-style isolation check: many random requests from several tenants and namespaces,
//! with every prompt embedded to the same vector (so similarity alone would match anything) and
//! random threshold headers. No hit may carry an answer produced for another tenant or
//! namespace, and no header can widen what a request may hit.

use std::collections::{HashMap, HashSet};

use crate::support::proxy::{Harness, Reply, ask, axis};

const TENANTS: [&str; 3] = ["sk-tenant-a", "sk-tenant-b", "sk-tenant-c"];
const NAMESPACES: [&str; 2] = ["", "team-x"];
const PROMPTS: [&str; 5] = [
    "tell me a joke",
    "tell me a story",
    "give me a recipe",
    "suggest a movie",
    "recommend a book",
];

#[tokio::test]
async fn no_request_is_ever_answered_from_another_partition() {
    let h = Harness::start().await;
    for prompt in PROMPTS {
        h.upstream.set_embedding(prompt, axis());
    }
    let mut rng = fastrand::Rng::with_seed(20261128);
    // Every answer upstream produced, by the (tenant, namespace) that asked for it.
    let mut produced: HashMap<(usize, usize), HashSet<String>> = HashMap::new();
    let (mut hits, mut misses) = (0, 0);
    for _ in 0..300 {
        let tenant = rng.usize(..TENANTS.len());
        let namespace = rng.usize(..NAMESPACES.len());
        let threshold = format!("{:.2}", 0.5 + rng.f32() * 0.5);
        let mut headers = vec![("x-deja-threshold", threshold.as_str())];
        if !NAMESPACES[namespace].is_empty() {
            headers.push(("x-deja-namespace", NAMESPACES[namespace]));
        }
        let prompt = PROMPTS[rng.usize(..PROMPTS.len())];
        let reply = Reply::read(h.chat_with(TENANTS[tenant], &headers, &ask(prompt)).await).await;
        assert_eq!(reply.status, 200);
        let content = reply.content();
        let own = produced.entry((tenant, namespace)).or_default();
        match reply.cache_status() {
            "miss" => {
                misses += 1;
                own.insert(content);
            }
            "hit" => {
                hits += 1;
                assert!(
                    own.contains(&content),
                    "tenant {tenant} namespace {namespace:?} got a foreign answer: {content}"
                );
            }
            other => panic!("unexpected cache status {other}"),
        }
    }
    // The run must exercise both sides, or it proves nothing.
    assert!(hits > 100 && misses >= 6, "hits {hits}, misses {misses}");
}
