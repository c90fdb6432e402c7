//! `[redis]`: several replicas sharing entries through Redis (`crate::replica`).

use serde::{Deserialize, Serialize};

use super::{ConfigError, Secret, invalid};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port/db` or `redis+unix:///path` (plain TCP; no TLS in this build). Give
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
    /// Milliseconds a replica's claim on an in-flight miss lasts unless renewed (it is,
    /// while the call runs): other replicas wait for its answer, and take over this long
    /// after the claiming replica died.
    pub lease_ms: u64,
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
            lease_ms: 3000,
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
        if !(100..=600_000).contains(&self.lease_ms) {
            return invalid("redis.lease_ms", "must be in 100..=600000");
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use std::path::Path;

    use crate::config::Config;

    #[test]
    fn absent_by_default_and_set_by_the_environment_alone() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("proxy.toml", "")?;
            let config = Config::load(Path::new("proxy.toml")).expect("loads");
            assert!(config.redis.is_none());
            jail.set_env("DEJA_REDIS__URL", "redis://127.0.0.1:6390/2");
            let config = Config::load(Path::new("proxy.toml")).expect("loads");
            let redis = config.redis.expect("[redis] from the environment");
            assert_eq!(redis.url, "redis://127.0.0.1:6390/2");
            assert_eq!(redis.key_prefix, "deja:");
            assert_eq!(redis.timeout_ms, 250);
            Ok(())
        });
    }

    #[test]
    fn a_password_in_the_url_or_another_scheme_is_refused() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            for (url, words) in [
                ("redis://:hunter2@127.0.0.1:6379", "password"),
                ("redis://user:pw@host/0", "password"),
                ("http://127.0.0.1:6379", "redis://"),
                ("", "redis://"),
            ] {
                jail.create_file("proxy.toml", &format!("[redis]\nurl = \"{url}\"\n"))?;
                let err = Config::load(Path::new("proxy.toml")).expect_err(url);
                let text = err.to_string();
                assert!(
                    text.contains("redis.url") && text.contains(words),
                    "{url}: {text}"
                );
                assert!(!text.contains("hunter2"), "{text}");
            }
            jail.create_file(
                "proxy.toml",
                "[redis]\nurl = \"redis://h:1\"\ntimeout_ms = 0\n",
            )?;
            assert!(Config::load(Path::new("proxy.toml")).is_err());
            Ok(())
        });
    }
}
