//! Recent semantic hits, so that a caller's reaction can count as evidence: the same
//! question again with `Cache-Control: no-cache` (or, when configured, simply again) soon
//! after a hit says the hit did not answer it.

use std::collections::HashMap;

use crate::cache::key::Hash32;

/// Hits remembered at most; past it the expired ones go, then all (losing evidence only).
const MAX_RECENT: usize = 65_536;

/// Which kind of evidence marked a hit wrong (`deja_trust_feedback_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    NoCache,
    Reask,
    Admin,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::NoCache, Kind::Reask, Kind::Admin];

    pub fn label(self) -> &'static str {
        match self {
            Kind::NoCache => "no_cache",
            Kind::Reask => "reask",
            Kind::Admin => "admin",
        }
    }
}

/// A semantic hit served: which entry answered which question.
#[derive(Debug, Clone)]
pub struct Served {
    pub entry: u64,
    pub similarity: f32,
    pub model: String,
    pub namespace: String,
    pub at_ms: u64,
}

/// Hits by the question they answered (scope and exact key: same tenant, same
/// conversation, same words).
#[derive(Debug, Default)]
pub struct Recent {
    hits: HashMap<(Hash32, Hash32), Served>,
}

impl Recent {
    /// Remembers `served`; returns the previous hit of the same question, if any.
    pub fn record(
        &mut self,
        question: (Hash32, Hash32),
        served: Served,
        keep_ms: u64,
    ) -> Option<Served> {
        if self.hits.len() >= MAX_RECENT {
            let now = served.at_ms;
            self.hits
                .retain(|_, hit| now.saturating_sub(hit.at_ms) < keep_ms);
            if self.hits.len() >= MAX_RECENT {
                self.hits.clear();
            }
        }
        self.hits.insert(question, served)
    }

    /// Takes the hit of `question` if it was served less than `within_ms` ago.
    pub fn take(
        &mut self,
        question: &(Hash32, Hash32),
        now_ms: u64,
        within_ms: u64,
    ) -> Option<Served> {
        let served = self.hits.remove(question)?;
        (now_ms.saturating_sub(served.at_ms) < within_ms).then_some(served)
    }

    /// The most recent hit served by `entry`, if one is remembered.
    pub fn of_entry(&self, entry: u64) -> Option<Served> {
        self.hits
            .values()
            .filter(|hit| hit.entry == entry)
            .max_by_key(|hit| hit.at_ms)
            .cloned()
    }

    /// Forgets every hit served by `entry` (it is gone).
    pub fn forget_entry(&mut self, entry: u64) {
        self.hits.retain(|_, hit| hit.entry != entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(entry: u64, at_ms: u64) -> Served {
        Served {
            entry,
            similarity: 0.95,
            model: "m".into(),
            namespace: String::new(),
            at_ms,
        }
    }

    #[test]
    fn a_hit_is_taken_once_and_only_within_the_window() {
        let mut recent = Recent::default();
        let q = (Hash32([1; 32]), Hash32([2; 32]));
        recent.record(q, served(7, 1_000), 60_000);
        assert!(recent.take(&q, 200_000, 60_000).is_none());
        recent.record(q, served(7, 1_000), 60_000);
        assert_eq!(recent.take(&q, 30_000, 60_000).map(|s| s.entry), Some(7));
        assert!(recent.take(&q, 30_000, 60_000).is_none());
    }

    #[test]
    fn hits_are_found_and_forgotten_by_entry() {
        let mut recent = Recent::default();
        recent.record((Hash32([1; 32]), Hash32([2; 32])), served(7, 1), 10);
        recent.record((Hash32([1; 32]), Hash32([3; 32])), served(7, 5), 10);
        assert_eq!(recent.of_entry(7).map(|s| s.at_ms), Some(5));
        recent.forget_entry(7);
        assert!(recent.of_entry(7).is_none());
    }
}
