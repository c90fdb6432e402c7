//! `[jobs]`: the persistent job queue (`POST /v1/async/...`).

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Serve `/v1/async/...`; off, those paths get a 404.
    pub enabled: bool,
    /// Jobs run at once; each is one request through the synchronous path.
    pub concurrency: usize,
    /// Where jobs are kept (their own sled store); empty: `<cache.dir>/jobs`.
    pub dir: Option<PathBuf>,
    /// Seconds a finished job (and its answer) stays readable.
    pub retention_secs: u64,
    /// Seconds deja keeps a batch made through it after it ended, and its merged files after
    /// they were made (OpenAI keeps batch output files 30 days).
    pub batch_retention_secs: u64,
    /// URL prefixes a job's `x-deja-callback-url` must start with; empty refuses every callback.
    pub callback_allow: Vec<String>,
    /// Standard Webhooks signing secret, `whsec_<base64>`; needed for callbacks.
    pub webhook_secret: Option<String>,
    /// Delivery attempts per webhook (the first included).
    pub webhook_max_attempts: u32,
    /// Wait before the second attempt, doubled after each failure.
    pub webhook_initial_backoff_ms: u64,
    /// Longest wait between two attempts.
    pub webhook_max_backoff_ms: u64,
    /// Seconds one webhook POST may take.
    pub webhook_timeout_secs: u64,
    /// The queue pauses when the upstream's `x-ratelimit-remaining-requests` reaches this.
    pub pause_when_remaining: u64,
    /// With `[redis]`: milliseconds a replica may hold a job without renewing its claim
    /// before another replica takes it over (it renews every third of this while alive).
    pub claim_idle_ms: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            enabled: true,
            concurrency: 4,
            dir: None,
            retention_secs: 86_400,
            batch_retention_secs: 30 * 86_400,
            callback_allow: Vec::new(),
            webhook_secret: None,
            webhook_max_attempts: 8,
            webhook_initial_backoff_ms: 1_000,
            webhook_max_backoff_ms: 300_000,
            webhook_timeout_secs: 10,
            pause_when_remaining: 0,
            claim_idle_ms: 30_000,
        }
    }
}

impl JobsConfig {
    /// What is wrong with these settings, as (key, problem).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if !(1..=1024).contains(&self.concurrency) {
            return Some(("jobs.concurrency", "must be in 1..=1024".into()));
        }
        if !(1..=100).contains(&self.webhook_max_attempts) {
            return Some(("jobs.webhook_max_attempts", "must be in 1..=100".into()));
        }
        if !(1..=30 * 86_400).contains(&self.retention_secs) {
            return Some((
                "jobs.retention_secs",
                "must be in 1..=2592000 (30 days)".into(),
            ));
        }
        if !(300..=3_600_000).contains(&self.claim_idle_ms) {
            return Some(("jobs.claim_idle_ms", "must be in 300..=3600000".into()));
        }
        if !(1..=365 * 86_400).contains(&self.batch_retention_secs) {
            return Some((
                "jobs.batch_retention_secs",
                "must be in 1..=31536000 (a year)".into(),
            ));
        }
        if !(1..=3_600).contains(&self.webhook_timeout_secs) {
            return Some(("jobs.webhook_timeout_secs", "must be in 1..=3600".into()));
        }
        for (key, ms) in [
            (
                "jobs.webhook_initial_backoff_ms",
                self.webhook_initial_backoff_ms,
            ),
            ("jobs.webhook_max_backoff_ms", self.webhook_max_backoff_ms),
        ] {
            if ms > 86_400_000 {
                return Some((key, "must be at most 86400000 (a day)".into()));
            }
        }
        if let Some(secret) = &self.webhook_secret
            && webhook_secret_key(secret).is_none()
        {
            return Some((
                "jobs.webhook_secret",
                "must be whsec_ followed by base64".into(),
            ));
        }
        for prefix in &self.callback_allow {
            if !(prefix.starts_with("https://") || prefix.starts_with("http://")) {
                return Some((
                    "jobs.callback_allow",
                    format!("{prefix:?} must start with http:// or https://"),
                ));
            }
        }
        if !self.callback_allow.is_empty() && self.webhook_secret.is_none() {
            return Some((
                "jobs.webhook_secret",
                "is needed when jobs.callback_allow lists callbacks".into(),
            ));
        }
        None
    }
}

/// The key bytes of a `whsec_...` secret.
pub fn webhook_secret_key(secret: &str) -> Option<Vec<u8>> {
    let key = STANDARD.decode(secret.strip_prefix("whsec_")?).ok()?;
    (!key.is_empty()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks_need_a_valid_secret_and_http_prefixes() {
        assert!(JobsConfig::default().problem().is_none());
        let mut config = JobsConfig {
            callback_allow: vec!["https://hooks.example.com/".into()],
            ..JobsConfig::default()
        };
        assert_eq!(config.problem().unwrap().0, "jobs.webhook_secret");
        config.webhook_secret = Some("not-a-secret".into());
        assert_eq!(config.problem().unwrap().0, "jobs.webhook_secret");
        config.webhook_secret = Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into());
        assert!(config.problem().is_none());
        config.callback_allow = vec!["ftp://x/".into()];
        assert_eq!(config.problem().unwrap().0, "jobs.callback_allow");
        let zero = JobsConfig {
            concurrency: 0,
            ..JobsConfig::default()
        };
        assert_eq!(zero.problem().unwrap().0, "jobs.concurrency");
    }
}
