//! Exact search of a small scope: every row's int8 codes (`quantized`) are scored, and the
//! best few are re-scored from the store's f16 vectors (within 5e-4 of exact). Past
//! `PREFILTER_ABOVE` rows, the rows are first ranked by their sign bits (`signs`) and only the
//! closest are scored by codes: a scan of 4,000 1536-d rows then costs about 4,000 Hamming
//! distances and 1,024 dot products instead of 4,000 dot products.

use super::quantized::{self, Coded, Query};
use super::signs;

/// Rows up to which every row is scored by codes (the prefilter would save little).
const PREFILTER_ABOVE: usize = 512;
/// Rows the prefilter passes on for each candidate asked for, and at least. Verification
/// falls back on the runners-up when the best candidate fails, so they must survive too: on
/// PAWS (4,962 sentences of few topics in one scope, 384-d) a shortlist of 256 lost 1% of the
/// verified hits, one of 1024 gives exactly the full scan's results at every threshold.
const PREFILTER_PER_K: usize = 64;
const PREFILTER_MIN: usize = 1024;

#[derive(Clone)]
pub struct Flat {
    pub dim: usize,
    pub ids: Vec<u64>,
    /// `dim` codes per row.
    codes: Vec<i8>,
    inv_norms: Vec<f32>,
    /// `signs::bytes_for(dim)` sign bits per row, from the codes.
    signs: Vec<u8>,
}

impl Flat {
    pub fn new(dim: usize) -> Self {
        Flat {
            dim,
            ids: Vec::new(),
            codes: Vec::new(),
            inv_norms: Vec::new(),
            signs: Vec::new(),
        }
    }

    pub fn from_rows(dim: usize, rows: Vec<(u64, Vec<f32>)>) -> Self {
        let mut flat = Flat {
            dim,
            ids: Vec::with_capacity(rows.len()),
            codes: Vec::with_capacity(rows.len() * dim),
            inv_norms: Vec::with_capacity(rows.len()),
            signs: Vec::with_capacity(rows.len() * signs::bytes_for(dim)),
        };
        for (id, vector) in rows {
            flat.insert(id, &vector);
        }
        flat
    }

    /// Every row as (id, codes, inverse norm), in row order.
    pub fn codes(&self) -> impl Iterator<Item = (u64, &[i8], f32)> {
        self.ids
            .iter()
            .zip(self.codes.chunks_exact(self.dim))
            .zip(&self.inv_norms)
            .map(|((&id, codes), &inv_norm)| (id, codes, inv_norm))
    }

    pub fn insert(&mut self, id: u64, vector: &[f32]) {
        self.ids.push(id);
        let start = self.codes.len();
        self.inv_norms
            .push(quantized::quantize_into(vector, &mut self.codes));
        signs::signs_into(&self.codes[start..], &mut self.signs);
    }

    fn sign_bytes(&self) -> usize {
        signs::bytes_for(self.dim)
    }

    pub fn remove(&mut self, id: u64) {
        let Some(row) = self.ids.iter().position(|&x| x == id) else {
            return;
        };
        self.ids.swap_remove(row);
        self.inv_norms.swap_remove(row);
        let last = self.codes.len() - self.dim;
        if row * self.dim != last {
            self.codes.copy_within(last.., row * self.dim);
        }
        self.codes.truncate(last);
        let width = self.sign_bytes();
        let last = self.signs.len() - width;
        if row * width != last {
            self.signs.copy_within(last.., row * width);
        }
        self.signs.truncate(last);
    }

    /// The vector stored for `id`, decoded from its codes (which encode back to the same
    /// codes).
    pub fn get(&self, id: u64) -> Option<Vec<f32>> {
        let row = self.ids.iter().position(|&x| x == id)?;
        let codes = self.codes.get(row * self.dim..(row + 1) * self.dim)?;
        Some(quantized::dequantize(codes, self.inv_norms[row]))
    }

