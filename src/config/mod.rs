//! Configuration: `proxy.toml`, then `DEJA_*` environment variables (figment), then validation.
//!
//! Every key is documented in the shipped `proxy.toml` and in the README. Unknown keys are
//! refused so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Keeps a start-up setting through a reload: when `next` changes it, the running value is
/// kept and the key is named in `changed`. With no field, the whole section.
macro_rules! keep {
    ($running:ident, $next:ident, $changed:ident, $name:literal) => {
        if super::differs(&*$running, &*$next) {
            $changed.push($name);
            *$next = $running.clone();
        }
    };
    ($running:ident, $next:ident, $changed:ident, $name:literal, $field:ident) => {
        if super::differs(&$running.$field, &$next.$field) {
            $changed.push($name);
            $next.$field = $running.$field.clone();
        }
    };
}

// One file per section: its keys, defaults, validation and what a reload cannot change.
mod access;
mod cache;
mod embedding;
mod env;
mod jobs;
mod log;
mod ranges;
mod redis;
mod routing;
mod server;
mod trust;
mod upstream;
mod verify;

pub use access::{AdminConfig, BudgetPeriod, KeyConfig, Price, UsageConfig, hash_key};
pub use cache::{
    CacheConfig, DEFAULT_HNSW_EF_CONSTRUCTION, DEFAULT_HNSW_EF_SEARCH, DEFAULT_HNSW_M,
};
pub use embedding::{EmbeddingConfig, EmbeddingEncoding, EmbeddingProvider};
pub use jobs::{JobsConfig, webhook_secret_key};
pub use log::{LogConfig, LogFormat};
pub use redis::RedisConfig;
pub use routing::{Route, RoutingConfig};
pub use server::ServerConfig;
pub use trust::TrustConfig;
pub use upstream::{RetryConfig, UpstreamConfig};
pub use verify::{ModelVerifyConfig, VerifyConfig};

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
    /// Model aliases and fallbacks (`crate::flow::models`).
    pub routing: RoutingConfig,
    /// Replicas sharing entries through Redis (`crate::replica`); absent, deja is one island.
    pub redis: Option<RedisConfig>,
    /// `DEJA_*` environment variables that name no key and were left out; not a key.
    #[serde(skip)]
    pub ignored_env: Vec<String>,
    /// The persistent job queue (`/v1/async/...`, `crate::jobs`).
    pub jobs: JobsConfig,
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

    /// Checks values whose meaning would otherwise be silently wrong; each section checks its
    /// own keys, `ranges` the bounds of every duration and count.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.cache.validate()?;
        ranges::check(self)?;
        if let Some(redis) = &self.redis {
            redis.validate()?;
        }
        if let Some((key, problem)) = self.jobs.problem() {
            return invalid(key, &problem);
        }
        self.upstream.validate()?;
        self.routing.validate()?;
        self.embedding.validate()?;
        access::validate(
            &self.keys,
            &self.pricing,
            self.upstream.api_key.is_some(),
            &self.admin,
        )
    }

    /// Copies into `next` the settings a reload cannot change (each section declares its own
    /// beside its keys) and names those `next` tried to change.
    pub fn keep_start_up_settings(&self, next: &mut Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        self.server.keep_start_up(&mut next.server, &mut changed);
        self.embedding
            .keep_start_up(&mut next.embedding, &mut changed);
        self.admin.keep_start_up(&mut next.admin, &mut changed);
        self.usage.keep_start_up(&mut next.usage, &mut changed);
        self.log.keep_start_up(&mut next.log, &mut changed);
        self.upstream
            .keep_start_up(&mut next.upstream, &mut changed);
        self.cache.keep_start_up(&mut next.cache, &mut changed);
        changed
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

/// The `[pricing]` entry that prices models the table does not list (and relayed calls).
pub const DEFAULT_PRICE: &str = "*";

fn differs<T: Serialize>(a: &T, b: &T) -> bool {
    serde_json::to_value(a).ok() != serde_json::to_value(b).ok()
}

fn invalid<T>(key: &str, problem: &str) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    })
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
