//! Vectors as the index keeps them: one signed byte per component, scaled per vector so its
//! largest component is ±127, with the inverse norm of the codes beside them. That is 4x less
//! than f32 (1536 bytes for a 1536-d vector instead of 6144). The cosine of two codes is close
//! to the cosine of their vectors (errors around 1e-3 on 1536-d unit vectors), which is
//! enough to find candidates; the similarity deja compares to its threshold is then
//! re-scored from the stored vector (`rescore`; f16 in the store, within 5e-4 of the f32
//! cosine, about 5e-6 for a typical 1536-d pair).
//!
//! Dot products of codes use simsimd, which picks the CPU's widest integer SIMD at run time
//! (about 70 ns per 1536-d pair here, against 115-180 ns for an f32 dot product).

use simsimd::SpatialSimilarity;

use super::{Candidate, VectorSource};

/// Candidates re-scored beyond the `k` asked for, so that one ranked just below the k-th by its
/// codes but above it exactly is not lost.
pub const RESCORE_EXTRA: usize = 4;

/// Appends the codes of `vector` to `codes` and returns their inverse norm (0 for a zero or
/// non-finite vector, whose similarity to anything is then 0).
pub fn quantize_into(vector: &[f32], codes: &mut Vec<i8>) -> f32 {
    let max = vector.iter().fold(0.0f32, |max, x| max.max(x.abs()));
    if !(max.is_finite() && max > 0.0) {
        codes.extend(std::iter::repeat_n(0, vector.len()));
        return 0.0;
    }
    let scale = 127.0 / max;
    let start = codes.len();
    codes.extend(
        vector
            .iter()
            .map(|x| (x * scale).round().clamp(-127.0, 127.0) as i8),
    );
    inverse_norm(&codes[start..])
}

/// A query's codes and their sign bits (`super::signs`), made once per search.
pub struct Query {
    pub codes: Vec<i8>,
    pub inv_norm: f32,
    pub signs: Vec<u8>,
}

/// A candidate found by its codes: `similarity` is the cosine of the codes, and the cosine of
/// the vectors they stand for is at most `similarity + slack`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coded {
    pub id: u64,
    pub similarity: f32,
    pub slack: f32,
}

/// Added to every slack for what the codes do not see: the store keeps vectors as f16 (within
/// 5e-4 of the f32 cosine) and a query is only as unit as the embedder made it.
const STORED_SLACK: f32 = 1e-3;

/// How far the cosine of two codes can be from the cosine of their vectors, at most. Codes
/// are `s·v + r` with every rounding `|r_i| ≤ 1/2`, so a coded vector's direction is off by at
/// most `2‖r‖/‖codes‖ ≤ √d · inv_norm`; a cosine of two directions moves by at most the sum
/// of their errors. About 0.06 for typical 1536-d embeddings (the real error is ~1e-3).
pub fn slack(dim: usize, a_inv_norm: f32, b_inv_norm: f32) -> f32 {
    (dim as f32).sqrt() * (a_inv_norm + b_inv_norm) + STORED_SLACK
}

impl Query {
    pub fn new(vector: &[f32]) -> Query {
        let mut codes = Vec::with_capacity(vector.len());
        let inv_norm = quantize_into(vector, &mut codes);
        Query::from_codes(codes, inv_norm)
    }

    pub fn from_codes(codes: Vec<i8>, inv_norm: f32) -> Query {
        let mut signs = Vec::with_capacity(super::signs::bytes_for(codes.len()));
        super::signs::signs_into(&codes, &mut signs);
        Query {
            codes,
            inv_norm,
            signs,
        }
    }
}

pub fn inverse_norm(codes: &[i8]) -> f32 {
    let norm = (dot(codes, codes) as f32).sqrt();
    if norm > 0.0 { 1.0 / norm } else { 0.0 }
}

/// The cosine of two coded vectors.
pub fn cosine(a: &[i8], a_inv_norm: f32, b: &[i8], b_inv_norm: f32) -> f32 {
    dot(a, b) as f32 * a_inv_norm * b_inv_norm
}

fn dot(a: &[i8], b: &[i8]) -> f64 {
    // None only for slices of different lengths, which the index never compares.
    i8::dot(a, b).unwrap_or(0.0)
}

