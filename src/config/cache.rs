//! `[cache]`: the answer cache, its semantic tier and vector index. Verification
//! (`[cache.verify]`) and trust (`[cache.trust]`) have files of their own.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, TrustConfig, VerifyConfig, invalid};

/// HNSW defaults, which `crate::cache::index` starts from. Chosen on embedding-like vectors
/// (`benches/results/index_insert.md`): ef_construction 100 costs about half the inserts of
/// 200, and ef_search 64 searches 2-3x faster than 128; recall@1 of near-duplicate queries
/// stayed 0.995-1.000 (20k x 1536), as it was at 10^5 x 1536 and 10^6 x 384 with ef 32.
/// Uniform random vectors (HNSW's worst case, not what embeddings look like) need ef_search
/// 128 for 0.98 at 10^5 (`index_scale.md`).
pub const DEFAULT_HNSW_M: usize = 16;
pub const DEFAULT_HNSW_EF_CONSTRUCTION: usize = 100;
pub const DEFAULT_HNSW_EF_SEARCH: usize = 64;

/// The smallest byte cap accepted: one long answer with its vector takes tens of KB.
const MIN_MAX_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Master switch; when false every request is relayed with `x-deja-cache: bypass`.
    pub enabled: bool,
    /// Directory of the sled store; created if missing.
    pub dir: PathBuf,
    /// Seconds an entry may be served after it was stored.
    pub ttl_secs: u64,
    /// Minimum cosine similarity (0, 1] for a semantic hit.
    pub similarity_threshold: f32,
    /// Per-model thresholds, overriding `similarity_threshold` for that exact model name.
    pub model_thresholds: BTreeMap<String, f32>,
    /// When true, callers with different API keys share entries. Off by default.
    pub shared: bool,
    /// Turns the semantic tier off (exact tier only) when false.
    pub semantic: bool,
    /// Longest last user message (bytes) that is embedded and verified; longer ones use the
    /// exact tier only.
    pub max_semantic_bytes: usize,
    /// Seconds between background sweeps that delete expired entries.
    pub sweep_interval_secs: u64,
    /// A scope's index is rebuilt once this fraction of its points are dead.
    pub compact_dead_ratio: f32,
    /// Scopes with fewer entries are scanned (ranked by sign bits, the closest scored by
    /// codes); larger ones get an HNSW graph.
    pub hnsw_min_entries: usize,
    /// HNSW links per point (M) for graphs built from now on.
    pub hnsw_m: usize,
    /// HNSW build breadth for graphs built from now on: higher builds slower, finds better.
    pub hnsw_ef_construction: usize,
    /// HNSW search breadth: higher finds the true nearest entry more often, slower.
    pub hnsw_ef_search: usize,
    /// Most entries kept; past it the least recently hit (or stored) are evicted. 0: no cap.
    pub max_entries: u64,
    /// Most bytes of stored answers and vectors kept, evicting likewise. 0: no cap.
    pub max_bytes: u64,
    /// The second check on semantic candidates (`[cache.verify]`).
    pub verify: VerifyConfig,
    /// With `shared`, cache Responses API calls that upstream stores (`store` true or absent).
    /// Off: a hit's id (the upstream's) would belong to another caller's organization.
    pub cache_stored_responses: bool,
    /// Error budget: the wrong-hit rate a model and namespace may run at before deja raises
    /// its threshold (0 = no budget). See `crate::trust`.
    pub max_wrong_rate: f64,
    /// Shadow verification, the budget's pace and feedback (`[cache.trust]`).
    pub trust: TrustConfig,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: PathBuf::from("data/cache"),
            ttl_secs: 24 * 3600,
            similarity_threshold: 0.95,
            model_thresholds: BTreeMap::new(),
            shared: false,
            semantic: true,
            max_semantic_bytes: 16 * 1024,
            sweep_interval_secs: 60,
            compact_dead_ratio: 0.25,
            hnsw_min_entries: 4096,
            hnsw_m: DEFAULT_HNSW_M,
            hnsw_ef_construction: DEFAULT_HNSW_EF_CONSTRUCTION,
            hnsw_ef_search: DEFAULT_HNSW_EF_SEARCH,
            max_entries: 0,
            max_bytes: 0,
            cache_stored_responses: false,
            verify: Default::default(),
            max_wrong_rate: 0.0,
            trust: Default::default(),
        }
    }
}

impl CacheConfig {
    /// The configured threshold for `model` (per-model override first).
    pub fn threshold_for(&self, model: &str) -> f32 {
        self.model_thresholds
            .get(model)
            .copied()
            .unwrap_or(self.similarity_threshold)
    }
}

impl CacheConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_similarity("cache.similarity_threshold", self.similarity_threshold)?;
        for (model, value) in &self.model_thresholds {
            check_similarity(&format!("cache.model_thresholds.\"{model}\""), *value)?;
        }
        if let Err((key, problem)) = self.trust.validate(self.max_wrong_rate) {
            return invalid(key, problem);
        }
        if let Err((key, problem)) = self.verify.model.check() {
            return invalid(key, &problem);
        }
        if !(self.compact_dead_ratio > 0.0 && self.compact_dead_ratio <= 1.0) {
            return invalid("cache.compact_dead_ratio", "must be in (0, 1]");
        }
        if !(2..=128).contains(&self.hnsw_m) {
            return invalid("cache.hnsw_m", "must be in 2..=128");
        }
        if !(1..=4096).contains(&self.hnsw_ef_construction) {
            return invalid("cache.hnsw_ef_construction", "must be in 1..=4096");
        }
        if !(1..=4096).contains(&self.hnsw_ef_search) {
            return invalid("cache.hnsw_ef_search", "must be in 1..=4096");
        }
        if self.max_bytes > 0 && self.max_bytes < MIN_MAX_BYTES {
            return invalid(
                "cache.max_bytes",
                "must be 0 (no cap) or at least 65536: smaller holds hardly one answer",
            );
        }
        Ok(())
    }

    /// What the store, the index and the sweeper were built with. Thresholds, TTL, `shared`,
    /// `hnsw_ef_search`, verification and trust apply on reload.
    pub(super) fn keep_start_up(&self, next: &mut Self, changed: &mut Vec<&'static str>) {
        keep!(self, next, changed, "cache.enabled", enabled);
        keep!(self, next, changed, "cache.dir", dir);
        keep!(self, next, changed, "cache.semantic", semantic);
        keep!(
            self,
            next,
            changed,
            "cache.hnsw_min_entries",
            hnsw_min_entries
        );
        keep!(self, next, changed, "cache.hnsw_m", hnsw_m);
        keep!(
            self,
            next,
            changed,
            "cache.hnsw_ef_construction",
            hnsw_ef_construction
        );
        keep!(
            self,
            next,
            changed,
            "cache.compact_dead_ratio",
            compact_dead_ratio
        );
        keep!(
            self,
            next,
            changed,
            "cache.sweep_interval_secs",
            sweep_interval_secs
        );
        keep!(self, next, changed, "cache.max_entries", max_entries);
        keep!(self, next, changed, "cache.max_bytes", max_bytes);
    }
}

/// Thresholds are cosine *similarities*: 1 means identical, so 0 or >1 would silently disable
/// or invert caching (a bug other caches shipped).
fn check_similarity(key: &str, value: f32) -> Result<(), ConfigError> {
    if value.is_finite() && value > 0.0 && value <= 1.0 {
        Ok(())
    } else {
        invalid(
            key,
            &format!("is a cosine similarity and must be in (0, 1], got {value}"),
        )
    }
}
