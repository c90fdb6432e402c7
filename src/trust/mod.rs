//! Hits you can trust: deja measures its own wrong-hit rate and keeps it inside a budget.
//!
//! - `shadow`: a sample of semantic hits is also sent upstream in the background, off the
//!   response path, and the cached and fresh answers are judged (`judge`)
//! - `estimate`: the wrong-hit rate per model and namespace, with a Wilson interval
//! - `budget`: `cache.max_wrong_rate` raises (and lowers back) the effective threshold
//! - `feedback`: a no-cache re-ask after a hit, or an admin mark, counts the hit wrong
//! - `report`: `/admin/stats` and `/metrics`
//!
//! The request flow calls in at three points, each one line: the threshold in force
//! (`threshold`), after a semantic hit is served (`semantic_hit`), on a no-cache request
//! (`no_cache`).

pub mod budget;
pub mod estimate;
mod feedback;
pub mod judge;
mod report;
mod shadow;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::cache::{Cache, Hit, Lookup, Partition};
use crate::clock::SharedClock;
use crate::config::Config;
pub use crate::config::TrustConfig;
use crate::embed::Embedder;
use crate::upstream::Upstream;
use budget::Learned;
use estimate::{Sample, Window};
use feedback::{Kind, Recent, Served};
use judge::Verdict;
pub use report::mark_wrong;

/// Models and namespaces tracked apart; past it they share one group (`(other)`), so a
/// client choosing namespaces cannot grow memory or metric series without bound.
const MAX_GROUPS: usize = 256;
const OTHER: &str = "(other)";

/// Which hits the estimate of a group counts: one model in one namespace.
type GroupKey = (String, String);

#[derive(Debug, Default)]
struct Group {
    window: Window,
    learned: Learned,
    /// Verdicts over the process's life (the window keeps the recent ones).
    agreed: u64,
    disagreed: u64,
    feedback: u64,
}

/// What the shadow sampling cost, and how it went.
#[derive(Debug, Default)]
struct Counters {
    /// Shadow calls sent upstream, and judge calls (`judge_model`).
    shadow_calls: AtomicU64,
    judge_calls: AtomicU64,
    agree: AtomicU64,
    disagree: AtomicU64,
    unsure: AtomicU64,
    /// The shadow call failed (unreachable, non-200, unreadable answer).
    failed: AtomicU64,
    /// Sampled while the queue was full: never sent.
    dropped: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    cost_usd: Mutex<f64>,
    feedback: [AtomicU64; 3],
}

pub struct Trust {
    groups: Mutex<HashMap<GroupKey, Group>>,
    recent: Mutex<Recent>,
    /// Semantic hits seen, for deterministic sampling (every 1/rate-th hit).
    hits_seen: AtomicU64,
    /// Shadow calls queued or running (bounded by `shadow_queue`).
    queued: AtomicUsize,
    /// Shadow calls upstream at once.
    upstream_slots: Arc<tokio::sync::Semaphore>,
    counters: Counters,
    /// What judging and evicting need: shadow calls go upstream, answers are compared by
    /// embedding when no judge model is set, wrong entries are evicted from the cache.
    reach: Reach,
}

/// The parts of the process trust works with, handed over at start-up.
pub struct Reach {
    pub clock: SharedClock,
    pub cache: Option<Arc<Cache>>,
    pub upstream: Upstream,
    pub embedder: Option<Arc<Embedder>>,
}

/// A sampled hit, owned, for the background task.
struct Job {
    /// The configuration of the request whose hit was sampled.
    config: Arc<Config>,
    headers: http::HeaderMap,
    body: Bytes,
    suffix: String,
    question: String,
    cached: String,
    similarity: f32,
    group: GroupKey,
}

impl Trust {
    pub fn new(config: &TrustConfig, reach: Reach) -> Trust {
        Trust {
            groups: Mutex::default(),
            recent: Mutex::default(),
            hits_seen: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            upstream_slots: Arc::new(tokio::sync::Semaphore::new(config.shadow_concurrency)),
            counters: Counters::default(),
            reach,
        }
    }

    /// The similarity threshold in force for `model` in `namespace`: `configured`, raised by
    /// the error budget where the estimate asked for it. Never below `configured`.
    pub fn threshold(&self, config: &Config, configured: f32, model: &str, namespace: &str) -> f32 {
        if config.cache.max_wrong_rate <= 0.0 {
            return configured;
        }
        let groups = self.groups.lock();
        groups
            .get(&(model.to_string(), namespace.to_string()))
            .map_or(configured, |group| group.learned.effective(configured))
    }

