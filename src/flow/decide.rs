//! The cache decision, as a value: exact tier, then the in-flight twin, then the semantic
//! tier, then (with `[redis]`) the twin in flight on another replica. The proxy,
//! `/admin/lookup` and `deja bench quality` all call `decide`, so what a request gets, what
//! the admin call explains and what the bench measures cannot disagree.
//!
//! Deciding has no effect on the response: it only looks up (and, for the proxy, joins the
//! twin in flight). Rendering a hit and forwarding a miss act on the value it returns.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;

use super::{Lookup, SKIPPED_TOO_LONG};
use crate::cache::inflight::Claim;
use crate::cache::inflight::{Coalescer, Leader, Matched, Role, Shared};
use crate::cache::store::StoreError;
use crate::cache::{Cache, Hit, Requirements};
use crate::embed::{EmbedError, Embedder};

/// What one request gets from the cache.
pub(crate) enum Decision {
    /// A stored answer; `leader` (when this request led its twins) hands it on to them.
    /// `best` is the best semantic candidate seen (verification may have rejected it).
    Hit {
        hit: Hit,
        leader: Option<Leader>,
        best: Option<f32>,
    },
    /// The answer of the identical request this one waited on.
    Coalesced(Arc<Shared>),
    /// Nothing usable: go upstream. `leader`, when this request leads, shares the answer.
    Miss { near: Near, leader: Option<Leader> },
    /// The cache is not consulted (`reason` is reported).
    Bypass(&'static str),
}

/// A decision with what it measured on the way.
pub(crate) struct Decided {
    pub decision: Decision,
    /// The prompt's embedding, when one was made: a miss stores it, `/admin/lookup` lists
    /// the neighbours with it.
    pub vector: Option<Vec<f32>>,
    /// Time spent in the store and index, and in the embedder (ms).
    pub lookup_ms: Option<f64>,
    pub embedding_ms: Option<f64>,
    /// What the semantic search saw (its hit taken out), for the dashboard's replay.
    pub semantic: Option<crate::cache::SemanticOutcome>,
}

impl Decided {
    /// A request the cache is not consulted for.
    pub(crate) fn bypass(reason: &'static str) -> Decided {
        Decided {
            decision: Decision::Bypass(reason),
            vector: None,
            lookup_ms: None,
            embedding_ms: None,
            semantic: None,
        }
    }
}

/// What the semantic search saw, reported to the caller for threshold tuning.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Near {
    pub best: Option<f32>,
    pub rejected: usize,
    /// Why the semantic tier was skipped (the prompt is longer than the embedding window).
    pub skipped: Option<&'static str>,
    /// The embedder failed (the request carries on as a miss; `/admin/lookup` says why).
    pub embed_failed: Option<String>,
}

/// Where a prompt's vector comes from.
pub(crate) enum Vectors<'a> {
    /// The configured embedder, called with the caller's credentials.
    Embedder(&'a Embedder, Option<&'a HeaderValue>),
    /// Vectors made beforehand (`deja bench quality`); a text without one is past the
    /// embedding window.
    Known(&'a HashMap<String, Vec<f32>>),
    /// The semantic tier is off.
    None,
}

/// Everything `decide` needs to know about one request.
pub(crate) struct Ask<'a> {
    pub cache: &'a Arc<Cache>,
    pub lookup: &'a Lookup,
    pub needs: Requirements,
    pub threshold: f32,
    /// `Cache-Control: no-cache`: nothing is looked up, but the prompt is still embedded
    /// when `embed` (the miss stores the vector).
    pub no_cache: bool,
    /// Whether the vector is wanted at all (it serves a lookup or a stored entry).
    pub embed: bool,
    pub vectors: Vectors<'a>,
    /// The proxy joins the identical request in flight; `None` only explains (admin, bench).
    pub inflight: Option<&'a Arc<Coalescer>>,
    /// Semantic lookups run on the caller's thread (a blocking caller, the bench) instead of
    /// the blocking pool.
    pub inline: bool,
}

