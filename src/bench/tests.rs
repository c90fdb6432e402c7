//! The quality bench on five hand-made pairs with hand-made vectors: the real planning and
//! cache, no model.

use std::collections::HashMap;

use super::metrics::{self, Mode, Pair, Verdict};
use super::quality::{Layout, TempCache, ask, measure, store_all};
use crate::cache::index::tests::random_unit;
use crate::config::CacheConfig;

const A1: &str = "How do I reset my password?";
const B1: &str = "How can I reset my password?";
const A2: &str = "Is it safe to eat raw eggs?";
const B2: &str = "Is it not safe to eat raw eggs?";
const A3: &str = "Are raw eggs not safe to eat?";
const A4: &str = "What's the capital of France?";
const A5: &str = "Tell me something funny";
const B5: &str = "Tell me a joke";

fn pair(id: &str, a: &str, b: &str, label: u8) -> Pair {
    Pair {
        id: id.into(),
        a: a.into(),
        b: b.into(),
        label,
        source: String::new(),
    }
}

/// p1: a paraphrase at cosine 0.96. p2: a negation at 0.98, wrong; verification rejects it
/// and the next candidate, A3 (0.90), is a paraphrase of B2 by p3. p3: the same query, whose
/// own `a` is A3. p4: a label-0 pair whose `b` is stored verbatim (A1): an exact hit, right.
/// p5: a paraphrase the embedding misses (0.5).
fn fixture() -> (Vec<Pair>, HashMap<String, Vec<f32>>) {
    let pairs = vec![
        pair("p1", A1, B1, 1),
        pair("p2", A2, B2, 0),
        pair("p3", A3, B2, 1),
        pair("p4", A4, A1, 0),
        pair("p5", A5, B5, 1),
    ];
    let unit = |v: [f32; 4]| {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.map(|x| x / norm).to_vec()
    };
    let vectors = [
        (A1, unit([1.0, 0.0, 0.0, 0.0])),
        (B1, unit([0.96, 0.28, 0.0, 0.0])),
        (A2, unit([0.0, 1.0, 0.0, 0.0])),
        (B2, unit([0.0, 0.97, 0.2, 0.0])),
        (A3, unit([0.0, 0.8, 0.6, 0.0])),
        (A4, unit([0.0, 0.0, 0.0, 1.0])),
        (A5, unit([0.0, 0.0, -1.0, 0.0])),
        (B5, unit([0.5, -0.5, -0.5, -0.5])),
    ];
    let vectors = vectors
        .into_iter()
        .map(|(text, v)| (text.to_string(), v))
        .collect();
    (pairs, vectors)
}

fn counts(row: &metrics::Row) -> (usize, usize, usize) {
    (row.right, row.wrong, row.miss)
}

#[test]
fn right_wrong_and_miss_through_the_real_cache() {
    let (pairs, vectors) = fixture();
    let config = CacheConfig::default();
    let (judged, traces, timings) =
        measure(&pairs, &vectors, &config, "fake", 0.70, Layout::Simulation).unwrap();
    assert_eq!(timings.entries, 5);
    assert!(
        judged[3].exact && judged[3].cosine.unwrap().verdict == Verdict::Right,
        "identical text"
    );
    assert_eq!(traces[1].verified.as_ref().unwrap().text, A3);
    assert_eq!(
        traces[2].cosine.as_ref().unwrap().pair.as_deref(),
        Some("p2")
    );

    let cosine = metrics::row(&judged, Mode::Cosine, 0.70);
    assert_eq!(counts(&cosine), (2, 2, 1), "p2 and p3 hit A2: wrong");
    assert_eq!(
        (cosine.label1, cosine.right_label1, cosine.exact_hits),
        (3, 1, 1)
    );
    assert!((cosine.hit_rate - 1.0 / 3.0).abs() < 1e-12);
    assert!((cosine.wrong_rate - 0.4).abs() < 1e-12);
    assert_eq!(cosine.precision, Some(0.5));

    let verified = metrics::row(&judged, Mode::Verified, 0.70);
    assert_eq!(
        counts(&verified),
        (4, 0, 1),
        "A3 answers B2 once A2 is rejected"
    );
    assert_eq!(verified.right_label1, 2);
    assert_eq!(verified.precision, Some(1.0));
    let f05 = 1.25 * (2.0 / 3.0) / (0.25 + 2.0 / 3.0);
    assert!((verified.f05 - f05).abs() < 1e-9);

    // Above A3's 0.90 the rejected A2 does not let anything through.
    let strict = metrics::row(&judged, Mode::Verified, 0.95);
    assert_eq!(counts(&strict), (2, 0, 3));
    let cosine_strict = metrics::row(&judged, Mode::Cosine, 0.98);
    assert_eq!(
        counts(&cosine_strict),
        (1, 0, 4),
        "only the exact hit is left"
    );
}

