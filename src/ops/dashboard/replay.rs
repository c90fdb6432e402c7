//! Threshold replay and similarity histograms, computed from the recorded semantic lookups.
//!
//! For a threshold t, a recorded lookup would have been:
//! - a **hit** if a candidate with similarity ≥ t passes verification (the flow serves the
//!   most similar candidate that does);
//! - a **wrong hit, estimated** if cosine alone would have served a candidate verification
//!   turns down: its most similar candidate is ≥ t and rejected. Verification turns down
//!   candidates that ask another question (other numbers, a negation, swapped words), so this
//!   counts the wrong answers the threshold alone would let through; it is a lower bound of
//!   the wrong-hit rate (verification does not catch everything).
//!
//! Rates are shares of the semantic lookups of the group.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::observe::board::lookups::Lookup;
use crate::observe::usage::Outcome;

/// Thresholds replayed: 0.70, 0.71, ... 0.99.
pub const FROM: u32 = 70;
pub const TO: u32 = 99;
/// Histogram bins of 0.01 from `HIST_LOW` to 1.00.
const HIST_LOW: u32 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Model,
    Namespace,
}

impl GroupBy {
    pub fn parse(text: &str) -> Option<GroupBy> {
        match text {
            "model" => Some(GroupBy::Model),
            "namespace" => Some(GroupBy::Namespace),
            _ => None,
        }
    }