    /// Keeps only the rows whose id passes `keep`, in one pass.
    pub fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        let width = self.sign_bytes();
        let mut kept = 0;
        for row in 0..self.ids.len() {
            let id = self.ids[row];
            if keep(id) {
                if kept != row {
                    self.ids[kept] = id;
                    self.inv_norms[kept] = self.inv_norms[row];
                    self.codes
                        .copy_within(row * self.dim..(row + 1) * self.dim, kept * self.dim);
                    self.signs
                        .copy_within(row * width..(row + 1) * width, kept * width);
                }
                kept += 1;
            }
        }
        self.ids.truncate(kept);
        self.inv_norms.truncate(kept);
        self.codes.truncate(kept * self.dim);
        self.signs.truncate(kept * width);
    }

    /// The rows that may be among the `k` most similar to `query`, with the similarity of
    /// their codes, to be re-scored exactly (`quantized::rescore`): every row of a small
    /// part; of a larger one, the rows closest by sign bits.
    pub fn approximate(&self, query: &Query, k: usize) -> Vec<Coded> {
        let shortlist = (k * PREFILTER_PER_K).max(PREFILTER_MIN);
        if self.ids.len() <= PREFILTER_ABOVE.max(shortlist) {
            return (0..self.ids.len())
                .map(|row| self.score(query, row))
                .collect();
        }
        let width = self.sign_bytes();
        let mut by_signs: Vec<(u32, u32)> = self
            .signs
            .chunks_exact(width)
            .enumerate()
            .map(|(row, signs)| (signs::hamming(&query.signs, signs), row as u32))
            .collect();
        by_signs.select_nth_unstable(shortlist - 1);
        by_signs[..shortlist]
            .iter()
            .map(|&(_, row)| self.score(query, row as usize))
            .collect()
    }

    /// Row `row` with the similarity of its codes to `query`.
    fn score(&self, query: &Query, row: usize) -> Coded {
        let codes = &self.codes[row * self.dim..(row + 1) * self.dim];
        let inv_norm = self.inv_norms[row];
        Coded {
            id: self.ids[row],
            similarity: quantized::cosine(&query.codes, query.inv_norm, codes, inv_norm),
            slack: quantized::slack(self.dim, query.inv_norm, inv_norm),
        }
    }

    /// Up to `k` rows, most similar first, with exact similarities from `source`.
    #[cfg(test)]
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        source: &dyn super::VectorSource,
    ) -> Vec<super::Candidate> {
        let found = self.approximate(&Query::new(query), k);
        quantized::rescore(found, query, k, f32::NEG_INFINITY, source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::index::Candidate;
    use crate::cache::index::tests::{Rows, random_unit as unit, reworded};

    #[test]
    fn search_is_exact_and_matches_brute_force() {
        let mut rng = fastrand::Rng::with_seed(21);
        let rows = Rows((0..300).map(|_| unit(&mut rng, 96)).collect());
        let flat = Flat::from_rows(
            96,
            rows.0
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, v)| (i as u64, v))
                .collect(),
        );
        for _ in 0..50 {
            let query = unit(&mut rng, 96);
            let mut exact: Vec<Candidate> = rows
                .0
                .iter()
                .enumerate()
                .map(|(id, row)| Candidate {
                    id: id as u64,
                    similarity: row.iter().zip(&query).map(|(a, b)| a * b).sum(),
                })
                .collect();
            exact.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
            exact.truncate(3);
            assert_eq!(flat.search(&query, 3, &rows), exact);
        }
    }

    fn brute_force(rows: &Rows, query: &[f32], k: usize) -> Vec<Candidate> {
        let mut exact: Vec<Candidate> = rows
            .0
            .iter()
            .enumerate()
            .map(|(id, row)| Candidate {
                id: id as u64,
                similarity: row.iter().zip(query).map(|(a, b)| a * b).sum(),
            })
            .collect();
        exact.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        exact.truncate(k);
        exact
    }

    #[test]
    fn a_long_scan_ranked_by_signs_first_finds_what_scoring_every_row_finds() {
        let mut rng = fastrand::Rng::with_seed(23);
        let dim = 1536;
        let rows = Rows((0..1500).map(|_| unit(&mut rng, dim)).collect());
        let mut flat = Flat::new(dim);
        for (id, row) in rows.0.iter().enumerate() {
            flat.insert(id as u64, row);
        }
        let query = unit(&mut rng, dim);
        let shortlist = flat.approximate(&Query::new(&query), 3);
        assert_eq!(shortlist.len(), PREFILTER_MIN, "the prefilter ran");
        // Rewordings of stored rows (what a hit looks like): the same best row, exactly
        // scored. (Rows near similarity 0, which no threshold accepts, may differ below it.)
        for _ in 0..40 {
            let source = &rows.0[rng.usize(..rows.0.len())];
            let query = reworded(&mut rng, source);
            let found = flat.search(&query, 3, &rows);
            assert_eq!(found[0], brute_force(&rows, &query, 1)[0]);
            assert!(found[1].similarity < 0.2);
        }
        // A crowd of rewordings of one question (a busy scope): every one of them passes the
        // prefilter, so the best three are exactly those of a full scan.
        let mut crowded = Flat::new(dim);
        let mut all = rows.0.clone();
        let topic = unit(&mut rng, dim);
        all.extend((0..200).map(|_| reworded(&mut rng, &topic)));
        let all = Rows(all);
        for (id, row) in all.0.iter().enumerate() {
            crowded.insert(id as u64, row);
        }
        for _ in 0..20 {
            let query = reworded(&mut rng, &topic);
            assert_eq!(
                crowded.search(&query, 3, &all),
                brute_force(&all, &query, 3)
            );
        }
        // Unrelated queries: any row the prefilter cut was within a hair of the best.
        for _ in 0..40 {
            let query = unit(&mut rng, dim);
            let found = flat.search(&query, 1, &rows);
            let best = brute_force(&rows, &query, 1);
            assert!(best[0].similarity - found[0].similarity < 0.02);
        }
        // Removing rows keeps every row's sign bits with its codes.
        flat.retain(|id| id % 3 != 0);
        flat.remove(1);
        let kept = Rows(
            rows.0
                .iter()
                .enumerate()
                .map(|(id, row)| {
                    if id % 3 == 0 || id == 1 {
                        vec![0.0; dim]
                    } else {
                        row.clone()
                    }
                })
                .collect(),
        );
        for id in [2usize, 500, 1499] {
            let query = reworded(&mut rng, &rows.0[id]);
            assert_eq!(flat.search(&query, 1, &kept)[0].id, id as u64);
        }
    }

    #[test]
    fn remove_keeps_rows_and_codes_together() {
        let mut rng = fastrand::Rng::with_seed(22);
        let rows = Rows((0..5).map(|_| unit(&mut rng, 16)).collect());
        let mut flat = Flat::new(16);
        for (id, row) in rows.0.iter().enumerate() {
            flat.insert(id as u64, row);
        }
        flat.remove(1);
        flat.remove(7);
        assert_eq!(flat.ids.len(), 4);
        for id in [0, 2, 3, 4] {
            let found = flat.search(&rows.0[id], 1, &rows);
            assert_eq!(found[0].id, id as u64);
            assert!((found[0].similarity - 1.0).abs() < 1e-5);
        }
        // Decoded rows encode back to the same codes (a graph shrunk back to a flat part).
        let decoded: Vec<(u64, Vec<f32>)> = flat
            .codes()
            .map(|(id, codes, inv)| (id, quantized::dequantize(codes, inv)))
            .collect();
        let again = Flat::from_rows(16, decoded);
        assert!(again.codes().eq(flat.codes()));
        assert_eq!(again.signs, flat.signs);
    }
}