    /// Called after a semantic hit is served: remembers it for feedback, counts a quick
    /// re-ask, and sends a sample of hits upstream in the background to be judged. Never
    /// waits: the client's answer is not delayed.
    #[allow(clippy::too_many_arguments)] // the one-line hook passes what the flow holds
    pub fn semantic_hit(
        self: &Arc<Self>,
        config: &Arc<Config>,
        headers: &http::HeaderMap,
        body: &Bytes,
        suffix: &str,
        lookup: &Lookup,
        hit: &Hit,
        partition: &Partition,
    ) {
        let trust = &config.cache.trust;
        let now = self.reach.clock.now_ms();
        let group = self.group_key(&lookup.model, &partition.namespace);
        let keep_ms = trust.no_cache_window_secs.max(trust.reask_window_secs) * 1000;
        if keep_ms > 0 {
            let served = Served {
                entry: hit.id,
                similarity: hit.similarity,
                model: group.0.clone(),
                namespace: group.1.clone(),
                at_ms: now,
            };
            let before = self
                .recent
                .lock()
                .record((lookup.scope, lookup.exact), served, keep_ms);
            let reask_ms = trust.reask_window_secs * 1000;
            if let Some(before) = before
                && before.entry == hit.id
                && now.saturating_sub(before.at_ms) < reask_ms
            {
                self.wrong(config, Kind::Reask, hit.id, hit.similarity, group.clone());
            }
        }
        let rate = trust.shadow_sample_rate;
        let n = self.hits_seen.fetch_add(1, Ordering::Relaxed);
        // Every 1/rate-th hit: deterministic, and exact over any run of hits.
        let sampled = rate > 0.0 && ((n + 1) as f64 * rate).floor() > (n as f64 * rate).floor();
        if !sampled {
            return;
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= trust.shadow_queue {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("shadow queue full; sample dropped");
            return;
        }
        let job = Job {
            config: config.clone(),
            headers: headers.clone(),
            body: body.clone(),
            suffix: suffix.to_string(),
            question: lookup.semantic_text.clone().unwrap_or_default(),
            cached: hit.entry.response.clone(),
            similarity: hit.similarity,
            group,
        };
        tokio::spawn(shadow::run(self.clone(), job));
    }

    /// Called on a `Cache-Control: no-cache` request: the same question soon after a hit
    /// says the hit did not answer it. The entry is evicted and the estimate fed.
    pub fn no_cache(&self, config: &Config, lookup: &Lookup) {
        let window_ms = config.cache.trust.no_cache_window_secs * 1000;
        if window_ms == 0 {
            return;
        }
        let taken = self.recent.lock().take(
            &(lookup.scope, lookup.exact),
            self.reach.clock.now_ms(),
            window_ms,
        );
        if let Some(served) = taken {
            let group = (served.model, served.namespace);
            self.wrong(
                config,
                Kind::NoCache,
                served.entry,
                served.similarity,
                group,
            );
        }
    }

    /// Evidence that `entry` answered wrongly: counted, fed to the estimate, and the entry
    /// evicted (in the background; a store error only leaves it to expire).
    fn wrong(&self, config: &Config, kind: Kind, entry: u64, similarity: f32, group: GroupKey) {
        self.counters.feedback[kind as usize].fetch_add(1, Ordering::Relaxed);
        self.recent.lock().forget_entry(entry);
        tracing::info!(
            kind = kind.label(),
            entry,
            similarity,
            model = %group.0,
            namespace = %group.1,
            "hit reported wrong; entry evicted"
        );
        self.record(config, group, similarity, true, true);
        if let Some(cache) = self.reach.cache.clone() {
            tokio::task::spawn_blocking(move || {
                if let Err(err) = cache.remove(entry) {
                    tracing::warn!(error = %err, entry, "could not evict a wrong entry");
                }
            });
        }
    }

    /// Feeds one judged hit to its group's estimate and lets the budget act on it.
    fn record(
        &self,
        config: &Config,
        group: GroupKey,
        similarity: f32,
        wrong: bool,
        feedback: bool,
    ) {
        let cache = &config.cache;
        let configured = cache.threshold_for(&group.0);
        let mut groups = self.groups.lock();
        let state = groups.entry(group.clone()).or_default();
        state
            .window
            .push(Sample { similarity, wrong }, cache.trust.window);
        match (feedback, wrong) {
            (true, _) => state.feedback += 1,
            (false, true) => state.disagreed += 1,
            (false, false) => state.agreed += 1,
        }
        let change = state.learned.adjust(
            &state.window,
            configured,
            cache.max_wrong_rate,
            &cache.trust,
            self.reach.clock.now_ms(),
        );
        drop(groups);
        if let Some(change) = change {
            tracing::info!(
                model = %group.0,
                namespace = %group.1,
                from = change.from,
                to = change.to,
                samples = change.evidence.samples,
                wrong = change.evidence.wrong,
                estimate = change.evidence.rate,
                lower = change.evidence.lower,
                upper = change.evidence.upper,
                budget = cache.max_wrong_rate,
                "error budget moved the similarity threshold"
            );
        }
    }

    fn verdict(&self, job: &Job, verdict: Verdict) {
        let counter = match verdict {
            Verdict::Agree => &self.counters.agree,
            Verdict::Disagree => &self.counters.disagree,
            Verdict::Unsure => &self.counters.unsure,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if verdict != Verdict::Unsure {
            let wrong = verdict == Verdict::Disagree;
            self.record(&job.config, job.group.clone(), job.similarity, wrong, false);
        }
    }

    /// The group of `model` in `namespace`, or the shared overflow group once there are
    /// `MAX_GROUPS`.
    fn group_key(&self, model: &str, namespace: &str) -> GroupKey {
        let key = (model.to_string(), namespace.to_string());
        let groups = self.groups.lock();
        if groups.contains_key(&key) || groups.len() < MAX_GROUPS - 1 {
            key
        } else {
            (OTHER.into(), OTHER.into())
        }
    }
}
