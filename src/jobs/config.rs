//! `[jobs]`: the persistent job queue (`POST /v1/async/...`).

use std::path::PathBuf;

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
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            enabled: true,
            concurrency: 4,
            dir: None,
            retention_secs: 86_400,
            callback_allow: Vec::new(),
            webhook_secret: None,
            webhook_max_attempts: 8,
            webhook_initial_backoff_ms: 1_000,
            webhook_max_backoff_ms: 300_000,
            webhook_timeout_secs: 10,
            pause_when_remaining: 0,
        }
    }
}

impl JobsConfig {
    /// What is wrong with these settings, as (key, problem).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if !(1..=1024).contains(&self.concurrency) {
            return Some(("jobs.concurrency", "must be in 1..=1024".into()));
        }
        if self.webhook_max_attempts == 0 {
            return Some(("jobs.webhook_max_attempts", "must be at least 1".into()));
        }
        if let Some(secret) = &self.webhook_secret
            && crate::jobs::webhook::secret_key(secret).is_none()
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
