//! `cache.max_wrong_rate` lives in `[cache]`; the rest of the trust settings in
//! `[cache.trust]`: shadow sampling, the judge, the budget's pace, feedback windows.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConfig {
    /// Share of semantic hits that are also sent upstream in the background and judged
    /// (0 = off, 1 = every hit).
    pub shadow_sample_rate: f64,
    /// Two answers whose embeddings' cosine is at least this agree (the default judge).
    pub agreement_threshold: f32,
    /// When set, a chat model asked through the upstream whether the two answers agree
    /// (a strict yes/no prompt) instead of comparing embeddings.
    pub judge_model: Option<String>,
    /// Shadow calls waiting or running at once; more are dropped and counted.
    pub shadow_queue: usize,
    /// Shadow calls sent upstream at the same time (fixed at start-up).
    pub shadow_concurrency: usize,
    /// The most recent judged hits kept per model and namespace for the estimate.
    pub window: usize,
    /// Judged hits (at or above the threshold in force) needed before the budget acts.
    pub min_samples: usize,
    /// Largest change of a threshold at a time.
    pub step: f32,
    /// Least time between two changes of one threshold.
    pub adjust_interval_secs: u64,
    /// Highest threshold the budget may raise to.
    pub max_threshold: f32,
    /// Raise as soon as the upper bound of the interval exceeds the budget (needs about
    /// 3/budget error-free samples before it stops); otherwise only when the estimate does.
    pub raise_on_upper_bound: bool,
    /// A `Cache-Control: no-cache` repeat of a hit's question (same tenant and scope) within
    /// this many seconds counts as "the hit was wrong". 0 = off.
    pub no_cache_window_secs: u64,
    /// The same question hitting the same entry again within this many seconds counts as
    /// "the hit was wrong". 0 = off (apps that retry would look like unhappy users).
    pub reask_window_secs: u64,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            shadow_sample_rate: 0.0,
            agreement_threshold: 0.9,
            judge_model: None,
            shadow_queue: 64,
            shadow_concurrency: 2,
            window: 1000,
            min_samples: 30,
            step: 0.01,
            adjust_interval_secs: 60,
            max_threshold: 0.99,
            raise_on_upper_bound: false,
            no_cache_window_secs: 120,
            reask_window_secs: 0,
        }
    }
}

impl TrustConfig {
    /// The key and the problem of the first bad value.
    pub fn validate(&self, max_wrong_rate: f64) -> Result<(), (&'static str, &'static str)> {
        let unit = |x: f64| (0.0..=1.0).contains(&x);
        if !unit(max_wrong_rate) {
            return Err(("cache.max_wrong_rate", "must be in [0, 1] (0 = no budget)"));
        }
        if !unit(self.shadow_sample_rate) {
            return Err(("cache.trust.shadow_sample_rate", "must be in [0, 1]"));
        }
        if !(self.agreement_threshold > 0.0 && self.agreement_threshold <= 1.0) {
            return Err(("cache.trust.agreement_threshold", "must be in (0, 1]"));
        }
        if self.judge_model.as_deref() == Some("") {
            return Err((
                "cache.trust.judge_model",
                "must name a model, or be left out",
            ));
        }
        if !(1..=100_000).contains(&self.shadow_queue) {
            return Err(("cache.trust.shadow_queue", "must be in 1..=100000"));
        }
        if !(1..=1024).contains(&self.shadow_concurrency) {
            return Err(("cache.trust.shadow_concurrency", "must be in 1..=1024"));
        }
        if !(10..=1_000_000).contains(&self.window) {
            return Err(("cache.trust.window", "must be in 10..=1000000"));
        }
        if !(1..=self.window).contains(&self.min_samples) {
            return Err(("cache.trust.min_samples", "must be in 1..=window"));
        }
        if !(self.step > 0.0 && self.step <= 0.1) {
            return Err(("cache.trust.step", "must be in (0, 0.1]"));
        }
        if self.adjust_interval_secs > 86_400 {
            return Err(("cache.trust.adjust_interval_secs", "must be at most a day"));
        }
        if !(self.max_threshold > 0.0 && self.max_threshold <= 1.0) {
            return Err(("cache.trust.max_threshold", "must be in (0, 1]"));
        }
        if self.no_cache_window_secs > 86_400 || self.reask_window_secs > 86_400 {
            return Err(("cache.trust", "feedback windows must be at most a day"));
        }
        Ok(())
    }
}