/// The unit vector the codes stand for. Quantizing it again gives the same codes, so a
/// partition can move between flat and graph form without the f32 originals.
pub fn dequantize(codes: &[i8], inv_norm: f32) -> Vec<f32> {
    codes.iter().map(|&c| f32::from(c) * inv_norm).collect()
}

/// The best `k` of `approximate` (most similar first by their codes), with exact similarities
/// computed from the stored vectors. Only the best by codes and those that may reach `floor`
/// are read from the store: one whose codes rule that out cannot matter to the caller, and a
/// miss then costs one vector read instead of `k + RESCORE_EXTRA`. A candidate whose vector
/// the source no longer has (just removed, or the store is being reopened) is dropped: a
/// miss, never a wrong score.
pub fn rescore(
    mut approximate: Vec<Coded>,
    query: &[f32],
    k: usize,
    floor: f32,
    source: &dyn VectorSource,
) -> Vec<Candidate> {
    let keep = k + RESCORE_EXTRA;
    let by_codes = |a: &Coded, b: &Coded| b.similarity.total_cmp(&a.similarity);
    if approximate.len() > keep {
        // The best `keep` without sorting the rest (a flat part has thousands of rows).
        approximate.select_nth_unstable_by(keep - 1, by_codes);
        approximate.truncate(keep);
    }
    approximate.sort_unstable_by(by_codes);
    let mut exact: Vec<Candidate> = approximate
        .into_iter()
        .enumerate()
        .filter(|(rank, candidate)| *rank == 0 || candidate.similarity + candidate.slack >= floor)
        .filter_map(|(_, candidate)| {
            let stored = source.vector(candidate.id)?;
            (stored.len() == query.len()).then(|| Candidate {
                id: candidate.id,
                similarity: query.iter().zip(&stored).map(|(a, b)| a * b).sum(),
            })
        })
        .collect();
    exact.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
    // One id may come twice (a partition's flat part and its graph); keep it once.
    let mut seen = std::collections::HashSet::with_capacity(exact.len());
    exact.retain(|c| seen.insert(c.id));
    exact.truncate(k);
    exact
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::index::tests::{Rows, random_unit as unit, reworded as near};

    fn exact(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn code_cosine_is_within_a_few_thousandths_of_the_exact_one() {
        let mut rng = fastrand::Rng::with_seed(3);
        for dim in [384, 1536] {
            let mut worst = 0.0f32;
            for _ in 0..300 {
                let a = unit(&mut rng, dim);
                let b = if rng.bool() {
                    near(&mut rng, &a)
                } else {
                    unit(&mut rng, dim)
                };
                let (mut ca, mut cb) = (Vec::new(), Vec::new());
                let (na, nb) = (quantize_into(&a, &mut ca), quantize_into(&b, &mut cb));
                worst = worst.max((cosine(&ca, na, &cb, nb) - exact(&a, &b)).abs());
            }
            assert!(worst < 0.005, "dim {dim}: worst error {worst}");
        }
    }

    #[test]
    fn dequantized_vectors_quantize_to_the_same_codes() {
        let mut rng = fastrand::Rng::with_seed(4);
        for _ in 0..50 {
            let v = unit(&mut rng, 256);
            let mut codes = Vec::new();
            let inv = quantize_into(&v, &mut codes);
            let mut again = Vec::new();
            let inv_again = quantize_into(&dequantize(&codes, inv), &mut again);
            assert_eq!(codes, again);
            assert_eq!(inv, inv_again);
        }
    }

    #[test]
    fn zero_and_non_finite_vectors_score_zero() {
        let mut codes = Vec::new();
        assert_eq!(quantize_into(&[0.0; 8], &mut codes), 0.0);
        assert_eq!(quantize_into(&[f32::NAN; 8], &mut codes), 0.0);
        assert_eq!(codes, vec![0; 16]);
        let q = Query::new(&[0.5; 8]);
        assert_eq!(cosine(&q.codes, q.inv_norm, &codes[..8], 0.0), 0.0);
    }

    #[test]
    fn rescore_gives_exact_similarities_in_exact_order_and_drops_missing_vectors() {
        let mut rng = fastrand::Rng::with_seed(5);
        let rows = Rows((0..6).map(|_| unit(&mut rng, 64)).collect());
        let query = near(&mut rng, &rows.0[2]);
        // Deliberately wrong approximate scores, and an id the source lacks.
        let approximate: Vec<Coded> = (0..7)
            .map(|id| Coded {
                id,
                similarity: 0.5,
                slack: 0.0,
            })
            .collect();
        let found = rescore(approximate, &query, 3, f32::NEG_INFINITY, &rows);
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].id, 2);
        for candidate in &found {
            let want = exact(&query, &rows.0[candidate.id as usize]);
            assert_eq!(candidate.similarity, want);
        }
        assert!(found.windows(2).all(|w| w[0].similarity >= w[1].similarity));
        let missing = vec![Coded {
            id: 99,
            similarity: 0.9,
            slack: 0.0,
        }];
        assert!(rescore(missing, &query, 3, f32::NEG_INFINITY, &rows).is_empty());
    }

    /// A unit vector whose largest component is `spike` times the others: the rounding of
    /// the small ones is then as coarse as codes get.
    fn spiky(rng: &mut fastrand::Rng, dim: usize, spike: f32) -> Vec<f32> {
        let mut v = unit(rng, dim);
        v[rng.usize(..dim)] = spike / (dim as f32).sqrt();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / norm).collect()
    }

    #[test]
    fn the_slack_bounds_how_far_a_code_cosine_is_from_the_exact_one() {
        let mut rng = fastrand::Rng::with_seed(6);
        for dim in [8, 64, 384, 1536] {
            for spike in [1.0, 4.0, 30.0] {
                for _ in 0..200 {
                    let a = spiky(&mut rng, dim, spike);
                    let b = match rng.u8(..3) {
                        0 => near(&mut rng, &a),
                        1 => spiky(&mut rng, dim, spike),
                        _ => unit(&mut rng, dim),
                    };
                    let (mut ca, mut cb) = (Vec::new(), Vec::new());
                    let (na, nb) = (quantize_into(&a, &mut ca), quantize_into(&b, &mut cb));
                    let error = (cosine(&ca, na, &cb, nb) - exact(&a, &b)).abs();
                    let bound = slack(dim, na, nb) - STORED_SLACK;
                    assert!(
                        error <= bound,
                        "dim {dim}, spike {spike}: {error} > {bound}"
                    );
                }
            }
        }
        // Not so loose that it rules nothing out: typical 1536-d vectors, about 0.06.
        let (a, b) = (unit(&mut rng, 1536), unit(&mut rng, 1536));
        let (mut ca, mut cb) = (Vec::new(), Vec::new());
        let bound = slack(1536, quantize_into(&a, &mut ca), quantize_into(&b, &mut cb));
        assert!(bound < 0.1, "{bound}");
    }

    /// Counts the vectors read.
    struct Counted<'a>(&'a Rows, std::sync::atomic::AtomicUsize);

    impl VectorSource for Counted<'_> {
        fn vector(&self, id: u64) -> Option<Vec<f32>> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.vector(id)
        }
    }

    #[test]
    fn rescore_reads_the_best_and_those_that_may_reach_the_floor_only() {
        let mut rng = fastrand::Rng::with_seed(7);
        let rows = Rows((0..6).map(|_| unit(&mut rng, 64)).collect());
        let query = near(&mut rng, &rows.0[4]);
        let coded = |id: u64, similarity: f32| Coded {
            id,
            similarity,
            slack: 0.05,
        };
        // 4 is the real neighbour; 1 may reach 0.8 by its slack; 0, 2 and 3 cannot; 5 is
        // the best by codes (a miss still learns how close it came).
        let approximate = vec![
            coded(0, 0.3),
            coded(1, 0.76),
            coded(2, 0.2),
            coded(3, 0.74),
            coded(4, 0.95),
            coded(5, 0.97),
        ];
        let source = Counted(&rows, Default::default());
        let found = rescore(approximate.clone(), &query, 4, 0.8, &source);
        assert_eq!(source.1.into_inner(), 3, "read 5, 4 and 1");
        let mut ids: Vec<u64> = found.iter().map(|c| c.id).collect();
        assert_eq!(
            ids.remove(0),
            4,
            "the real neighbour, exactly scored, first"
        );
        ids.sort();
        assert_eq!(ids, [1, 5]);
        // No floor: every one of them is read.
        let source = Counted(&rows, Default::default());
        assert_eq!(
            rescore(approximate, &query, 4, f32::NEG_INFINITY, &source).len(),
            4
        );
        assert_eq!(source.1.into_inner(), 6);
    }
}
