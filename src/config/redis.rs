//! `[redis]`: several replicas sharing entries through Redis (`crate::replica`).

use serde::{Deserialize, Serialize};

use super::{ConfigError, Secret, invalid};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port/db` (or `rediss://` for TLS-less only builds: plain TCP here). Give
    /// the password through `password` (`DEJA_REDIS__PASSWORD`), never in the URL.
    pub url: String,
    /// AUTH password, if Redis asks for one.
    pub password: Option<Secret>,
    /// Prefix of every key deja writes, so several clusters can share one Redis.
    pub key_prefix: String,
    /// Milliseconds one Redis command may take; then the replica acts as if Redis were down.
    pub timeout_ms: u64,
    /// Milliseconds allowed to connect.
    pub connect_timeout_ms: u64,
    /// Seconds a starting replica may spend loading entries before it serves anyway.
    pub join_timeout_secs: u64,
    /// Events kept in the shared log (trimmed approximately); a replica away longer than that
    /// reloads every entry instead of replaying.
    pub log_max_len: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            password: None,
            key_prefix: "deja:".into(),
            timeout_ms: 250,
            connect_timeout_ms: 1000,
            join_timeout_secs: 120,
            log_max_len: 1_000_000,
        }
    }
}

impl RedisConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let url = self.url.trim();
        if !(url.starts_with("redis://") || url.starts_with("redis+unix://")) {
            return invalid(
                "redis.url",
                "must start with redis:// (e.g. redis://127.0.0.1:6379)",
            );
        }
        // The authority (before the path) must not carry `user:password@`.
        let authority = url.split("://").nth(1).unwrap_or("").split('/').next();
        if authority.is_some_and(|a| a.contains('@')) {
            return invalid("redis.url", "must not carry a password; set redis.password");
        }
        if !(1..=60_000).contains(&self.timeout_ms) {
            return invalid("redis.timeout_ms", "must be in 1..=60000");
        }
        if !(1..=60_000).contains(&self.connect_timeout_ms) {
            return invalid("redis.connect_timeout_ms", "must be in 1..=60000");
        }
        if self.join_timeout_secs > 86_400 {
            return invalid("redis.join_timeout_secs", "must be at most 86400");
        }
        if !(1000..=100_000_000).contains(&self.log_max_len) {
            return invalid("redis.log_max_len", "must be in 1000..=100000000");
        }
        Ok(())
    }
}
