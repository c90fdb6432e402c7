//! Lookups: what one asks of the cache and what it gets back (the planned request `Lookup`,
//! what it accepts `Requirements`, a usable entry `Hit`, and a semantic lookup's outcome with
//! the candidates the dashboard's threshold replay reads), and the cache's two lookups, exact
//! and semantic.

use super::entry::Entry;
use super::key::Hash32;
use super::store::StoreError;
use super::{Cache, SEMANTIC_CANDIDATES};

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

impl Cache {
    /// The entry stored under exactly this request, if usable.
    pub fn lookup_exact(
        &self,
        exact: &Hash32,
        needs: Requirements,
    ) -> Result<Option<Hit>, StoreError> {
        let Ok(store) = self.store() else {
            return Ok(None);
        };
        let Some((id, entry)) = store.get_exact(exact)? else {
            return Ok(None);
        };
        let usable = self.usable(&entry, needs);
        if usable {
            self.recency.touched(id);
            self.hits.served(id);
        }
        Ok(usable.then_some(Hit {
            id,
            entry,
            similarity: 1.0,
            semantic: false,
        }))
    }

    /// The most similar usable entry in `scope` at or above `threshold` whose prompt passes
    /// verification against `query` (the text that was embedded).
    pub fn lookup_semantic(
        &self,
        scope: &Hash32,
        vector: &[f32],
        query: &str,
        threshold: f32,
        needs: Requirements,
    ) -> Result<SemanticOutcome, StoreError> {
        let mut outcome = SemanticOutcome::default();
        // With the verifier model on, candidates down to its lower bound can hit.
        let model_stage = self.model_stage.load();
        let lowest = model_stage.lowest(threshold);
        let floor = lowest.min(REPLAY_FLOOR);
        let found = self
            .index
            .search_above(*scope, vector, SEMANTIC_CANDIDATES, floor);
        for candidate in found {
            outcome.best = Some(outcome.best.unwrap_or(f32::MIN).max(candidate.similarity));
            // Candidates under the lowest that can hit (down to REPLAY_FLOOR) are only judged
            // by the rules, for the dashboard's replay, at most SEMANTIC_CANDIDATES in all.
            // Those after a hit change no replayed threshold (each one at or below the hit
            // still hits), so a hit stops.
            if outcome.hit.is_some() || candidate.similarity < floor {
                break;
            }
            let Ok(store) = self.store() else {
                break;
            };
            let Some(entry) = store.get(candidate.id)? else {
                // Left in the index by writes lost with a reopened store: drop it, or it keeps
                // taking one of the few candidates a lookup examines.
                self.index.remove(*scope, candidate.id);
                continue;
            };
            // The index is per scope already; checking again costs nothing and guards the
            // invariant that matters most.
            if entry.scope != *scope.as_bytes() || !self.usable(&entry, needs) {
                continue;
            }
            let accepted = entry
                .prompt
                .as_ref()
                .is_none_or(|prompt| self.verify.load().accepts(query, prompt));
            outcome.candidates.push(Candidate {
                similarity: candidate.similarity.min(1.0),
                accepted,
            });
            if candidate.similarity < lowest
                || candidate.similarity < model_stage.floor(threshold, &entry.model)
            {
                continue; // below what may hit (the model may not lower a raised threshold)
            }
            if !accepted {
                outcome.rejected += 1;
                continue;
            }
            // The model stage, last and only on a candidate that passed everything else; it
            // fails closed (no prompt to read, an error or a timeout is a rejection).
            if let Some(judge) = &model_stage.judge
                && !entry
                    .prompt
                    .as_ref()
                    .is_some_and(|p| judge.accepts(query, p))
            {
                outcome.rejected += 1;
                continue;
            }
            self.recency.touched(candidate.id);
            self.hits.served(candidate.id);
            outcome.hit = Some(Hit {
                id: candidate.id,
                entry,
                similarity: candidate.similarity.min(1.0),
                semantic: true,
            });
        }
        Ok(outcome)
    }

    pub(super) fn usable(&self, entry: &Entry, needs: Requirements) -> bool {
        let now = self.now_ms();
        entry.is_live(now)
            && needs
                .max_age_ms
                .is_none_or(|max| now.saturating_sub(entry.created_ms) < max)
            && (!needs.needs_usage || entry.has_usage)
    }
}
