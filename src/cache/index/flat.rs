//! Exact search of a small scope: its f32 vectors in one row-major matrix, one
//! matrix-vector product per search.

use ndarray::{ArrayView1, ArrayView2};

use super::Candidate;

pub struct Flat {
    pub dim: usize,
    pub ids: Vec<u64>,
    vectors: Vec<f32>,
}

impl Flat {
    pub fn new(dim: usize) -> Self {
        Flat {
            dim,
            ids: Vec::new(),
            vectors: Vec::new(),
        }
    }

    pub fn from_rows(dim: usize, rows: Vec<(u64, Vec<f32>)>) -> Self {
        let mut flat = Flat {
            dim,
            ids: Vec::with_capacity(rows.len()),
            vectors: Vec::with_capacity(rows.len() * dim),
        };
        for (id, vector) in rows {
            flat.insert(id, &vector);
        }
        flat
    }

    pub fn rows(&self) -> Vec<(u64, Vec<f32>)> {
        self.ids
            .iter()
            .zip(self.vectors.chunks_exact(self.dim))
            .map(|(&id, v)| (id, v.to_vec()))
            .collect()
    }

    pub fn insert(&mut self, id: u64, vector: &[f32]) {
        self.ids.push(id);
        self.vectors.extend_from_slice(vector);
    }

    pub fn remove(&mut self, id: u64) {
        let Some(row) = self.ids.iter().position(|&x| x == id) else {
            return;
        };
        self.ids.swap_remove(row);
        let last = self.vectors.len() - self.dim;
        if row * self.dim != last {
            self.vectors.copy_within(last.., row * self.dim);
        }
        self.vectors.truncate(last);
    }

    /// The vector stored for `id`.
    pub fn get(&self, id: u64) -> Option<&[f32]> {
        let row = self.ids.iter().position(|&x| x == id)?;
        self.vectors.get(row * self.dim..(row + 1) * self.dim)
    }

    /// Keeps only the rows whose id passes `keep`, in one pass.
    pub fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        let mut kept = 0;
        for row in 0..self.ids.len() {
            let id = self.ids[row];
            if keep(id) {
                if kept != row {
                    self.ids[kept] = id;
                    self.vectors
                        .copy_within(row * self.dim..(row + 1) * self.dim, kept * self.dim);
                }
                kept += 1;
            }
        }
        self.ids.truncate(kept);
        self.vectors.truncate(kept * self.dim);
    }

    pub fn search(&self, query: &[f32], k: usize) -> Vec<Candidate> {
        let Ok(matrix) = ArrayView2::from_shape((self.ids.len(), self.dim), &self.vectors) else {
            return Vec::new();
        };
        let scores = matrix.dot(&ArrayView1::from(query));
        let mut found: Vec<Candidate> = self
            .ids
            .iter()
            .zip(scores.iter())
            .map(|(&id, &similarity)| Candidate { id, similarity })
            .collect();
        found.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        found.truncate(k);
        found
    }
}
