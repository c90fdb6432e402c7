//! Configuration: `proxy.toml`, then `DEJA_*` environment variables (figment), then validation.
//!
//! Every key is documented in the shipped `proxy.toml` and in the README. Unknown keys are
//! refused so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::cache::index::HnswParams;
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

mod access;
mod env;
mod ranges;
mod redis;

pub use access::{AdminConfig, BudgetPeriod, KeyConfig, Price, UsageConfig};
pub use redis::RedisConfig;

/// Everything deja reads at start-up.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The listener that applications talk to.
    pub server: ServerConfig,
    /// Where requests are relayed to.
    pub upstream: UpstreamConfig,
    /// The answer cache.
    pub cache: CacheConfig,
    /// How prompts are turned into vectors for the semantic tier.
    pub embedding: EmbeddingConfig,
    /// Logging.
    pub log: LogConfig,
    /// Managed mode: the callers' deja keys (`[[keys]]`), each with optional limits.
    pub keys: Vec<KeyConfig>,
    /// Dollars per million tokens by model, for costs, savings and budgets.
    pub pricing: BTreeMap<String, Price>,
    /// The admin listener: health, readiness, metrics, cache administration, reload.
    pub admin: AdminConfig,
    /// The per-request usage log.
    pub usage: UsageConfig,
    /// The file this was loaded from (for reloads); not a key.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// Model aliases and fallbacks (`crate::routing`).
    pub routing: crate::routing::RoutingConfig,
    /// Replicas sharing entries through Redis (`crate::replica`); absent, deja is one island.
    pub redis: Option<RedisConfig>,
    /// `DEJA_*` environment variables that name no key and were left out; not a key.
    #[serde(skip)]
    pub ignored_env: Vec<String>,
    /// The persistent job queue (`/v1/async/...`, `crate::jobs`).
    pub jobs: crate::jobs::JobsConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on; loopback by default so nothing is exposed by accident.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// Most JSON items (elements, members, containers) in a body deja parses; more get 400.
    pub max_json_values: usize,
    /// Connections served at once; further ones wait in the accept queue.
    pub max_connections: usize,
    /// Seconds a client may take to send its request headers (slow-loris defence).
    pub header_timeout_secs: u64,
    /// Seconds a connection may stay open with no request in flight; then it is closed.
    pub idle_timeout_secs: u64,
    /// Seconds a client may take to send a body deja reads whole (cached endpoints), and the
    /// longest pause within a body streamed upstream (other paths); then 408.
    pub body_timeout_secs: u64,
    /// Seconds a response may wait for the client to read before the connection is cut.
    pub write_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 32 * 1024 * 1024,
            max_json_values: 1_000_000,
            max_connections: 4096,
            header_timeout_secs: 30,
            idle_timeout_secs: 60,
            body_timeout_secs: 60,
            write_timeout_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Base URL that `/v1/...` maps onto, including its own `/v1`.
    pub base_url: String,
    /// When set, replaces the caller's `Authorization` on every upstream request. Give it
    /// through `DEJA_UPSTREAM__API_KEY` or `api_key_file`; in proxy.toml it is refused unless
    /// `allow_plaintext_key` is true.
    pub api_key: Option<Secret>,
    /// A file holding the upstream key (trailing whitespace ignored).
    pub api_key_file: Option<PathBuf>,
    /// Accept `api_key` written in the TOML file itself.
    pub allow_plaintext_key: bool,
    /// Seconds allowed to establish a TCP/TLS connection.
    pub connect_timeout_secs: f64,
    /// Seconds allowed until the upstream's response headers arrive (then 504).
    pub timeout_secs: f64,
    /// Seconds a response body (e.g. a stream) may stay silent before it is cut.
    pub idle_timeout_secs: f64,
    /// Retries of failed upstream calls (`[upstream.retry]`, `crate::retry`).
    pub retry: crate::retry::RetryConfig,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.openai.com/v1".into(),
            api_key: None,
            api_key_file: None,
            allow_plaintext_key: false,
            connect_timeout_secs: 10.0,
            timeout_secs: 600.0,
            idle_timeout_secs: 300.0,
            retry: Default::default(),
        }
    }
}

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
    /// Scopes with fewer entries are searched exactly; larger ones get an HNSW graph.
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
    pub verify: crate::cache::verify::VerifyConfig,
    /// With `shared`, cache Responses API calls that upstream stores (`store` true or absent).
    /// Off: a hit's id (the upstream's) would belong to another caller's organization.
    pub cache_stored_responses: bool,
    /// Error budget: the wrong-hit rate a model and namespace may run at before deja raises
    /// its threshold (0 = no budget). See `crate::trust`.
    pub max_wrong_rate: f64,
    /// Shadow verification, the budget's pace and feedback (`[cache.trust]`).
    pub trust: crate::trust::TrustConfig,
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
            hnsw_m: HnswParams::default().m,
            hnsw_ef_construction: HnswParams::default().ef_construction,
            hnsw_ef_search: HnswParams::default().ef_search,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingProvider {
    /// `POST {base_url}/embeddings` on an OpenAI-compatible API.
    Openai,
    /// In-process sentence-transformers model (BERT family) loaded from `model_dir`.
    Local,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddingConfig {
    pub provider: EmbeddingProvider,
    /// Embeddings endpoint base; empty means "the upstream's base_url".
    pub base_url: String,
    /// Embedding model name sent upstream.
    pub model: String,
    /// Key for the embeddings call; when unset, the upstream key or else the caller's key is used.
    pub api_key: Option<Secret>,
    /// Milliseconds an embedding may take before the request proceeds as a miss.
    pub timeout_ms: u64,
    /// `local`: folder with config.json, tokenizer.json, model.safetensors (and optionally the
    /// sentence-transformers files); relative paths are taken from the working directory.
    pub model_dir: PathBuf,
    /// Most prompts embedded together: in one forward pass (`local`), in one `/embeddings`
    /// call (`openai`).
    pub max_batch: usize,
    /// `openai`: milliseconds a prompt waits for others to share its `/embeddings` call
    /// (0: only those already waiting).
    pub batch_wait_ms: u64,
    /// `openai`: length of the vectors asked for (the API's `dimensions`, text-embedding-3
    /// models); unset means the model's own. Part of the embedder id.
    pub dimensions: Option<usize>,
    /// `local`: CPU threads for inference; 0 means one per available core.
    pub threads: usize,
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        Self {
            provider: EmbeddingProvider::Openai,
            base_url: String::new(),
            model: "text-embedding-3-small".into(),
            api_key: None,
            timeout_ms: 2000,
            model_dir: PathBuf::from("models/all-MiniLM-L6-v2"),
            max_batch: 32,
            batch_wait_ms: 2,
            dimensions: None,
            threads: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `deja=debug,info`; `RUST_LOG` wins when set.
    pub level: String,
    /// `text` for humans, `json` for log pipelines.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

// === impl Secret ===

/// A credential whose `Debug` never prints it.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

// === loading and validation ===

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("config: `{key}` {problem}")]
    Invalid { key: String, problem: String },
}

impl Config {
    /// Reads `path` (missing file is fine: defaults), then `DEJA_*` env vars, then validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let (env, ignored_env) = env::config_env();
        let figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(path))
            .merge(env);
        let mut config: Config = figment.extract().map_err(Box::new)?;
        config.ignored_env = ignored_env;
        let key_in_file = figment
            .find_metadata("upstream.api_key")
            .is_some_and(|meta| meta.name.to_ascii_lowercase().contains("toml"));
        if key_in_file && !config.upstream.allow_plaintext_key {
            return invalid(
                "upstream.api_key",
                "is written in the config file; give it through DEJA_UPSTREAM__API_KEY or \
                 upstream.api_key_file (or set upstream.allow_plaintext_key = true)",
            );
        }
        config.resolve_secret_files()?;
        config.source = Some(path.to_path_buf());
        config.validate()?;
        Ok(config)
    }

    /// Reads `*_file` secrets into their values (an explicit value wins).
    pub fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        if self.upstream.api_key.is_none()
            && let Some(path) = &self.upstream.api_key_file
        {
            self.upstream.api_key = Some(access::read_secret_file("upstream.api_key_file", path)?);
        }
        if self.admin.token.is_none()
            && let Some(path) = &self.admin.token_file
        {
            self.admin.token = Some(access::read_secret_file("admin.token_file", path)?);
        }
        Ok(())
    }

    /// Managed mode: callers authenticate with deja keys, deja calls upstream with its own.
    pub fn managed(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The price of `model`'s tokens: its own entry, else the longest listed name it extends
    /// with a dash (`gpt-4o-mini` prices `gpt-4o-mini-2024-07-18`), else the default price
    /// `[pricing."*"]` when there is one.
    pub fn price(&self, model: &str) -> Option<&Price> {
        self.pricing.get(model).or_else(|| {
            self.pricing
                .iter()
                .filter(|(name, _)| {
                    model.len() > name.len()
                        && model.starts_with(name.as_str())
                        && model.as_bytes()[name.len()] == b'-'
                })
                .max_by_key(|(name, _)| name.len())
                .map(|(_, price)| price)
                .or_else(|| self.pricing.get(DEFAULT_PRICE))
        })
    }

    /// Checks values whose meaning would otherwise be silently wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_similarity(
            "cache.similarity_threshold",
            self.cache.similarity_threshold,
        )?;
        for (model, value) in &self.cache.model_thresholds {
            check_similarity(&format!("cache.model_thresholds.\"{model}\""), *value)?;
        }
        ranges::check(self)?;
        if let Some(redis) = &self.redis {
            redis.validate()?;
        }
        // `[jobs]` checks itself (`crate::jobs::config`).
        if let Some((key, problem)) = self.jobs.problem() {
            return invalid(key, &problem);
        }
        // Trust (shadow verification, error budget): its keys check themselves.
        if let Err((key, problem)) = self.cache.trust.validate(self.cache.max_wrong_rate) {
            return invalid(key, problem);
        }
        // The verifier model's own keys (src/cache/verify/model.rs).
        if let Err((key, problem)) = self.cache.verify.model.check() {
            return invalid(key, &problem);
        }
        if !(self.cache.compact_dead_ratio > 0.0 && self.cache.compact_dead_ratio <= 1.0) {
            return invalid("cache.compact_dead_ratio", "must be in (0, 1]");
        }
        if !(2..=128).contains(&self.cache.hnsw_m) {
            return invalid("cache.hnsw_m", "must be in 2..=128");
        }
        if !(1..=4096).contains(&self.cache.hnsw_ef_construction) {
            return invalid("cache.hnsw_ef_construction", "must be in 1..=4096");
        }
        if !(1..=4096).contains(&self.cache.hnsw_ef_search) {
            return invalid("cache.hnsw_ef_search", "must be in 1..=4096");
        }
        if self.cache.max_bytes > 0 && self.cache.max_bytes < MIN_MAX_BYTES {
            return invalid(
                "cache.max_bytes",
                "must be 0 (no cap) or at least 65536: smaller holds hardly one answer",
            );
        }
        check_url("upstream.base_url", &self.upstream.base_url)?;
        self.upstream.retry.validate()?;
        self.routing.validate()?;
        if !self.embedding.base_url.is_empty() {
            check_url("embedding.base_url", &self.embedding.base_url)?;
        }
        if !(1..=1024).contains(&self.embedding.max_batch) {
            return invalid("embedding.max_batch", "must be between 1 and 1024");
        }
        let wait = self.embedding.batch_wait_ms;
        if wait > 1000 || wait >= self.embedding.timeout_ms {
            return invalid(
                "embedding.batch_wait_ms",
                "must be at most 1000 and below embedding.timeout_ms",
            );
        }
        if let Some(dimensions) = self.embedding.dimensions {
            if self.embedding.provider != EmbeddingProvider::Openai {
                return invalid(
                    "embedding.dimensions",
                    "applies to provider = \"openai\" only",
                );
            }
            if !(1..=MAX_DIMENSIONS).contains(&dimensions) {
                return invalid(
                    "embedding.dimensions",
                    &format!("must be in 1..={MAX_DIMENSIONS}"),
                );
            }
        }
        if self.embedding.threads > 1024 {
            return invalid(
                "embedding.threads",
                "must be at most 1024 (0 = one per core)",
            );
        }
        if self.embedding.provider == EmbeddingProvider::Local
            && self.embedding.model_dir.as_os_str().is_empty()
        {
            return invalid(
                "embedding.model_dir",
                "must be set when provider = \"local\"",
            );
        }
        access::validate(
            &self.keys,
            &self.pricing,
            self.upstream.api_key.is_some(),
            &self.admin,
        )
    }

    /// The base URL of the embeddings API (its own, or the upstream's).
    pub fn embedding_base_url(&self) -> &str {
        if self.embedding.base_url.is_empty() {
            &self.upstream.base_url
        } else {
            &self.embedding.base_url
        }
    }
}

/// Longest vector `embedding.dimensions` may ask for (text-embedding-3-large has 3072).
const MAX_DIMENSIONS: usize = 16384;

/// The smallest byte cap accepted: one long answer with its vector takes tens of KB.
/// The `[pricing]` entry that prices models the table does not list (and relayed calls).
pub const DEFAULT_PRICE: &str = "*";

const MIN_MAX_BYTES: u64 = 64 * 1024;

fn invalid<T>(key: &str, problem: &str) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    })
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

fn check_url(key: &str, value: &str) -> Result<(), ConfigError> {
    match reqwest::Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(()),
        _ => invalid(key, &format!("must be an http(s) URL, got {value:?}")),
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests;
