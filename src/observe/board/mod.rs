//! The dashboard's state, one per process (`App::dashboard`): the bounded ring of recent
//! requests with each semantic lookup's candidates (`lookups`), per-minute totals of the last
//! day (`totals`), and the sign-in sessions of the page (`session`). `crate::ops::dashboard`
//! serves it.
//!
//! Everything is fed from the same finished request records as `/metrics` and the usage log
//! (`Board::record`, called once per request), so the request path itself gains one push.

use std::path::Path;

use crate::config::{Config, EmbeddingProvider};
use crate::observe::usage::Record;

pub mod lookups;
pub mod session;
pub mod totals;

/// The dashboard's state, one per process (`App::dashboard`).
#[derive(Default)]
pub struct Board {
    pub lookups: lookups::LookupLog,
    pub minutes: totals::Minutes,
    pub sessions: session::Sessions,
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
