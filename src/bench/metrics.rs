//! Scoring a quality run: which hits are right, and the threshold sweep built from them.
//!
//! Pure arithmetic over what the caches answered (`quality::Answer`), so it is unit-tested on
//! hand-made data without a model or a store.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// One labelled pair: `b` asks for the same thing as `a` when `label` is 1.
#[derive(Debug, Clone, Deserialize)]
pub struct Pair {
    pub id: String,
    pub a: String,
    pub b: String,
    pub label: u8,
    #[serde(default)]
    pub source: String,
}

/// The thresholds every report covers: 0.70 to 0.99, step 0.01.
pub fn thresholds() -> Vec<f32> {
    (70..=99).map(|t| t as f32 / 100.0).collect()
}

/// Decides whether serving the answer stored for `hit_text` to query `b` is right.
pub struct Judge {
    /// Unordered text pair → (some pair labels it 1, some pair labels it 0).
    labels: HashMap<(String, String), (bool, bool)>,
}

fn key(x: &str, y: &str) -> (String, String) {
    if x <= y {
        (x.to_string(), y.to_string())
    } else {
        (y.to_string(), x.to_string())
    }
}

impl Judge {
    pub fn new(pairs: &[Pair]) -> Judge {
        let mut labels: HashMap<(String, String), (bool, bool)> = HashMap::new();
        for pair in pairs {
            let seen = labels.entry(key(&pair.a, &pair.b)).or_default();
            if pair.label == 1 {
                seen.0 = true;
            } else {
                seen.1 = true;
            }
        }
        Judge { labels }
    }

    /// Right when the stored prompt is `b` itself, or the pair's own `a` and the pair is a
    /// paraphrase, or another pair of the file labels the two texts a paraphrase (and none
    /// labels them different). A hit on a label-0 pair's own `a` is always wrong, and so is
    /// one that some pair labels different. A hit on a text that no pair labels against the
    /// query is `Unlabelled`: the file cannot say (read by hand, most such hits on real
    /// questions are true duplicates, a few are not).
    pub fn verdict(&self, pair: &Pair, hit_text: &str) -> Verdict {
        if hit_text == pair.b {
            return Verdict::Right;
        }
        if hit_text == pair.a {
            return if pair.label == 1 {
                Verdict::Right
            } else {
                Verdict::Wrong
            };
        }
        match self.labels.get(&key(hit_text, &pair.b)) {
            Some(&(true, false)) => Verdict::Right,
            Some(_) => Verdict::Wrong,
            None => Verdict::Unlabelled,
        }
    }
}

/// What serving a hit to a query was, as far as the pair file can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Right,
    Wrong,
    /// The file labels neither way the stored text against the query.
    Unlabelled,
}

/// What one cache answered to one query, already judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Found {
    /// 1.0 for an exact hit.
    pub similarity: f32,
    pub exact: bool,
    pub verdict: Verdict,
}

/// One query and what each cache answered at the lowest threshold of the sweep.
#[derive(Debug, Clone, Copy)]
pub struct Judged {
    pub label1: bool,
    /// Identical text was already cached: both caches hit exactly.
    pub exact: bool,
    pub cosine: Option<Found>,
    pub verified: Option<Found>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Cosine similarity alone (`cache.verify.enabled = false`).
    Cosine,
    /// Candidates also pass `VerifyConfig::accepts`.
    Verified,
}

impl Mode {
    pub const BOTH: [Mode; 2] = [Mode::Cosine, Mode::Verified];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Cosine => "cosine only",
            Mode::Verified => "verified",
        }
    }

    fn pick(self, judged: &Judged) -> Option<Found> {
        match self {
            Mode::Cosine => judged.cosine,
            Mode::Verified => judged.verified,
        }
    }
}

/// The figures at one threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Row {
    pub threshold: f32,
    pub queries: usize,
    pub label1: usize,
    pub right: usize,
    /// Hits the file labels wrong.
    pub wrong: usize,
    /// Hits on a stored text the file does not label against the query.
    pub unlabelled: usize,
    pub miss: usize,
    /// Right hits on label-1 queries (the numerator of `hit_rate`).
    pub right_label1: usize,
    /// Hits from the exact tier (identical text already cached).
    pub exact_hits: usize,
    /// Right hits on label-1 queries / label-1 queries.
    pub hit_rate: f64,
    /// Hits not known to be right (wrong and unlabelled) / all queries.
    pub wrong_rate: f64,
    /// Right hits / all hits, unlabelled ones counted as wrong; `None` without hits.
    pub precision: Option<f64>,
    /// Right hits / labelled hits (unlabelled ones left out); `None` without any.
    pub labelled_precision: Option<f64>,
    /// F-beta with beta 0.5 (precision weighs more) of `precision` and `hit_rate`.
    pub f05: f64,
}

fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// F-beta with beta = 0.5: (1 + b²)·P·R / (b²·P + R).
pub fn f05(precision: f64, recall: f64) -> f64 {
    let denominator = 0.25 * precision + recall;
    if denominator == 0.0 {
        0.0
    } else {
        1.25 * precision * recall / denominator
    }
}

/// A hit at `threshold` iff the answer found at the lowest threshold scores at least that
/// (see `quality::measure` for why one lookup per query decides every threshold).
pub fn row(judged: &[Judged], mode: Mode, threshold: f32) -> Row {
    let mut row = Row {
        threshold,
        queries: judged.len(),
        label1: 0,
        right: 0,
        wrong: 0,
        unlabelled: 0,
        miss: 0,
        right_label1: 0,
        exact_hits: 0,
        hit_rate: 0.0,
        wrong_rate: 0.0,
        precision: None,
        labelled_precision: None,
        f05: 0.0,
    };
    for query in judged {
        row.label1 += usize::from(query.label1);
        match mode
            .pick(query)
            .filter(|found| found.similarity >= threshold)
        {
            None => row.miss += 1,
            Some(found) => {
                row.exact_hits += usize::from(found.exact);
                match found.verdict {
                    Verdict::Right => {
                        row.right += 1;
                        row.right_label1 += usize::from(query.label1);
                    }
                    Verdict::Wrong => row.wrong += 1,
                    Verdict::Unlabelled => row.unlabelled += 1,
                }
            }
        }
    }
    row.hit_rate = ratio(row.right_label1, row.label1);
    row.wrong_rate = ratio(row.wrong + row.unlabelled, row.queries);
    let hits = row.hits();
    row.precision = (hits > 0).then(|| ratio(row.right, hits));
    let labelled = row.right + row.wrong;
    row.labelled_precision = (labelled > 0).then(|| ratio(row.right, labelled));
    row.f05 = f05(row.precision.unwrap_or(0.0), row.hit_rate);
    row
}

impl Row {
    /// Every hit: right, wrong and unlabelled.
    pub fn hits(&self) -> usize {
        self.right + self.wrong + self.unlabelled
    }
}

pub fn sweep(judged: &[Judged], mode: Mode) -> Vec<Row> {
    thresholds()
        .into_iter()
        .map(|t| row(judged, mode, t))
        .collect()
}

/// The thresholds a reader would pick from one sweep.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Choice {
    /// Highest F0.5 (the lowest threshold among ties).
    pub best_f05: Option<Row>,
    /// Lowest threshold whose precision, and that of every threshold above it, is ≥ 0.95.
    pub precision_95: Option<Row>,
    /// Highest threshold whose hit rate is still ≥ 50%.
    pub half_hit_rate: Option<Row>,
}

pub fn choose(rows: &[Row]) -> Choice {
    let best_f05 = rows
        .iter()
        .copied()
        .fold(None, |best: Option<Row>, row| match best {
            Some(best) if best.f05 >= row.f05 => Some(best),
            _ => Some(row),
        })
        .filter(|row| row.f05 > 0.0);
    let mut precision_95 = None;
    for row in rows.iter().rev() {
        if row.precision.is_some_and(|p| p >= 0.95) {
            precision_95 = Some(*row);
        } else if row.precision.is_some() {
            break;
        }
    }
    let half_hit_rate = rows.iter().rev().find(|row| row.hit_rate >= 0.5).copied();
    Choice {
        best_f05,
        precision_95,
        half_hit_rate,
    }
}

