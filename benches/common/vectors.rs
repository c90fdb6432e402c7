//! Random vectors, "near" queries and brute-force ground truth, shared by the index benches.
#![allow(dead_code)] // not every bench uses every helper

use deja::cache::index::normalize;
use ndarray::{ArrayView2, Axis, Slice};

/// A random unit vector (uniform in each coordinate, then normalised).
pub fn unit(rng: &mut fastrand::Rng, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim).map(|_| rng.f32() - 0.5).collect();
    normalize(&mut v);
    v
}

/// Where stored vectors come from: uniformly random unit vectors (HNSW's worst case: no
/// structure to follow), or "embedding-like" ones of low intrinsic dimension, as sentence
/// embeddings are: a fixed random map of a `latent`-dimensional Gaussian, plus 30% noise.
pub struct VectorKind {
    dim: usize,
    latent: usize,
    /// `dim × latent`, row-major; empty for uniform vectors.
    basis: Vec<f32>,
}

impl VectorKind {
    /// `latent` 0: uniform. The basis comes from a fixed seed, so another process that asks
    /// for the same kind gets the same vectors from the same `rng`.
    pub fn new(dim: usize, latent: usize) -> VectorKind {
        let mut rng = fastrand::Rng::with_seed(0xba515);
        let scale = 1.0 / (latent.max(1) as f32).sqrt();
        let basis = (0..dim * latent)
            .map(|_| gaussian(&mut rng) * scale)
            .collect();
        VectorKind { dim, latent, basis }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn latent(&self) -> usize {
        self.latent
    }

    pub fn describe(&self) -> String {
        match self.latent {
            0 => "uniform random unit vectors".into(),
            n => format!("embedding-like vectors (intrinsic dimension {n}, 30% noise)"),
        }
    }

    pub fn next(&self, rng: &mut fastrand::Rng) -> Vec<f32> {
        if self.latent == 0 {
            return unit(rng, self.dim);
        }
        let z: Vec<f32> = (0..self.latent).map(|_| gaussian(rng)).collect();
        let mut v: Vec<f32> = self
            .basis
            .chunks_exact(self.latent)
            .map(|row| row.iter().zip(&z).map(|(a, b)| a * b).sum::<f32>() + 0.3 * gaussian(rng))
            .collect();
        normalize(&mut v);
        v
    }
}

/// A standard normal sample (Box-Muller).
fn gaussian(rng: &mut fastrand::Rng) -> f32 {
    let u = rng.f32().max(f32::MIN_POSITIVE);
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * rng.f32()).cos()
}

/// The rows that `count` near queries over `n` stored rows are made from.
pub fn query_sources(n: usize, count: usize) -> Vec<usize> {
    (0..count).map(|i| (i * 7919) % n).collect()
}

/// `source` plus noise (cosine ≈ 0.96 to it): what a cache hit looks like.
pub fn near(rng: &mut fastrand::Rng, source: &[f32]) -> Vec<f32> {
    let noise = 0.6 / (source.len() as f32).sqrt();
    let mut q: Vec<f32> = source
        .iter()
        .map(|x| x + (rng.f32() - 0.5) * noise)
        .collect();
    normalize(&mut q);
    q
}

/// `count` near queries over `rows` (row-major, `dim` columns).
pub fn near_queries(
    rng: &mut fastrand::Rng,
    rows: &[f32],
    dim: usize,
    count: usize,
) -> Vec<Vec<f32>> {
    query_sources(rows.len() / dim, count)
        .into_iter()
        .map(|row| near(rng, &rows[row * dim..][..dim]))
        .collect()
}

/// The row index of the most similar row for each query.
pub fn brute_force(rows: &[f32], dim: usize, queries: &[Vec<f32>]) -> Vec<usize> {
    best_rows(rows, dim, queries)
        .into_iter()
        .map(|(_, row)| row)
        .collect()
}

/// The best (similarity, row index) for each query, by one matrix product per block.
pub fn best_rows(rows: &[f32], dim: usize, queries: &[Vec<f32>]) -> Vec<(f32, usize)> {
    let n = rows.len() / dim;
    let flat: Vec<f32> = queries.iter().flatten().copied().collect();
    let q = ArrayView2::from_shape((queries.len(), dim), &flat).expect("queries");
    let all = ArrayView2::from_shape((n, dim), rows).expect("rows");
    let mut best = vec![(f32::MIN, 0usize); queries.len()];
    const BLOCK: usize = 16384;
    for start in (0..n).step_by(BLOCK) {
        let end = (start + BLOCK).min(n);
        let scores = all.slice_axis(Axis(0), Slice::from(start..end)).dot(&q.t());
        for (row, scores) in scores.outer_iter().enumerate() {
            for (qi, &score) in scores.iter().enumerate() {
                if score > best[qi].0 {
                    best[qi] = (score, start + row);
                }
            }
        }
    }
    best
}

/// Exact nearest ids for fixed queries, fed the stored vectors a block at a time, so a store
/// of 10^6 large vectors never has to be held in memory twice.
pub struct Truth {
    pub queries: Vec<Vec<f32>>,
    dim: usize,
    best: Vec<(f32, u64)>,
    block: Vec<f32>,
    ids: Vec<u64>,
}

impl Truth {
    pub fn new(queries: Vec<Vec<f32>>, dim: usize) -> Truth {
        let best = vec![(f32::MIN, 0); queries.len()];
        Truth {
            queries,
            dim,
            best,
            block: Vec::new(),
            ids: Vec::new(),
        }
    }

    pub fn see(&mut self, id: u64, vector: &[f32]) {
        self.block.extend_from_slice(vector);
        self.ids.push(id);
        if self.ids.len() == 16384 {
            self.score_block();
        }
    }

    /// The id of the most similar vector seen, per query.
    pub fn finish(mut self) -> (Vec<Vec<f32>>, Vec<u64>) {
        self.score_block();
        (
            self.queries,
            self.best.into_iter().map(|(_, id)| id).collect(),
        )
    }

    fn score_block(&mut self) {
        for (best, (score, row)) in
            self.best
                .iter_mut()
                .zip(best_rows(&self.block, self.dim, &self.queries))
        {
            if !self.ids.is_empty() && score > best.0 {
                *best = (score, self.ids[row]);
            }
        }
        self.block.clear();
        self.ids.clear();
    }
}

/// The `q` quantile (0..=1) of `times`.
pub fn pct(times: &[f64], q: f64) -> f64 {
    if times.is_empty() {
        return 0.0;
    }
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
