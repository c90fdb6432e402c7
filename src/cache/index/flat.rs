//! Exact search of a small scope: every row's int8 codes (`quantized`) are scored, and the
//! best few are re-scored from the store's f32 vectors, so the similarities are exact.

use super::Candidate;
use super::quantized::{self, Query};

pub struct Flat {
    pub dim: usize,
    pub ids: Vec<u64>,
    /// `dim` codes per row.
    codes: Vec<i8>,
    inv_norms: Vec<f32>,
}

impl Flat {
    pub fn new(dim: usize) -> Self {
        Flat {
            dim,
            ids: Vec::new(),
            codes: Vec::new(),
            inv_norms: Vec::new(),
        }
    }

    pub fn from_rows(dim: usize, rows: Vec<(u64, Vec<f32>)>) -> Self {
        let mut flat = Flat {
            dim,
            ids: Vec::with_capacity(rows.len()),
            codes: Vec::with_capacity(rows.len() * dim),
            inv_norms: Vec::with_capacity(rows.len()),
        };
        for (id, vector) in rows {
            flat.insert(id, &vector);
        }
        flat
    }

    /// Every row as a unit vector decoded from its codes (which encode back to the same
    /// codes, so a graph built from these holds what this partition held).
    pub fn rows(&self) -> Vec<(u64, Vec<f32>)> {
        self.ids
            .iter()
            .zip(self.codes.chunks_exact(self.dim))
            .zip(&self.inv_norms)
            .map(|((&id, codes), &inv_norm)| (id, quantized::dequantize(codes, inv_norm)))
            .collect()
    }

    pub fn insert(&mut self, id: u64, vector: &[f32]) {
        self.ids.push(id);
        self.inv_norms
            .push(quantized::quantize_into(vector, &mut self.codes));
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
        let mut kept = 0;
        for row in 0..self.ids.len() {
            let id = self.ids[row];
            if keep(id) {
                if kept != row {
                    self.ids[kept] = id;
                    self.inv_norms[kept] = self.inv_norms[row];
                    self.codes
                        .copy_within(row * self.dim..(row + 1) * self.dim, kept * self.dim);
                }
                kept += 1;
            }
        }
        self.ids.truncate(kept);
        self.inv_norms.truncate(kept);
        self.codes.truncate(kept * self.dim);
    }

    /// Every row with the similarity of its codes to `query`, to be re-scored exactly
    /// (`quantized::rescore`).
    pub fn approximate(&self, query: &Query) -> Vec<Candidate> {
        self.ids
            .iter()
            .zip(self.codes.chunks_exact(self.dim))
            .zip(&self.inv_norms)
            .map(|((&id, codes), &inv_norm)| Candidate {
                id,
                similarity: quantized::cosine(&query.codes, query.inv_norm, codes, inv_norm),
            })
            .collect()
    }

    /// Up to `k` rows, most similar first, with exact similarities from `source`.
    #[cfg(test)]
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        source: &dyn super::VectorSource,
    ) -> Vec<Candidate> {
        quantized::rescore(self.approximate(&Query::new(query)), query, k, source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::index::tests::{Rows, random_unit as unit};

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
        assert_eq!(Flat::from_rows(16, flat.rows()).rows(), flat.rows());
    }
}
