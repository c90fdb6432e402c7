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

/// `count` queries, each a stored row plus noise (cosine ≈ 0.96 to its source): what a cache
/// hit looks like. `rows` is row-major with `dim` columns.
pub fn near_queries(
    rng: &mut fastrand::Rng,
    rows: &[f32],
    dim: usize,
    count: usize,
) -> Vec<Vec<f32>> {
    let n = rows.len() / dim;
    (0..count)
        .map(|i| {
            let source = &rows[((i * 7919) % n) * dim..][..dim];
            let noise = 0.6 / (dim as f32).sqrt();
            let mut q: Vec<f32> = source
                .iter()
                .map(|x| x + (rng.f32() - 0.5) * noise)
                .collect();
            normalize(&mut q);
            q
        })
        .collect()
}

/// The row index of the most similar row for each query, by one matrix product per block.
pub fn brute_force(rows: &[f32], dim: usize, queries: &[Vec<f32>]) -> Vec<usize> {
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
    best.into_iter().map(|(_, row)| row).collect()
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