pub(crate) async fn decide(ask: Ask<'_>) -> Decided {
    let Ask {
        cache,
        lookup,
        needs,
        threshold,
        no_cache,
        embed,
        vectors,
        inflight,
        inline,
    } = ask;
    let mut decided = Decided {
        decision: Decision::Miss {
            near: Near::default(),
            leader: None,
        },
        vector: None,
        lookup_ms: None,
        embedding_ms: None,
        semantic: None,
    };
    // Fast path: a stored answer needs no coordination.
    if !no_cache && let Some(hit) = exact(cache, lookup, needs, &mut decided) {
        decided.decision = Decision::Hit {
            hit,
            leader: None,
            best: None,
        };
        return decided;
    }
    // Then join the in-flight twin. A leader unregisters only after its answer is stored,
    // so once we lead, a second exact lookup sees every twin that finished meanwhile.
    // A follower takes the twin's answer only if it would have accepted it itself.
    let mut leader = None;
    if let (false, Some(inflight)) = (no_cache, inflight) {
        match inflight.join(lookup.exact) {
            Role::Leader(l) => leader = Some(l),
            Role::Follower(follower) => {
                if let Some(shared) = follower.wait().await
                    && shared.satisfies(needs, threshold, cache.now_ms())
                {
                    decided.decision = Decision::Coalesced(shared);
                    return decided;
                }
            }
        }
        if leader.is_some()
            && let Some(hit) = exact(cache, lookup, needs, &mut decided)
        {
            decided.decision = Decision::Hit {
                hit,
                leader,
                best: None,
            };
            return decided;
        }
    }

    let mut near = Near::default();
    if let (true, Some(text)) = (embed, &lookup.semantic_text) {
        decided.vector = embed_prompt(text, vectors, &mut near, &mut decided.embedding_ms).await;
    }
    if let (Some(vector), false) = (&decided.vector, no_cache) {
        let (scope, vector) = (lookup.scope, vector.clone());
        let query = lookup.semantic_text.clone().unwrap_or_default();
        let started = Instant::now();
        let work = move |c: &Cache| c.lookup_semantic(&scope, &vector, &query, threshold, needs);
        let outcome = if inline {
            logged(work(cache))
        } else {
            blocking(cache, work).await
        };
        add_ms(&mut decided.lookup_ms, started);
        if let Some(mut outcome) = outcome {
            near.best = outcome.best;
            near.rejected = outcome.rejected;
            let hit = outcome.hit.take();
            decided.semantic = Some(outcome);
            if let Some(hit) = hit {
                decided.decision = Decision::Hit {
                    hit,
                    leader,
                    best: near.best,
                };
                return decided;
            }
        }
    }
    // Identical misses on other replicas (`[redis]`): one goes upstream, the others wait
    // for its stored answer and report it as coalesced, as a local twin would.
    if let (Some(local), Some(remote)) = (&mut leader, inflight.and_then(|i| i.remote())) {
        match remote.claim(lookup.exact, needs).await {
            Claim::Lead(lease) => local.hold(lease),
            Claim::Answered => {
                if let Some(hit) = exact(cache, lookup, needs, &mut decided) {
                    let shared = Arc::new(Shared {
                        response: hit.entry.response,
                        has_usage: hit.entry.has_usage,
                        stored: Some((hit.id, hit.entry.created_ms)),
                        matched: Matched::Upstream,
                    });
                    if let Some(local) = leader {
                        local.publish(Some(shared.clone()));
                    }
                    decided.decision = Decision::Coalesced(shared);
                    return decided;
                }
            }
            Claim::Alone => {}
        }
    }
    decided.decision = Decision::Miss { near, leader };
    decided
}

/// The exact tier. Inline, not on the blocking pool: an exact lookup is one sled read of a
/// hot page (microseconds), while the hand-off to a blocking thread and back cost more CPU
/// than the whole rest of a hit (benches/proxy_load.rs: context switches per request).
fn exact(
    cache: &Cache,
    lookup: &Lookup,
    needs: Requirements,
    decided: &mut Decided,
) -> Option<Hit> {
    let started = Instant::now();
    let found = cache.lookup_exact(&lookup.exact, needs);
    add_ms(&mut decided.lookup_ms, started);
    logged(found).flatten()
}

/// The prompt's vector; `None` (exact tier only) when it is too long or the embedder failed.
async fn embed_prompt(
    text: &str,
    vectors: Vectors<'_>,
    near: &mut Near,
    embedding_ms: &mut Option<f64>,
) -> Option<Vec<f32>> {
    let started = Instant::now();
    let result = match vectors {
        Vectors::Embedder(embedder, auth) => embedder.embed(text, auth).await,
        Vectors::Known(known) => known.get(text).cloned().ok_or(EmbedError::TooLong),
        Vectors::None => return None,
    };
    let vector = match result {
        Ok(vector) => Some(vector),
        // Expected for long prompts: exact tier only, no lookup and no index entry.
        Err(EmbedError::TooLong) => {
            near.skipped = Some(SKIPPED_TOO_LONG);
            tracing::debug!("prompt longer than the embedding window; exact tier only");
            None
        }
        Err(err) => {
            tracing::warn!(error = %err, "embedding failed; serving as a miss");
            near.embed_failed = Some(err.to_string());
            None
        }
    };
    let embed_ms = super::ms(started);
    *embedding_ms = Some(embed_ms);
    tracing::debug!(elapsed_ms = embed_ms, "embedded prompt");
    vector
}

fn add_ms(total: &mut Option<f64>, since: Instant) {
    *total = Some(total.unwrap_or(0.0) + super::ms(since));
}

/// A store error is logged and becomes `None`: the cache fails open, to a miss.
fn logged<T>(result: Result<T, StoreError>) -> Option<T> {
    result
        .inspect_err(|err| tracing::warn!(error = %err, "cache lookup failed; serving as a miss"))
        .ok()
}

/// Runs cache work on the blocking pool; an error is logged and becomes `None` (a miss).
pub(crate) async fn blocking<T, F>(cache: &Arc<Cache>, work: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce(&Cache) -> Result<T, StoreError> + Send + 'static,
{
    let cache = cache.clone();
    match tokio::task::spawn_blocking(move || work(&cache)).await {
        Ok(result) => logged(result),
        Err(err) => {
            tracing::warn!(error = %err, "cache task failed; serving as a miss");
            None
        }
    }
}
