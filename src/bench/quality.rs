//! `deja bench quality`: replay labelled paraphrase pairs through the real cache.
//!
//! For one pair file: every `a` becomes a chat request, planned by `ChatCompletions` like a
//! request the proxy received, and is stored with its embedding. Every `b` is then looked up
//! the way `cached.rs` does it: exact tier first, then the semantic tier, in two caches that
//! differ only in `cache.verify.enabled`. With `[cache.verify.model]` on, the verified cache
//! also runs the verifier model (its lower bound must stay unset: the sweep below relies on
//! a verdict that does not depend on the threshold).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use serde_json::{Value, json};

use super::metrics::{Found, Judge, Judged, Pair, Verdict};
use crate::cache::Lookup;
use crate::cache::Partition;
use crate::cache::store::StoreError;
use crate::cache::{Cache, Hit, NewEntry, Requirements};
use crate::clock::SystemClock;
use crate::config::CacheConfig;
use crate::embed::{EmbedError, Embedder};
use crate::endpoints::chat::ChatCompletions;
use crate::flow::{Ask, Decision, Endpoint, Plan, Vectors, decide};

/// The request every prompt is wrapped in (one scope for the whole file).
pub(super) const MODEL: &str = "gpt-4o-mini";
pub(super) const SYSTEM: &str = "You are a helpful assistant.";
/// Embeddings requested at once; the local embedder batches whatever is waiting.
const CONCURRENT_EMBEDS: usize = 64;
/// The longest the stored vectors may take to reach their graph (seconds at these sizes).
const SETTLE: Duration = Duration::from_secs(600);
const NEEDS: Requirements = Requirements {
    max_age_ms: None,
    needs_usage: false,
};

/// Reads a pair file (JSON lines); texts are trimmed as `ChatCompletions` trims the prompt it
/// embeds, so stored prompts and pair texts compare equal.
pub fn read_pairs(path: &Path, limit: Option<usize>) -> Result<Vec<Pair>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut pairs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if limit.is_some_and(|limit| pairs.len() >= limit) {
            break;
        }
        let mut pair: Pair =
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
        pair.a = pair.a.trim().to_string();
        pair.b = pair.b.trim().to_string();
        if pair.a.is_empty() || pair.b.is_empty() {
            return Err(format!("{}:{}: empty text", path.display(), n + 1));
        }
        pairs.push(pair);
    }
    Ok(pairs)
}

/// Every distinct text of `pairs`, embedded by `embedder` (many at once).
pub async fn embed_all(
    embedder: &Embedder,
    pairs: &[Pair],
) -> Result<HashMap<String, Vec<f32>>, String> {
    let mut texts: Vec<&str> = pairs.iter().flat_map(|p| [&*p.a, &*p.b]).collect();
    texts.sort_unstable();
    texts.dedup();
    let total = texts.len();
    let started = Instant::now();
    let mut vectors = HashMap::with_capacity(total);
    let mut results = futures_util::stream::iter(texts)
        .map(|text| async move { (text, embedder.embed(text, None).await) })
        .buffer_unordered(CONCURRENT_EMBEDS);
    let mut too_long = 0;
    while let Some((text, vector)) = results.next().await {
        let vector = match vector {
            Ok(vector) => vector,
            // As in the proxy: a text past the model's window uses the exact tier only, so it
            // gets no vector (stored without one, asked by the exact tier alone).
            Err(EmbedError::TooLong) => {
                too_long += 1;
                continue;
            }
            Err(err) => return Err(format!("embedding failed: {err}")),
        };
        vectors.insert(text.to_string(), vector);
        if vectors.len().is_multiple_of(1000) {
            eprintln!(
                "  embedded {}/{total} texts ({:.0} s)",
                vectors.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    if too_long > 0 {
        eprintln!("  {too_long} texts longer than the embedding window: exact tier only");
    }
    Ok(vectors)
}

/// Where each pair's `a` is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Every `a` in one scope, as one app's traffic fills a cache: a query can land on
    /// another pair's text.
    Simulation,
    /// Each pair alone in a scope of its own (its own tenant): the standard
    /// pair-classification view, where a query can only land on its own `a`.
    Pairwise,
}

impl Layout {
    /// The tenant `pair` is stored and asked under.
    fn tenant(self, pair: &Pair) -> String {
        match self {
            Layout::Simulation => "bench".into(),
            Layout::Pairwise => format!("bench-{}", pair.id),
        }
    }
}

/// The request the proxy would see for a prompt from `tenant`, planned by the chat endpoint.
pub fn plan(text: &str, tenant: &str) -> Result<Lookup, String> {
    let body = json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": text},
        ],
    });
    let partition = Partition {
        tenant: tenant.into(),
        namespace: String::new(),
    };
    match ChatCompletions.plan(body, &partition) {
        Plan::Cache(lookup) if lookup.semantic_text.is_some() => Ok(lookup),
        Plan::Cache(_) => Err("the chat endpoint found no user text".into()),
        Plan::Bypass { reason, .. } => Err(format!("the chat endpoint bypassed ({reason})")),
    }
}

