//! What a lookup asks of the cache and what it gets back: the planned request (`Lookup`),
//! what it accepts (`Requirements`), a usable entry (`Hit`) and a semantic lookup's outcome
//! with the candidates the dashboard's threshold replay reads.

use super::entry::Entry;
use super::key::Hash32;

/// What a lookup needs besides the key.
#[derive(Debug, Clone, Copy)]
pub struct Requirements {
    /// Only entries younger than this many milliseconds (`Cache-Control: max-age`).
    pub max_age_ms: Option<u64>,
    /// The request asks for token usage, so the entry must carry it.
    pub needs_usage: bool,
}

/// A cacheable request, reduced to what the cache needs (planned by `crate::flow`).
#[derive(Debug, Clone)]
pub struct Lookup {
    pub scope: Hash32,
    pub exact: Hash32,
    /// The last user message's text, for the semantic tier; `None` means exact tier only.
    pub semantic_text: Option<String>,
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
}

impl Lookup {
    /// What the request accepts from the cache: entries younger than `max_age_secs`, and
    /// with usage when it expects usage (a non-streaming answer always carries it; a stream
    /// only with `include_usage`).
    pub fn needs(&self, max_age_secs: Option<u64>) -> Requirements {
        Requirements {
            max_age_ms: max_age_secs.map(|s| s.saturating_mul(1000)),
            needs_usage: !self.stream || self.include_usage,
        }
    }
}

/// A usable entry and how it was found.
#[derive(Debug, Clone)]
pub struct Hit {
    pub id: u64,
    pub entry: Entry,
    /// 1.0 for an exact hit; the cosine similarity for a semantic one.
    pub similarity: f32,
    pub semantic: bool,
}

/// A semantic lookup's outcome; `best` is the highest similarity seen even when nothing hit
/// (operators tune thresholds from near-misses).
#[derive(Debug, Default)]
pub struct SemanticOutcome {
    pub hit: Option<Hit>,
    pub best: Option<f32>,
    /// Candidates above the threshold that verification turned down.
    pub rejected: usize,
    /// Usable candidates down to `REPLAY_FLOOR` (or to the hit), most similar first, judged by
    /// verification whether or not they were above the threshold: the dashboard's replay.
    pub candidates: Vec<Candidate>,
}

/// One semantic candidate as the threshold replay sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub similarity: f32,
    /// Verification (numbers, negation, ...) accepts it for the query.
    pub accepted: bool,
}

/// Lowest similarity a lookup still judges for the replay (never served below the threshold).
pub const REPLAY_FLOOR: f32 = 0.70;
