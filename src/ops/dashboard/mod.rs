//! The dashboard: a page on the admin listener that shows what the cache does (requests, hit
//! rates, savings, similarity histograms, recent lookups, per-key usage, upstream errors) and
//! replays recorded semantic lookups against other thresholds.
//!
//! - `lookups`: the bounded ring of recent requests, with each semantic lookup's candidates
//! - `totals`: per-minute totals of the last day
//! - `replay`: what another threshold would have done; similarity histograms
//! - `session`: the login form's session cookie and CSRF token
//! - `signin`: the page's own routes (page, sign-in, sign-out, assets)
//! - `api`: the JSON calls the page (and scripts) use
//! - `cli`: `deja replay`, the replay from the command line
//! - `page`: the HTML, CSS and JavaScript, and the vendored chart library
//!
//! Everything is fed from the same finished request records as `/metrics` and the usage log
//! (`Board::record`, called once per request), so the request path itself gains one push.

use std::path::Path;

use serde::Serialize;

use crate::config::{Config, EmbeddingProvider};
use crate::observe::usage::Record;

pub mod api;
pub mod cli;
mod lookups;
mod page;
mod replay;
pub mod session;
pub mod signin;
mod totals;

/// The dashboard's state, one per process (`App::dashboard`).
#[derive(Default)]
pub struct Board {
    pub lookups: lookups::LookupLog,
    pub minutes: totals::Minutes,
    pub sessions: session::Sessions,
}

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

impl Board {
    /// Takes one finished request (from the tracker, after the metrics and the usage log).
    pub fn record(&self, record: Record, config: &Config) {
        let share = totals::Totals::of(&record, embedding_cost(&record, config));
        self.minutes.add(record.ts_ms, &share);
        self.lookups.push(lookups::Lookup::of(record));
    }

    /// Keeps the per-minute totals in `dir` (the cache's directory), so the hour and day
    /// figures survive a restart. Written whole to a temporary file, then renamed. The recent
    /// lookups are not kept: they may carry prompt excerpts, and they are recent by nature.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec(&self.minutes.saved())?;
        let temporary = dir.join(format!("{TOTALS_FILE}.tmp"));
        std::fs::write(&temporary, text)?;
        std::fs::rename(&temporary, dir.join(TOTALS_FILE))
    }

    /// Reads what `save` kept; a missing or unreadable file leaves the totals empty.
    pub fn load(&self, dir: &Path) {
        let Ok(text) = std::fs::read(dir.join(TOTALS_FILE)) else {
            return;
        };
        match serde_json::from_slice::<Vec<(u64, totals::Totals)>>(&text) {
            Ok(saved) => self.minutes.restore(&saved),
            Err(err) => tracing::warn!(error = %err, "dashboard totals unreadable; starting empty"),
        }
    }
}

/// The file under `cache.dir` that keeps the dashboard's per-minute totals.
const TOTALS_FILE: &str = "dashboard-totals.json";

/// What embedding the prompt cost: the `openai` provider's model priced in `[pricing]` (that
/// model's own entry only: the `*` default is a chat price), at ~4 bytes a token.
fn embedding_cost(record: &Record, config: &Config) -> f64 {
    let Some(trace) = &record.semantic else {
        return 0.0;
    };
    if config.embedding.provider != EmbeddingProvider::Openai {
        return 0.0;
    }
    config
        .pricing
        .get(&config.embedding.model)
        .map_or(0.0, |price| {
            price.cost((trace.embedded_bytes as u64).div_ceil(4), 0)
        })
}
