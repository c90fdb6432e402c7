//! Prometheus metrics, served on the admin listener at `/metrics`. Almost everything is
//! derived from the finished request records (`observe`), so the usage log and the metrics
//! never disagree; cache sizes are read when scraped.
//!
//! Labels take a small fixed set of values (endpoint, outcome, tier, status, cause): nothing
//! a client sends, such as a model name, becomes a label, so a client cannot blow up the
//! number of series.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::observe::usage::{Outcome, Record};
use crate::wire::endpoint::EndpointName;

type Labels = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];
type Money = Counter<f64, AtomicU64>;

/// Numbers the cache reports when scraped.
#[derive(Debug, Default, Clone, Copy)]
pub struct CacheGauges {
    pub entries: u64,
    pub indexed: u64,
    /// Totals kept by the cache's write health (disk full or read-only).
    pub write_failures: u64,
    pub writes_skipped: u64,
    pub writes_enabled: bool,
    /// Answers not stored because they alone exceed `cache.max_bytes`.
    pub oversized_skipped: u64,
    /// Vectors waiting for their scope's graph (searched exactly meanwhile), and those
    /// waiting in the store only (not searchable until the index worker catches up).
    pub index_pending: u64,
    pub index_deferred: u64,
    /// Vectors that had to wait in the store only, since start-up.
    pub index_deferred_total: u64,
}

/// Endpoints whose request counters are resolved once (a label lookup hashes its strings).
const ENDPOINTS: [EndpointName; 5] = EndpointName::ALL;
const OUTCOMES: [Outcome; 9] = [
    Outcome::HitExact,
    Outcome::HitSemantic,
    Outcome::Coalesced,
    Outcome::Miss,
    Outcome::Bypass,
    Outcome::Relay,
    Outcome::RateLimited,
    Outcome::Unauthorized,
    Outcome::Error,
];

/// Series of the hot path, resolved at start-up: observing a hit touches atomics only.
struct Resolved {
    requests: Vec<Counter>,
    hits: [Counter; 3],
    seconds: [Histogram; 3],
    tokens: [Counter; 2],
    tokens_saved: [Counter; 2],
}

pub struct Metrics {
    registry: Registry,
    resolved: Resolved,
    requests: Family<Labels2, Counter>,
    hits: Family<Labels, Counter>,
    misses: Counter,
    bypasses: Counter,
    coalesced: Counter,
    semantic_skipped: Family<Labels, Counter>,
    upstream_errors: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    rate_limited: Family<Labels, Counter>,
    unauthorized: Counter,
    request_seconds: Family<Labels, Histogram>,
    lookup_seconds: Histogram,
    embedding_seconds: Histogram,
    upstream_seconds: Histogram,
    hit_similarity: Histogram,
    near_miss_similarity: Histogram,
    tokens: Family<Labels, Counter>,
    tokens_saved: Family<Labels, Counter>,
    cost: Money,
    cost_saved: Money,
    entries: Gauge,
    indexed: Gauge,
    usage_log_dropped: Gauge,
    write_failures: Counter,
    writes_skipped: Counter,
    writes_enabled: Gauge,
    oversized_skipped: Counter,
    index_pending: Gauge,
    index_deferred: Gauge,
    index_deferred_total: Counter,
}

fn latency() -> Histogram {
    // 0.1 ms .. ~2 min
    Histogram::new(exponential_buckets(0.0001, 2.5, 16))
}