/// A cache in its own fresh directory, removed when dropped.
pub struct TempCache {
    pub cache: Arc<Cache>,
    dir: PathBuf,
}

impl TempCache {
    pub fn open(config: &CacheConfig, embedder_id: &str, tag: &str) -> Result<TempCache, String> {
        let dir = std::env::temp_dir().join(format!(
            "deja-bench-{}-{tag}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let mut config = config.clone();
        config.dir = dir.clone();
        // Entries must outlive the run, however long embedding takes.
        config.ttl_secs = 10 * 365 * 24 * 3600;
        let cache = Cache::open(&config, embedder_id, Arc::new(SystemClock))
            .map_err(|e| format!("opening a cache in {}: {e}", dir.display()))?;
        let cache = Arc::new(cache);
        Ok(TempCache { cache, dir })
    }
}

impl Drop for TempCache {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What one run measured, besides the answers.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Timings {
    pub insert_ms: f64,
    pub lookup_cosine_ms: f64,
    pub lookup_verified_ms: f64,
    pub entries: usize,
}

/// Stores every `a`, then looks up every `b` in a cosine-only cache and a verified one, at
/// `lowest` (the lowest threshold of the sweep). Blocking.
///
/// One lookup per query decides every threshold of the sweep, for both caches.
/// `Cache::lookup_semantic` walks the nearest candidates in falling similarity, stops at the
/// first one below the threshold, skips the ones verification rejects, and returns the first
/// that passes. Verification does not depend on the threshold, so at any threshold `t` the
/// lookup returns the same first passing candidate `c` when `similarity(c) >= t`, and nothing
/// otherwise (every candidate before `c` was rejected whatever `t`; every one after it scores
/// at most `similarity(c)`). So "a hit at t iff similarity >= t" holds with verification on
/// too. `single_lookup_decides_every_threshold` in `bench::tests` checks this against one
/// lookup per threshold.
pub fn measure(
    pairs: &[Pair],
    vectors: &HashMap<String, Vec<f32>>,
    config: &CacheConfig,
    embedder_id: &str,
    lowest: f32,
    layout: Layout,
) -> Result<(Vec<Judged>, Vec<Trace>, Timings), String> {
    let mut cosine_config = config.clone();
    cosine_config.verify.enabled = false;
    let mut verified_config = config.clone();
    verified_config.verify.enabled = true;
    let cosine = TempCache::open(&cosine_config, embedder_id, "cosine")?;
    let verified = TempCache::open(&verified_config, embedder_id, "verified")?;

    let mut timings = Timings::default();
    let started = Instant::now();
    store_all(&cosine.cache, pairs, vectors, layout)?;
    store_all(&verified.cache, pairs, vectors, layout)?;
    timings.insert_ms = started.elapsed().as_secs_f64() * 1000.0;
    timings.entries = cosine.cache.entries();

    let judge = Judge::new(pairs);
    let mut judged = Vec::with_capacity(pairs.len());
    let mut traces = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let answer = |cache: &Arc<Cache>, spent: &mut f64| -> Result<Option<TraceHit>, String> {
            let started = Instant::now();
            let hit = ask(cache, &pair.b, vectors, lowest, &layout.tenant(pair))?;
            *spent += started.elapsed().as_secs_f64() * 1000.0;
            Ok(hit.map(|hit| {
                let text = hit.entry.prompt.clone().unwrap_or_default();
                TraceHit {
                    pair: pair_of(&hit.entry.response),
                    verdict: judge.verdict(pair, &text),
                    text,
                    similarity: hit.similarity,
                    exact: !hit.semantic,
                }
            }))
        };
        let cosine_hit = answer(&cosine.cache, &mut timings.lookup_cosine_ms)?;
        let verified_hit = answer(&verified.cache, &mut timings.lookup_verified_ms)?;
        let found = |hit: &Option<TraceHit>| {
            hit.as_ref().map(|hit| Found {
                similarity: hit.similarity,
                exact: hit.exact,
                verdict: hit.verdict,
            })
        };
        judged.push(Judged {
            label1: pair.label == 1,
            exact: cosine_hit.as_ref().is_some_and(|hit| hit.exact),
            cosine: found(&cosine_hit),
            verified: found(&verified_hit),
        });
        traces.push(Trace {
            id: pair.id.clone(),
            label: pair.label,
            query: pair.b.clone(),
            cosine: cosine_hit,
            verified: verified_hit,
        });
    }
    Ok((judged, traces, timings))
}

fn store_err(err: StoreError) -> String {
    format!("cache: {err}")
}

/// Stores every pair's `a` as the answer to a chat request; the response names the pair.
pub fn store_all(
    cache: &Cache,
    pairs: &[Pair],
    vectors: &HashMap<String, Vec<f32>>,
    layout: Layout,
) -> Result<(), String> {
    for pair in pairs {
        let lookup = plan(&pair.a, &layout.tenant(pair))?;
        let prompt = lookup.semantic_text.unwrap_or_default();
        cache
            .insert(NewEntry {
                scope: lookup.scope,
                exact: lookup.exact,
                model: lookup.model,
                response: json!({"pair": pair.id}).to_string(),
                has_usage: true,
                // None for a text past the embedding window: exact tier only, as in the proxy.
                vector: vectors.get(&prompt).cloned(),
                prompt: Some(prompt),
                owner: Default::default(),
            })
            .map_err(store_err)?;
    }
    // Lookups must meet the index as it settles, not as far as the background worker got:
    // vectors still waiting (or deferred) would make the figures depend on the machine's load.
    if !cache.settle_index(SETTLE) {
        return Err(format!(
            "the vector index did not settle within {} s",
            SETTLE.as_secs()
        ));
    }
    Ok(())
}

/// Looks `text` up from `tenant` with the proxy's own decision (`flow::decide`): the exact
/// tier, then the semantic tier at `threshold`. A text without a vector is past the
/// embedding window, so the exact tier alone answers it. Blocking: the decision runs inline.
pub fn ask(
    cache: &Arc<Cache>,
    text: &str,
    vectors: &HashMap<String, Vec<f32>>,
    threshold: f32,
    tenant: &str,
) -> Result<Option<Hit>, String> {
    let lookup = plan(text, tenant)?;
    let decided = decide(Ask {
        cache,
        lookup: &lookup,
        needs: NEEDS,
        threshold,
        no_cache: false,
        embed: true,
        vectors: Vectors::Known(vectors),
        inflight: None,
        inline: true,
    })
    .now_or_never()
    .ok_or("the cache decision waited, which it never does inline")?;
    Ok(match decided.decision {
        Decision::Hit { hit, .. } => Some(hit),
        Decision::Coalesced(_) | Decision::Miss { .. } | Decision::Bypass(_) => None,
    })
}

/// The pair id named by a stored response (`{"pair": id}`).
fn pair_of(response: &str) -> Option<String> {
    let value: Value = serde_json::from_str(response).ok()?;
    value.get("pair")?.as_str().map(str::to_string)
}

/// One query's answers, for `--dump` (reading the failures behind the figures).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Trace {
    pub id: String,
    pub label: u8,
    pub query: String,
    pub cosine: Option<TraceHit>,
    pub verified: Option<TraceHit>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TraceHit {
    /// The pair whose `a` answered (the last one stored, when several share that text).
    pub pair: Option<String>,
    pub text: String,
    pub similarity: f32,
    pub exact: bool,
    pub verdict: Verdict,
}