    fn key(self, lookup: &Lookup) -> String {
        match self {
            GroupBy::Model => lookup.model.clone().unwrap_or_default(),
            GroupBy::Namespace => lookup.namespace.clone().unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    pub threshold: f32,
    pub hits: usize,
    pub wrong: usize,
    pub hit_rate: f64,
    pub wrong_hit_rate: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Curve {
    pub group: String,
    pub lookups: usize,
    pub points: Vec<Point>,
}

/// One curve per group, from the lookups that ran a semantic search.
pub fn replay(lookups: &[Lookup], by: GroupBy) -> Vec<Curve> {
    groups(lookups, by)
        .into_iter()
        .map(|(group, members)| Curve {
            group,
            lookups: members.len(),
            points: (FROM..=TO)
                .map(|t| point(&members, t as f32 / 100.0))
                .collect(),
        })
        .collect()
}

fn point(members: &[&Lookup], threshold: f32) -> Point {
    // Similarities are f32 and thresholds hundredths: compare with a small tolerance so a
    // candidate at 0.9 counts at t = 0.90.
    let above = |similarity: f32| similarity + 1e-6 >= threshold;
    let hits = members
        .iter()
        .filter(|l| {
            l.candidates
                .iter()
                .any(|c| above(c.similarity) && c.accepted)
        })
        .count();
    let wrong = members
        .iter()
        .filter(|l| {
            l.candidates
                .first()
                .is_some_and(|c| above(c.similarity) && !c.accepted)
        })
        .count();
    let share = |n: usize| {
        if members.is_empty() {
            0.0
        } else {
            n as f64 / members.len() as f64
        }
    };
    Point {
        threshold,
        hits,
        wrong,
        hit_rate: share(hits),
        wrong_hit_rate: share(wrong),
    }
}

fn groups(lookups: &[Lookup], by: GroupBy) -> BTreeMap<String, Vec<&Lookup>> {
    let mut groups: BTreeMap<String, Vec<&Lookup>> = BTreeMap::new();
    for lookup in lookups.iter().filter(|l| l.semantic) {
        groups.entry(by.key(lookup)).or_default().push(lookup);
    }
    groups
}

/// Counts per 0.01 bin from 0.50 (lower similarities land in the first bin).
#[derive(Debug, Clone, Serialize)]
pub struct Histogram {
    pub group: String,
    /// Lower edge of each bin.
    pub bins: Vec<f32>,
    /// Similarity of the entry served, for semantic hits.
    pub hits: Vec<u32>,
    /// Best similarity, for semantic lookups that did not hit.
    pub near_misses: Vec<u32>,
}

pub fn histograms(lookups: &[Lookup], by: GroupBy) -> Vec<Histogram> {
    let bins = (HIST_LOW..100)
        .map(|b| b as f32 / 100.0)
        .collect::<Vec<_>>();
    let bin = |similarity: f32| {
        let hundredths = (similarity * 100.0 + 1e-4).floor() as i64;
        (hundredths.clamp(HIST_LOW as i64, 99) - HIST_LOW as i64) as usize
    };
    groups(lookups, by)
        .into_iter()
        .map(|(group, members)| {
            let mut hits = vec![0; bins.len()];
            let mut near_misses = vec![0; bins.len()];
            for lookup in members {
                match (lookup.outcome, lookup.similarity, lookup.best_similarity) {
                    (Outcome::HitSemantic, Some(s), _) => hits[bin(s)] += 1,
                    (outcome, _, Some(best)) if !outcome.is_hit() => near_misses[bin(best)] += 1,
                    _ => {}
                }
            }
            Histogram {
                group,
                bins: bins.clone(),
                hits,
                near_misses,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Candidate;
    use crate::observe::usage::Record;

    fn lookup(model: &str, outcome: Outcome, candidates: &[(f32, bool)]) -> Lookup {
        let mut record = Record::new(crate::wire::endpoint::EndpointName::ChatCompletions, 0);
        record.cache = outcome;
        record.model_asked = Some(model.into());
        let mut lookup = Lookup::of(record);
        lookup.semantic = true;
        lookup.candidates = candidates
            .iter()
            .map(|&(similarity, accepted)| Candidate {
                similarity,
                accepted,
            })
            .collect();
        lookup.best_similarity = candidates.first().map(|c| c.0);
        lookup
    }

    fn at(curve: &Curve, t: u32) -> &Point {
        &curve.points[(t - FROM) as usize]
    }

    #[test]
    fn replay_counts_hits_and_wrong_hits_per_threshold() {
        let lookups = vec![
            // A paraphrase at 0.92: a hit up to 0.92.
            lookup("m", Outcome::Miss, &[(0.92, true)]),
            // A near miss verification rejects at 0.96, with a good one at 0.80 behind it.
            lookup("m", Outcome::Miss, &[(0.96, false), (0.80, true)]),
            // Nothing close.
            lookup("m", Outcome::Miss, &[]),
            // Another model, kept apart.
            lookup("other", Outcome::Miss, &[(0.99, true)]),
        ];
        let curves = replay(&lookups, GroupBy::Model);
        assert_eq!(curves.len(), 2);
        let m = &curves[0];
        assert_eq!((m.group.as_str(), m.lookups), ("m", 3));
        assert_eq!(at(m, 70).hits, 2);
        assert_eq!(at(m, 80).hits, 2);
        assert_eq!(at(m, 81).hits, 1);
        assert_eq!(at(m, 92).hits, 1);
        assert_eq!(at(m, 93).hits, 0);
        assert_eq!(at(m, 96).wrong, 1);
        assert_eq!(at(m, 97).wrong, 0);
        assert!((at(m, 90).hit_rate - 1.0 / 3.0).abs() < 1e-9);
        assert!((at(m, 90).wrong_hit_rate - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(at(&curves[1], 99).hits, 1);
        assert_eq!(m.points.len(), (TO - FROM + 1) as usize);
    }

    #[test]
    fn histograms_split_hits_from_near_misses() {
        let mut hit = lookup("m", Outcome::HitSemantic, &[(0.97, true)]);
        hit.similarity = Some(0.97);
        let lookups = vec![
            hit,
            lookup("m", Outcome::Miss, &[(0.83, true)]),
            lookup("m", Outcome::Miss, &[(0.2, true)]),
        ];
        let h = &histograms(&lookups, GroupBy::Model)[0];
        assert_eq!(h.hits[97 - 50], 1);
        assert_eq!(h.near_misses[83 - 50], 1);
        assert_eq!(h.near_misses[0], 1);
        assert_eq!(h.hits.iter().sum::<u32>(), 1);
    }
}
