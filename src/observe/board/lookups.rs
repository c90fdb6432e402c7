//! The recent-lookups ring: the last `CAPACITY` requests as the dashboard lists them, with the
//! semantic candidates the threshold replay needs. Bounded memory; no prompt text unless
//! `admin.show_prompts` (and then only an excerpt, `SemanticTrace`).

use parking_lot::Mutex;
use serde::Serialize;

use crate::cache::Candidate;
use crate::observe::usage::{Outcome, Record};
use crate::wire::endpoint::EndpointName;

/// Requests kept for the recent-lookups table, the histograms and the replay.
pub const CAPACITY: usize = 4096;

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
    /// The lookup of a finished request; takes the record, so nothing is copied on the
    /// request path (it is the tracker's last use of it).
    pub fn of(record: Record) -> Lookup {
        let Record {
            ts_ms,
            endpoint,
            model_used,
            model_asked,
            key_id,
            cache,
            status,
            similarity,
            best_similarity,
            latency_ms,
            retries,
            semantic,
            ..
        } = record;
        let verdict = match (cache, semantic.as_deref()) {
            (Outcome::HitSemantic, _) => Some("accepted"),
            (_, Some(trace)) if trace.rejected > 0 => Some("rejected"),
            _ => None,
        };
        let trace = semantic.map(|trace| *trace);
        let is_semantic = trace.is_some();
        let (namespace, candidates, prompt) = match trace {
            Some(trace) => (Some(trace.namespace), trace.candidates, trace.prompt),
            None => (None, Vec::new(), None),
        };
        Lookup {
            ts_ms,
            endpoint,
            model: model_used.or(model_asked),
            key_id,
            namespace,
            outcome: cache,
            status,
            similarity,
            best_similarity: best_similarity.or(similarity),
            verdict,
            latency_ms: (latency_ms * 10.0).round() / 10.0,
            retries,
            candidates,
            semantic: is_semantic,
            prompt,
        }
    }
}

/// The ring itself: a fixed number of slots written in turn, so a push moves one lookup in
/// and the one it replaces is dropped after the lock is released.
#[derive(Default)]
pub struct LookupLog {
    ring: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    slots: Vec<Lookup>,
    /// The slot the next push writes once `slots` is full (the oldest lookup).
    next: usize,
}

impl Ring {
    /// Oldest first.
    fn iter(&self) -> impl DoubleEndedIterator<Item = &Lookup> {
        let (newer, older) = self.slots.split_at(self.next);
        older.iter().chain(newer)
    }
}

impl LookupLog {
    pub fn push(&self, lookup: Lookup) {
        let evicted = {
            let mut ring = self.ring.lock();
            if ring.slots.len() < CAPACITY {
                ring.slots.push(lookup);
                None
            } else {
                let next = ring.next;
                ring.next = (next + 1) % CAPACITY;
                Some(std::mem::replace(&mut ring.slots[next], lookup))
            }
        };
        drop(evicted);
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
            log.push(Lookup::of(record));
        }
        let all = log.all();
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0].ts_ms, 10);
        assert_eq!(log.recent(2)[0].ts_ms, CAPACITY as u64 + 9);
    }
}
