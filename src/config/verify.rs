//! `[cache.verify]` and `[cache.verify.model]`: the second check on semantic candidates
//! (`crate::cache::verify` runs it). Applies on reload.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which checks run; all are on by default (`[cache.verify]` in `proxy.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// Master switch.
    pub enabled: bool,
    /// The numbers in both prompts must be the same (as a multiset), compared as exact
    /// decimal text with their sign: "1.50" is "1.5" and ".25" is "0.25", "-3" is not "3",
    /// digits of other scripts ("２", "٢") count, and long ids are compared digit for digit.
    pub numbers: bool,
    /// Both prompts must be negated, or neither ("not", "no", "never", "n't", ...).
    pub negation: bool,
    /// Every capitalised word inside a sentence (a name: "Paris", "Python", "HTTPS") must
    /// appear in the other prompt too, in any case. Off by default: it also turns down
    /// "the capital of France" for "the French capital".
    pub entities: bool,
    /// Two words must not have traded places: "flights from Paris to London" is not "flights
    /// from London to Paris", nor "Alice beat Bob" "Bob beat Alice".
    pub word_order: bool,
    /// The model stage after the rules (`[cache.verify.model]`); off by default.
    pub model: ModelVerifyConfig,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            numbers: true,
            negation: true,
            entities: false,
            word_order: true,
            model: ModelVerifyConfig::default(),
        }
    }
}

/// `[cache.verify.model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelVerifyConfig {
    /// Off by default: it needs a model folder (README, "The verifier model").
    pub enabled: bool,
    /// A BERT-family sequence-classification cross-encoder: config.json, tokenizer.json,
    /// model.safetensors. One output (a similarity, read through a sigmoid), two (label 1 is
    /// "same"), or an NLI head with an "entailment" label (judged both ways, the lower wins).
    pub dir: PathBuf,
    /// With the model on, candidates down to this cosine are judged, below the configured
    /// threshold too: the model, not cosine, decides between the two. A threshold a request
    /// raised (`x-deja-threshold`) still holds. Unset: the configured threshold.
    pub lower_bound: Option<f32>,
    /// Lowest score (0..1) that accepts a candidate.
    pub accept: f32,
    /// Longest wait for a verdict; later is a rejection.
    pub timeout_ms: u64,
}

impl Default for ModelVerifyConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            dir: PathBuf::from("models/verifier"),
            lower_bound: None,
            accept: 0.5,
            timeout_ms: 1000,
        }
    }
}

impl ModelVerifyConfig {
    /// The first bad value: its key and what is wrong (`Config::validate` reports it).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(0.0..=1.0).contains(&self.accept) {
            return Err(("cache.verify.model.accept", "must be in 0..=1".into()));
        }
        if let Some(bound) = self.lower_bound
            && !(-1.0..=1.0).contains(&bound)
        {
            return Err(("cache.verify.model.lower_bound", "must be in -1..=1".into()));
        }
        if self.enabled && self.timeout_ms == 0 {
            return Err(("cache.verify.model.timeout_ms", "must be at least 1".into()));
        }
        Ok(())
    }
}
