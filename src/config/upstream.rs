//! `[upstream]` and `[upstream.retry]`: where requests are relayed to, and how failed calls are
//! retried (`crate::upstream::retry` does the waiting).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Secret, check_url};

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
    /// Retries of failed upstream calls (`[upstream.retry]`, `crate::upstream::retry`).
    pub retry: RetryConfig,
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
pub struct RetryConfig {
    /// Attempts per model, the first included; 1 turns retries off.
    pub max_attempts: u32,
    /// Cap of the first backoff, doubled for every further retry.
    pub initial_backoff_ms: u64,
    /// Largest backoff cap, whatever the retry number.
    pub max_backoff_ms: u64,
    /// Seconds after a model's first attempt during which a retry may still start.
    pub deadline_secs: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff_ms: 200,
            max_backoff_ms: 5000,
            deadline_secs: 30.0,
        }
    }
}

impl UpstreamConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_url("upstream.base_url", &self.base_url)?;
        self.retry.validate()
    }

    /// `base_url`, `api_key` (and its file), `timeout_secs` and `retry` are read per request,
    /// so a reload applies them (a leaked key is rotated by a reload); the client's connection
    /// settings are fixed when it is built.
    pub(super) fn keep_start_up(&self, next: &mut Self, changed: &mut Vec<&'static str>) {
        keep!(
            self,
            next,
            changed,
            "upstream.connect_timeout_secs",
            connect_timeout_secs
        );
        keep!(
            self,
            next,
            changed,
            "upstream.idle_timeout_secs",
            idle_timeout_secs
        );
    }
}

impl RetryConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, problem: &str| {
            Err(ConfigError::Invalid {
                key: format!("upstream.retry.{key}"),
                problem: problem.into(),
            })
        };
        if self.max_attempts == 0 {
            return fail("max_attempts", "must be at least 1 (1 = no retries)");
        }
        if self.max_attempts > 100 {
            return fail("max_attempts", "must be at most 100");
        }
        if self.initial_backoff_ms == 0 {
            return fail("initial_backoff_ms", "must be at least 1 ms");
        }
        if self.max_backoff_ms < self.initial_backoff_ms {
            return fail("max_backoff_ms", "must be at least initial_backoff_ms");
        }
        if !(self.deadline_secs > 0.0 && self.deadline_secs <= 86_400.0) {
            return fail("deadline_secs", "must be a number of seconds in (0, 86400]");
        }
        Ok(())
    }
}
