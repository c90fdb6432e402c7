//! The recent-lookups ring: the last `CAPACITY` requests as the dashboard lists them, with the
//! semantic candidates the threshold replay needs. Bounded memory; no prompt text unless
//! `admin.show_prompts` (and then only its first `PROMPT_CHARS` characters).

use std::collections::VecDeque;

use parking_lot::Mutex;
use serde::Serialize;

use crate::cache::{Candidate, SemanticOutcome};
use crate::observe::usage::{Outcome, Record};
use crate::wire::endpoint::EndpointName;

/// Requests kept for the recent-lookups table, the histograms and the replay.
pub const CAPACITY: usize = 4096;
/// Longest prompt excerpt kept when `admin.show_prompts` is on.
const PROMPT_CHARS: usize = 300;

/// What the flow notes after a semantic lookup (`Record::semantic`).
#[derive(Debug, Clone, Default)]
pub struct SemanticTrace {
    pub namespace: String,
    /// Usable candidates from the most similar down, with verification's verdict.
    pub candidates: Vec<Candidate>,
    /// Candidates above the threshold that verification turned down.
    pub rejected: usize,
    /// Bytes of text embedded (prices the embedding call of the `openai` provider).
    pub embedded_bytes: usize,
    /// The last user message, only with `admin.show_prompts`.
    pub prompt: Option<String>,
}

impl SemanticTrace {
    /// The trace of one lookup; `show_prompts` keeps an excerpt of the embedded text.
    pub fn of(
        namespace: &str,
        text: Option<&str>,
        outcome: &SemanticOutcome,
        show_prompts: bool,
    ) -> Option<Box<SemanticTrace>> {
        Some(Box::new(SemanticTrace {
            namespace: namespace.to_string(),
            candidates: outcome.candidates.clone(),
            rejected: outcome.rejected,
            embedded_bytes: text.map_or(0, str::len),
            prompt: text
                .filter(|_| show_prompts)
                .map(|t| t.chars().take(PROMPT_CHARS).collect()),
        }))
    }
}

/// One request in the ring.
#[derive(Debug, Clone, Serialize)]
pub struct Lookup {
    pub ts_ms: u64,
    pub endpoint: EndpointName,
    pub model: Option<String>,
    pub key_id: Option<String>,
    pub namespace: Option<String>,
    pub outcome: Outcome,
    pub status: u16,
    /// Similarity of the entry served (hits).
    pub similarity: Option<f32>,
    /// Best similarity a semantic lookup saw.
    pub best_similarity: Option<f32>,
    /// `accepted` (a semantic hit), `rejected` (verification turned a candidate above the
    /// threshold down), or none.
    pub verdict: Option<&'static str>,
    pub latency_ms: f64,
    pub retries: u32,
    #[serde(skip)]
    pub candidates: Vec<Candidate>,
    /// Set only when a semantic lookup ran.
    #[serde(skip)]
    pub semantic: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

impl Lookup {
    pub fn of(record: &Record) -> Lookup {
        let trace = record.semantic.as_deref();
        let verdict = match (record.cache, trace) {
            (Outcome::HitSemantic, _) => Some("accepted"),
            (_, Some(trace)) if trace.rejected > 0 => Some("rejected"),
            _ => None,
        };
        Lookup {
            ts_ms: record.ts_ms,
            endpoint: record.endpoint,
            model: record.model_used.clone().or(record.model_asked.clone()),
            key_id: record.key_id.clone(),
            namespace: trace.map(|t| t.namespace.clone()),
            outcome: record.cache,
            status: record.status,
            similarity: record.similarity,
            best_similarity: record.best_similarity.or(record.similarity),
            verdict,
            latency_ms: (record.latency_ms * 10.0).round() / 10.0,
            retries: record.retries,
            candidates: trace.map(|t| t.candidates.clone()).unwrap_or_default(),
            semantic: trace.is_some(),
            prompt: trace.and_then(|t| t.prompt.clone()),
        }
    }
}

/// The ring itself.
#[derive(Default)]
pub struct LookupLog {
    ring: Mutex<VecDeque<Lookup>>,
}

impl LookupLog {
    pub fn push(&self, lookup: Lookup) {
        let mut ring = self.ring.lock();
        if ring.len() == CAPACITY {
            ring.pop_front();
        }
        ring.push_back(lookup);
    }

    /// The newest `limit` lookups, newest first.
    pub fn recent(&self, limit: usize) -> Vec<Lookup> {
        self.ring.lock().iter().rev().take(limit).cloned().collect()
    }

    /// Every lookup kept, oldest first (copied out, so the lock is held briefly).
    pub fn all(&self) -> Vec<Lookup> {
        self.ring.lock().iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest() {
        let log = LookupLog::default();
        for i in 0..CAPACITY as u64 + 10 {
            let mut record = Record::new(crate::wire::endpoint::EndpointName::ChatCompletions, i);
            record.cache = Outcome::Miss;
            log.push(Lookup::of(&record));
        }
        let all = log.all();
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0].ts_ms, 10);
        assert_eq!(log.recent(2)[0].ts_ms, CAPACITY as u64 + 9);
    }

    #[test]
    fn prompts_only_when_allowed() {
        let outcome = SemanticOutcome::default();
        let hidden = SemanticTrace::of("", Some("secret question"), &outcome, false).unwrap();
        assert_eq!(hidden.prompt, None);
        assert_eq!(hidden.embedded_bytes, 15);
        let shown = SemanticTrace::of("", Some("secret question"), &outcome, true).unwrap();
        assert_eq!(shown.prompt.as_deref(), Some("secret question"));
    }
}