/// Pair by pair, a query meets only its own `a`: p3's query finds A3 (right) although A2
/// scores higher in the shared scope, and p4's verbatim copy of A1 is not there to hit.
#[test]
fn pairwise_layout_keeps_each_pair_alone() {
    let (pairs, vectors) = fixture();
    let config = CacheConfig::default();
    let (judged, traces, _) =
        measure(&pairs, &vectors, &config, "fake", 0.70, Layout::Pairwise).unwrap();
    let cosine = metrics::row(&judged, Mode::Cosine, 0.70);
    assert_eq!(
        (cosine.right, cosine.wrong, cosine.unlabelled, cosine.miss),
        (2, 1, 0, 2),
        "p1 and p3 right, p2 wrong, p4 and p5 miss"
    );
    assert_eq!(traces[2].cosine.as_ref().unwrap().text, A3);
    assert!(!judged[3].exact, "A1 is stored in p1's scope, not p4's");
    let verified = metrics::row(&judged, Mode::Verified, 0.70);
    assert_eq!(
        (verified.right, verified.wrong, verified.miss),
        (2, 0, 3),
        "the negation is rejected and nothing else is there"
    );
}

/// The derivation `measure` relies on: with verification on, one lookup at the lowest
/// threshold gives the same answer as a lookup at each threshold.
#[test]
fn single_lookup_decides_every_threshold() {
    let (pairs, vectors) = fixture();
    let config = CacheConfig::default();
    let (judged, _, _) =
        measure(&pairs, &vectors, &config, "fake", 0.70, Layout::Simulation).unwrap();
    for enabled in [false, true] {
        let mut config = config.clone();
        config.verify.enabled = enabled;
        let cache = TempCache::open(&config, "fake", "per-threshold").unwrap();
        store_all(&cache.cache, &pairs, &vectors, Layout::Simulation).unwrap();
        for threshold in metrics::thresholds() {
            for (pair, judged) in pairs.iter().zip(&judged) {
                let once = if enabled {
                    judged.verified
                } else {
                    judged.cosine
                }
                .filter(|found| found.similarity >= threshold)
                .map(|found| found.similarity);
                let direct = ask(&cache.cache, &pair.b, &vectors, threshold, "bench")
                    .unwrap()
                    .map(|hit| hit.similarity);
                assert_eq!(once, direct, "{} at {threshold}", pair.id);
            }
        }
    }
}

/// The bench looks up against the index as it settles: once `store_all` returns, every
/// vector of a scope past `hnsw_min_entries` is in its graph (none waiting or deferred), so
/// the figures do not depend on how far the background worker got on a busy machine.
#[test]
fn stored_vectors_are_all_indexed_before_the_lookups() {
    const TEXTS: usize = 800;
    let texts: Vec<String> = (0..TEXTS).map(|i| format!("question number {i}")).collect();
    let pairs: Vec<Pair> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| pair(&format!("p{i}"), text, "unused", 1))
        .collect();
    let mut rng = fastrand::Rng::with_seed(7);
    let vectors: HashMap<String, Vec<f32>> = texts
        .iter()
        .map(|text| (text.clone(), random_unit(&mut rng, 32)))
        .collect();
    let config = CacheConfig {
        hnsw_min_entries: 16,
        ..CacheConfig::default()
    };
    let cache = TempCache::open(&config, "fake", "settled").unwrap();
    store_all(&cache.cache, &pairs, &vectors, Layout::Simulation).unwrap();
    let backlog = cache.cache.index_backlog();
    assert_eq!(
        (backlog.pending, backlog.deferred, backlog.queued),
        (0, 0, 0)
    );
    assert_eq!(cache.cache.indexed(), TEXTS);
}

#[test]
fn output_names() {
    let name = |arg: &str| super::name_and_path(arg).0;
    assert_eq!(name("/data/paws-wiki/dev.jsonl"), "paws-dev");
    assert_eq!(name("/data/gptcache-mock/pairs.jsonl"), "gptcache-mock");
    assert_eq!(name("mine=/tmp/x.jsonl"), "mine");
}