fn similarity() -> Histogram {
    Histogram::new([
        0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 1.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::with_series(|_| {})
    }
}

impl Metrics {
    /// The request and cache series, then those `more` registers: the layers above keep
    /// their own series (the job queue's, the Batch API's, `[redis]` replication's) and
    /// add them here when the app is built, so one scrape of `/metrics` shows them all.
    pub fn with_series(more: impl FnOnce(&mut Registry)) -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            requests: Family::default(),
            hits: Family::default(),
            misses: Counter::default(),
            bypasses: Counter::default(),
            coalesced: Counter::default(),
            semantic_skipped: Family::default(),
            upstream_errors: Family::default(),
            retries: Family::default(),
            rate_limited: Family::default(),
            unauthorized: Counter::default(),
            request_seconds: Family::new_with_constructor(latency),
            lookup_seconds: latency(),
            embedding_seconds: latency(),
            upstream_seconds: latency(),
            hit_similarity: similarity(),
            near_miss_similarity: similarity(),
            tokens: Family::default(),
            tokens_saved: Family::default(),
            cost: Money::default(),
            cost_saved: Money::default(),
            entries: Gauge::default(),
            indexed: Gauge::default(),
            usage_log_dropped: Gauge::default(),
            write_failures: Counter::default(),
            writes_skipped: Counter::default(),
            writes_enabled: Gauge::default(),
            oversized_skipped: Counter::default(),
            index_pending: Gauge::default(),
            index_deferred: Gauge::default(),
            index_deferred_total: Counter::default(),
            registry: Registry::default(),
            resolved: Resolved {
                requests: Vec::new(),
                hits: Default::default(),
                seconds: [latency(), latency(), latency()],
                tokens: Default::default(),
                tokens_saved: Default::default(),
            },
        };
        let resolved = Resolved {
            requests: ENDPOINTS
                .iter()
                .flat_map(|endpoint| {
                    OUTCOMES.iter().map(|outcome| {
                        m.requests
                            .get_or_create(&[
                                ("endpoint", endpoint.as_str()),
                                ("outcome", outcome.as_str()),
                            ])
                            .clone()
                    })
                })
                .collect(),
            hits: ["exact", "semantic", "coalesced"]
                .map(|tier| m.hits.get_or_create(&[("tier", tier)]).clone()),
            seconds: ["hit", "upstream", "other"]
                .map(|class| m.request_seconds.get_or_create(&[("class", class)]).clone()),
            tokens: ["prompt", "completion"]
                .map(|kind| m.tokens.get_or_create(&[("kind", kind)]).clone()),
            tokens_saved: ["prompt", "completion"]
                .map(|kind| m.tokens_saved.get_or_create(&[("kind", kind)]).clone()),
        };
        let m = Metrics { resolved, ..m };
        // Counters get their `_total` suffix from the registry.
        let r = &mut registry;
        r.register(
            "deja_requests",
            "Requests by endpoint and cache outcome",
            m.requests.clone(),
        );
        r.register(
            "deja_cache_hits",
            "Answers served from the cache, by tier (exact, semantic, coalesced)",
            m.hits.clone(),
        );
        r.register(
            "deja_cache_misses",
            "Cacheable requests answered upstream",
            m.misses.clone(),
        );
        r.register(
            "deja_cache_bypasses",
            "Cacheable requests the cache stayed out of",
            m.bypasses.clone(),
        );
        r.register(
            "deja_cache_coalesced",
            "Requests answered by an identical request in flight",
            m.coalesced.clone(),
        );
        r.register(
            "deja_semantic_skipped",
            "Requests that used the exact tier only, by reason (too-long: more tokens than \
             the embedding model's window)",
            m.semantic_skipped.clone(),
        );
        r.register(
            "deja_upstream_errors",
            "Upstream error responses and failures, by status (or connect/timeout)",
            m.upstream_errors.clone(),
        );
        r.register(
            "deja_upstream_retries",
            "Upstream retries, by cause",
            m.retries.clone(),
        );
        r.register(
            "deja_rate_limited",
            "Requests refused by a per-key limit, by limit (requests, tokens, budget)",
            m.rate_limited.clone(),
        );
        r.register(
            "deja_unauthorized",
            "Requests refused for an unknown key",
            m.unauthorized.clone(),
        );
        r.register(
            "deja_request_duration_seconds",
            "Time to the end of the response, by outcome class (hit, upstream, other)",
            m.request_seconds.clone(),
        );
        r.register(
            "deja_lookup_duration_seconds",
            "Time spent in cache lookups",
            m.lookup_seconds.clone(),
        );
        r.register(
            "deja_embedding_duration_seconds",
            "Time spent embedding prompts",
            m.embedding_seconds.clone(),
        );
        r.register(
            "deja_upstream_duration_seconds",
            "Time to the upstream's response headers",
            m.upstream_seconds.clone(),
        );
        r.register(
            "deja_hit_similarity",
            "Similarity of semantic hits",
            m.hit_similarity.clone(),
        );
        r.register(
            "deja_near_miss_similarity",
            "Best similarity of semantic lookups that missed",
            m.near_miss_similarity.clone(),
        );
        r.register(
            "deja_tokens",
            "Tokens used upstream, by kind (prompt, completion)",
            m.tokens.clone(),
        );
        r.register(
            "deja_tokens_saved",
            "Tokens the cache saved, by kind (prompt, completion)",
            m.tokens_saved.clone(),
        );
        r.register(
            "deja_cost_usd",
            "Estimated dollars spent upstream (pricing table)",
            m.cost.clone(),
        );
        r.register(
            "deja_cost_saved_usd",
            "Estimated dollars the cache saved (pricing table)",
            m.cost_saved.clone(),
        );
        r.register(
            "deja_cache_entries",
            "Entries in the store",
            m.entries.clone(),
        );
        r.register(
            "deja_index_vectors",
            "Vectors in the semantic index",
            m.indexed.clone(),
        );
        r.register(
            "deja_usage_log_dropped",
            "Usage records dropped because the writer fell behind",
            m.usage_log_dropped.clone(),
        );
        r.register(
            "deja_cache_write_failures",
            "Cache writes that failed (disk full, read-only, I/O errors)",
            m.write_failures.clone(),
        );
        r.register(
            "deja_cache_writes_skipped",
            "Cache writes skipped while writes were off after a failure",
            m.writes_skipped.clone(),
        );
        r.register(
            "deja_cache_writes_enabled",
            "1 while cache writes are on, 0 while a disk problem keeps them off",
            m.writes_enabled.clone(),
        );
        r.register(
            "deja_cache_oversized_skipped",
            "Answers not cached because they alone exceed cache.max_bytes",
            m.oversized_skipped.clone(),
        );
        r.register(
            "deja_index_pending_vectors",
            "Vectors waiting for their scope's graph, searched exactly meanwhile",
            m.index_pending.clone(),
        );
        r.register(
            "deja_index_deferred_vectors",
            "Vectors waiting in the store only: not searchable until the index worker catches up",
            m.index_deferred.clone(),
        );
        r.register(
            "deja_index_deferred",
            "Vectors that had to wait in the store only (the index worker was behind)",
            m.index_deferred_total.clone(),
        );
        more(r);
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts a finished request.
    pub fn observe(&self, record: &Record) {
        let outcome = record.cache;
        let r = &self.resolved;
        let outcome_index = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0);
        match ENDPOINTS.iter().position(|e| *e == record.endpoint) {
            Some(endpoint) => r.requests[endpoint * OUTCOMES.len() + outcome_index].inc(),
            None => self
                .requests
                .get_or_create(&[
                    ("endpoint", record.endpoint.as_str()),
                    ("outcome", outcome.as_str()),
                ])
                .inc(),
        };
        match outcome {
            Outcome::HitExact => {
                r.hits[0].inc();
            }
            Outcome::HitSemantic => {
                r.hits[1].inc();
            }
            Outcome::Coalesced => {
                r.hits[2].inc();
                self.coalesced.inc();
            }
            Outcome::Miss => {
                self.misses.inc();
            }
            Outcome::Bypass => {
                self.bypasses.inc();
            }
            Outcome::RateLimited => {
                let limit = record.limit.unwrap_or("requests");
                self.rate_limited.get_or_create(&[("limit", limit)]).inc();
            }
            Outcome::Unauthorized => {
                self.unauthorized.inc();
            }
            Outcome::Relay | Outcome::Error => {}
        }
        if let Some(reason) = record.semantic_skipped {
            self.semantic_skipped
                .get_or_create(&[("reason", reason)])
                .inc();
        }
        let upstream_called = record.upstream_ms.is_some();
        if upstream_called && record.status >= 400 {
            self.upstream_errors
                .get_or_create(&[("status", status_label(record.status))])
                .inc();
        }
        for cause in &record.retry_causes {
            self.retries.get_or_create(&[("cause", cause)]).inc();
        }
        let class = if outcome.is_hit() {
            0
        } else if upstream_called {
            1
        } else {
            2
        };
        r.seconds[class].observe(record.latency_ms / 1000.0);
        for (value, histogram) in [
            (record.lookup_ms, &self.lookup_seconds),
            (record.embedding_ms, &self.embedding_seconds),
            (record.upstream_ms, &self.upstream_seconds),
        ] {
            if let Some(ms) = value {
                histogram.observe(ms / 1000.0);
            }
        }
        if let (Outcome::HitSemantic, Some(s)) = (outcome, record.similarity) {
            self.hit_similarity.observe(f64::from(s));
        }
        if let (false, Some(best)) = (outcome.is_hit(), record.best_similarity) {
            self.near_miss_similarity.observe(f64::from(best));
        }
        let tokens = if outcome.is_hit() {
            &r.tokens_saved
        } else {
            &r.tokens
        };
        if let Some(n) = record.prompt_tokens {
            tokens[0].inc_by(n);
        }
        if let Some(n) = record.completion_tokens {
            tokens[1].inc_by(n);
        }
        if let Some(cost) = record.cost_usd {
            self.cost.inc_by(cost);
        }
        if let Some(saved) = record.saved_usd {
            self.cost_saved.inc_by(saved);
        }
    }

    /// The exposition text (OpenMetrics), with the cache gauges as of now.
    pub fn render(&self, cache: CacheGauges, usage_log_dropped: u64) -> String {
        self.entries.set(cache.entries as i64);
        self.indexed.set(cache.indexed as i64);
        self.index_pending.set(cache.index_pending as i64);
        self.index_deferred.set(cache.index_deferred as i64);
        self.usage_log_dropped.set(usage_log_dropped as i64);
        // The cache keeps the totals; the counters catch up to them.
        for (counter, total) in [
            (&self.write_failures, cache.write_failures),
            (&self.writes_skipped, cache.writes_skipped),
            (&self.oversized_skipped, cache.oversized_skipped),
            (&self.index_deferred_total, cache.index_deferred_total),
        ] {
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        self.writes_enabled.set(i64::from(cache.writes_enabled));
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

fn status_label(status: u16) -> &'static str {
    const NAMED: [&str; 13] = [
        "400", "401", "403", "404", "408", "409", "413", "422", "429", "500", "502", "503", "504",
    ];
    let text = status.to_string();
    match NAMED.iter().find(|named| **named == text) {
        Some(named) => named,
        None if status < 500 => "4xx",
        None => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    #[test]
    fn records_move_the_right_series() {
        let metrics = Metrics::default();
        let mut hit = Record::new(crate::wire::endpoint::EndpointName::ChatCompletions, 0);
        hit.cache = Outcome::HitSemantic;
        hit.similarity = Some(0.97);
        hit.prompt_tokens = Some(10);
        hit.completion_tokens = Some(5);
        hit.saved_usd = Some(0.25);
        metrics.observe(&hit);
        let mut miss = Record::new(crate::wire::endpoint::EndpointName::ChatCompletions, 0);
        miss.cache = Outcome::Miss;
        miss.upstream_ms = Some(12.0);
        miss.status = 503;
        miss.retry_causes = vec!["503", "503"];
        metrics.observe(&miss);
        let gauges = CacheGauges {
            entries: 3,
            indexed: 2,
            write_failures: 2,
            writes_skipped: 5,
            writes_enabled: false,
            oversized_skipped: 1,
            ..CacheGauges::default()
        };
        let text = metrics.render(gauges, 0);
        assert_eq!(value(&text, "deja_cache_write_failures_total"), 2.0);
        assert_eq!(value(&text, "deja_cache_oversized_skipped_total"), 1.0);
        assert_eq!(value(&text, "deja_cache_writes_skipped_total"), 5.0);
        assert_eq!(value(&text, "deja_cache_writes_enabled"), 0.0);
        let later = CacheGauges {
            write_failures: 3,
            writes_enabled: true,
            ..gauges
        };
        let again = metrics.render(later, 0);
        assert_eq!(value(&again, "deja_cache_write_failures_total"), 3.0);
        assert_eq!(value(&again, "deja_cache_writes_enabled"), 1.0);
        assert_eq!(
            value(&text, "deja_cache_hits_total{tier=\"semantic\"}"),
            1.0
        );
        assert_eq!(value(&text, "deja_cache_misses_total"), 1.0);
        assert_eq!(
            value(&text, "deja_upstream_errors_total{status=\"503\"}"),
            1.0
        );
        assert_eq!(
            value(&text, "deja_upstream_retries_total{cause=\"503\"}"),
            2.0
        );
        assert_eq!(
            value(&text, "deja_tokens_saved_total{kind=\"prompt\"}"),
            10.0
        );
        assert_eq!(value(&text, "deja_cost_saved_usd_total"), 0.25);
        assert_eq!(value(&text, "deja_cache_entries"), 3.0);
        assert_eq!(value(&text, "deja_hit_similarity_count"), 1.0);
        assert_eq!(
            value(
                &text,
                "deja_requests_total{endpoint=\"chat.completions\",outcome=\"miss\"}"
            ),
            1.0
        );
    }
}