/// The row whose hit count (every hit) is closest to `hits` (the higher threshold on ties).
pub fn closest_hits(rows: &[Row], hits: usize) -> Option<Row> {
    rows.iter()
        .copied()
        .min_by_key(|row| (row.hits().abs_diff(hits), -(row.threshold * 100.0) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(id: &str, a: &str, b: &str, label: u8) -> Pair {
        Pair {
            id: id.into(),
            a: a.into(),
            b: b.into(),
            label,
            source: String::new(),
        }
    }

    #[test]
    fn judge_knows_paraphrases_through_other_pairs() {
        let pairs = [
            pair("1", "x", "y", 1),
            pair("2", "x", "z", 0),
            pair("3", "w", "z", 1),
        ];
        let judge = Judge::new(&pairs);
        assert_eq!(
            judge.verdict(&pairs[0], "x"),
            Verdict::Right,
            "own a, label 1"
        );
        assert_eq!(
            judge.verdict(&pairs[1], "x"),
            Verdict::Wrong,
            "own a, label 0"
        );
        assert_eq!(
            judge.verdict(&pairs[1], "w"),
            Verdict::Right,
            "w and z are paraphrases (pair 3)"
        );
        assert_eq!(
            judge.verdict(&pairs[1], "z"),
            Verdict::Right,
            "identical text"
        );
        assert_eq!(
            judge.verdict(&pairs[0], "w"),
            Verdict::Unlabelled,
            "nothing links w and y"
        );
        assert_eq!(
            judge.verdict(&pairs[2], "x"),
            Verdict::Wrong,
            "pair 2 labels x and z different"
        );
    }

    #[test]
    fn unlabelled_hits_have_their_own_column() {
        let found = |verdict| {
            Some(Found {
                similarity: 0.9,
                exact: false,
                verdict,
            })
        };
        let judged = [
            Verdict::Right,
            Verdict::Wrong,
            Verdict::Unlabelled,
            Verdict::Right,
        ]
        .map(|verdict| Judged {
            label1: true,
            exact: false,
            cosine: found(verdict),
            verified: None,
        });
        let row = row(&judged, Mode::Cosine, 0.9);
        assert_eq!(
            (row.right, row.wrong, row.unlabelled, row.hits()),
            (2, 1, 1, 4)
        );
        assert_eq!(
            row.precision,
            Some(0.5),
            "today's figure: unlabelled as wrong"
        );
        assert_eq!(row.labelled_precision, Some(2.0 / 3.0));
        assert_eq!(row.wrong_rate, 0.5);
    }

    #[test]
    fn f05_weighs_precision() {
        assert!((f05(1.0, 1.0) - 1.0).abs() < 1e-12);
        assert_eq!(f05(0.0, 0.0), 0.0);
        // P = 0.9, R = 0.5: 1.25 * 0.45 / (0.225 + 0.5)
        assert!((f05(0.9, 0.5) - 0.5625 / 0.725).abs() < 1e-12);
        assert!(f05(0.9, 0.5) > f05(0.5, 0.9));
    }

    #[test]
    fn rows_count_hits_at_or_above_the_threshold() {
        let found = |similarity, right: bool| {
            Some(Found {
                similarity,
                exact: false,
                verdict: if right {
                    Verdict::Right
                } else {
                    Verdict::Wrong
                },
            })
        };
        let judged = [
            Judged {
                label1: true,
                exact: false,
                cosine: found(0.95, true),
                verified: found(0.95, true),
            },
            Judged {
                label1: true,
                exact: false,
                cosine: found(0.80, true),
                verified: None,
            },
            Judged {
                label1: false,
                exact: false,
                cosine: found(0.90, false),
                verified: None,
            },
        ];
        let at = |mode, t| row(&judged, mode, t);
        let low = at(Mode::Cosine, 0.80);
        assert_eq!((low.right, low.wrong, low.miss), (2, 1, 0));
        assert_eq!(low.hit_rate, 1.0);
        assert!((low.wrong_rate - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(low.precision, Some(2.0 / 3.0));
        let mid = at(Mode::Cosine, 0.90);
        assert_eq!(
            (mid.right, mid.wrong, mid.miss),
            (1, 1, 1),
            "0.90 >= 0.90 hits"
        );
        let verified = at(Mode::Verified, 0.80);
        assert_eq!((verified.right, verified.wrong, verified.miss), (1, 0, 2));
        assert_eq!(verified.precision, Some(1.0));
        assert_eq!(verified.hit_rate, 0.5);
        let none = at(Mode::Cosine, 0.99);
        assert_eq!((none.precision, none.f05), (None, 0.0));

        let rows = sweep(&judged, Mode::Cosine);
        let choice = choose(&rows);
        assert_eq!(
            choice.best_f05.unwrap().threshold,
            0.91,
            "P 1, R 0.5 beats P 2/3, R 1"
        );
        assert_eq!(choice.precision_95.unwrap().threshold, 0.91);
        assert_eq!(choice.half_hit_rate.unwrap().threshold, 0.95);
        assert_eq!(closest_hits(&rows, 2).unwrap().threshold, 0.90);
    }
}
