//! The dashboard: a page on the admin listener that shows what the cache does (requests, hit
//! rates, savings, similarity histograms, recent lookups, per-key usage, upstream errors) and
//! replays recorded semantic lookups against other thresholds.
//!
//! What it shows is kept in `crate::observe::board` (recent lookups, per-minute totals,
//! sign-in sessions); this folder serves it:
//! - `replay`: what another threshold would have done; similarity histograms
//! - `signin`: the page's own routes (page, sign-in, sign-out, assets)
//! - `api`: the JSON calls the page (and scripts) use
//! - `cli`: `deja replay`, the replay from the command line
//! - `page`: the HTML, CSS and JavaScript, and the vendored chart library
//!

use serde::Serialize;

pub mod api;
pub mod cli;
mod page;
mod replay;
pub mod signin;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WrongHitReport {
    pub measured: bool,
    /// Share of checked hits judged wrong.
    pub wrong_hit_rate: Option<f64>,
    /// Hits checked so far.
    pub checked: u64,
    /// The error budget (largest acceptable wrong-hit rate) and how much of it is left.
    pub budget: Option<f64>,
    pub budget_remaining: Option<f64>,
    pub note: String,
}

impl WrongHitReport {
    /// From the `trust` section of `/admin/stats` (`crate::trust`): every hit judged by shadow
    /// verification, plus the hits feedback marked wrong, over all models and namespaces.
    /// Nothing judged yet: "not measured", saying how to measure.
    pub fn from_trust(trust: &serde_json::Value) -> WrongHitReport {
        let groups = trust["groups"].as_array().map_or(&[][..], Vec::as_slice);
        let sum = |field: &str| -> u64 { groups.iter().filter_map(|g| g[field].as_u64()).sum() };
        let wrong = sum("disagreed") + sum("feedback");
        let checked = sum("agreed") + wrong;
        let budget = trust["max_wrong_rate"].as_f64().filter(|b| *b > 0.0);
        if checked == 0 {
            return WrongHitReport {
                measured: false,
                wrong_hit_rate: None,
                checked: 0,
                budget,
                budget_remaining: None,
                note: "no hit judged yet (set cache.trust.shadow_sample_rate to re-ask a sample \
                       of hits upstream)"
                    .into(),
            };
        }
        let rate = wrong as f64 / checked as f64;
        WrongHitReport {
            measured: true,
            wrong_hit_rate: Some(rate),
            checked,
            budget,
            budget_remaining: budget.map(|b| (b - rate).max(0.0)),
            note: "shadow verification and feedback; per model and namespace in /admin/stats"
                .into(),
        }
    }
}
