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

use std::sync::Arc;

use parking_lot::RwLock;
use serde::Serialize;

use crate::config::{Config, EmbeddingProvider};
use crate::usage::Record;

pub mod api;
pub mod cli;
pub mod lookups;
pub mod page;
pub mod replay;
pub mod session;
pub mod signin;
pub mod totals;

pub use lookups::SemanticTrace;

/// The dashboard's state, one per process (`App::dashboard`).
#[derive(Default)]
pub struct Board {
    pub lookups: lookups::LookupLog,
    pub minutes: totals::Minutes,
    pub sessions: session::Sessions,
    wrong_hits: RwLock<Option<Arc<dyn WrongHitSource>>>,
}

/// Where the wrong-hit panel gets its numbers: shadow verification (re-asking the upstream
/// for a sample of hits and comparing) plugs in here; until one is set the panel says
/// "not measured".
pub trait WrongHitSource: Send + Sync {
    fn report(&self) -> WrongHitReport;
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
    pub fn not_measured() -> WrongHitReport {
        WrongHitReport {
            measured: false,
            wrong_hit_rate: None,
            checked: 0,
            budget: None,
            budget_remaining: None,
            note: "shadow verification is not available in this build".into(),
        }
    }
}

impl Board {
    /// Takes one finished request (from the tracker, after the metrics and the usage log).
    pub fn record(&self, record: &Record, config: &Config) {
        let share = totals::Totals::of(record, embedding_cost(record, config));
        self.minutes.add(record.ts_ms, &share);
        self.lookups.push(lookups::Lookup::of(record));
    }

    pub fn set_wrong_hit_source(&self, source: Arc<dyn WrongHitSource>) {
        *self.wrong_hits.write() = Some(source);
    }

    pub fn wrong_hits(&self) -> WrongHitReport {
        self.wrong_hits
            .read()
            .as_ref()
            .map_or_else(WrongHitReport::not_measured, |source| source.report())
    }
}

/// What the flow notes after a semantic lookup (its one hook into the request path).
pub fn trace(
    app: &crate::app::App,
    namespace: &str,
    text: Option<&str>,
    outcome: &crate::cache::SemanticOutcome,
) -> Option<Box<SemanticTrace>> {
    SemanticTrace::of(namespace, text, outcome, app.config().admin.show_prompts)
}

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
