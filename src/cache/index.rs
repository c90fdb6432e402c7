//! The in-process vector index, partitioned by scope.
//!
//! A semantic hit is only allowed between prompts of the same scope, so each scope gets its
//! own partition and a search never even sees another tenant's or conversation's vectors.
//! Small partitions (most scopes: one conversation prefix) are searched exactly with ndarray;
//! a partition that grows past `hnsw_min_entries` gets an `hnsw_rs` graph. HNSW has no delete:
//! removed ids are remembered as dead, over-fetched past, and the graph is rebuilt once the dead
//! pass `compact_dead_ratio`. All methods block (CPU work): call them off the async workers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use hnsw_rs::prelude::{DistDot, Hnsw};
use ndarray::{ArrayView1, ArrayView2};
use parking_lot::RwLock;

use super::key::Hash32;

const HNSW_MAX_LAYERS: usize = 16;
/// Candidates fetched per search, so dead ids can be skipped without a filter (filters
/// disable hnsw_rs's early exit and were 5x slower).
const OVERFETCH: usize = 10;
/// hnsw_rs asserts dot <= 1.000002; scaling stored unit vectors down by this much keeps
/// rounding from tripping it. Similarities are re-scored exactly, so nothing else changes.
const GRAPH_SCALE: f32 = 1.0 - 1e-5;

#[derive(Debug, Clone, Copy)]
pub struct IndexSettings {
    pub hnsw_min_entries: usize,
    pub compact_dead_ratio: f32,
    pub params: HnswParams,
}

impl Default for IndexSettings {
    fn default() -> Self {
        Self {
            hnsw_min_entries: 4096,
            compact_dead_ratio: 0.25,
            params: HnswParams::default(),
        }
    }
}

/// HNSW build parameters and search breadth (`benches/index_scale.rs` measures them).
#[derive(Debug, Clone, Copy)]
pub struct HnswParams {
    /// Links per point (M); layer 0 keeps twice as many.
    pub m: usize,
    pub ef_construction: usize,
    pub ef_search: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        // From the field notes: ef_search 64 gave recall@1 0.945 on random 384-d vectors.
        Self {
            m: 16,
            ef_construction: 200,
            ef_search: 64,
        }
    }
}

/// A search result: the entry id and its exact cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub id: u64,
    pub similarity: f32,
}

/// Where the exact f32 vectors live (the store), for re-scoring candidates.
pub trait VectorSource: Send + Sync {
    fn vector(&self, id: u64) -> Option<Vec<f32>>;
}

pub struct VectorIndex {
    settings: IndexSettings,
    partitions: RwLock<HashMap<Hash32, Arc<RwLock<Partition>>>>,
}

impl VectorIndex {
    pub fn new(settings: IndexSettings, _source: Arc<dyn VectorSource>) -> Self {
        Self {
            settings,
            partitions: RwLock::new(HashMap::new()),
        }
    }

    /// Adds a unit vector for `id` in `scope`.
    pub fn insert(&self, scope: Hash32, id: u64, vector: &[f32]) {
        let partition = self
            .partitions
            .write()
            .entry(scope)
            .or_insert_with(|| Arc::new(RwLock::new(Partition::new(vector.len()))))
            .clone();
        let mut partition = partition.write();
        if partition.dim() != vector.len() {
            // A vector from another model; the cache layer prevents this, never mix them.
            return;
        }
        partition.insert(id, vector);
        if let Partition::Flat(flat) = &*partition
            && flat.ids.len() >= self.settings.hnsw_min_entries
        {
            *partition =
                Partition::Graph(Graph::build(flat.dim, flat.rows(), self.settings.params));
        }
    }

    /// Replaces a whole partition at once (start-up): one bulk graph build, not many inserts.
    pub fn load(&self, scope: Hash32, rows: Vec<(u64, Vec<f32>)>) {
        let Some(dim) = rows.first().map(|(_, v)| v.len()) else {
            return;
        };
        let rows: Vec<_> = rows.into_iter().filter(|(_, v)| v.len() == dim).collect();
        let partition = if rows.len() >= self.settings.hnsw_min_entries {
            Partition::Graph(Graph::build(dim, rows, self.settings.params))
        } else {
            Partition::Flat(Flat::from_rows(dim, rows))
        };
        self.partitions
            .write()
            .insert(scope, Arc::new(RwLock::new(partition)));
    }

    /// Forgets `id`; its vector is never returned again.
    pub fn remove(&self, scope: Hash32, id: u64) {
        let Some(partition) = self.partitions.read().get(&scope).cloned() else {
            return;
        };
        let mut guard = partition.write();
        guard.remove(id);
        if guard.live() == 0 {
            drop(guard);
            self.partitions.write().remove(&scope);
            return;
        }
        if let Partition::Graph(graph) = &*guard
            && graph.dead_ratio() > self.settings.compact_dead_ratio
        {
            let rows = graph.rows();
            *guard = if rows.len() < self.settings.hnsw_min_entries {
                Partition::Flat(Flat::from_rows(graph.dim, rows))
            } else {
                Partition::Graph(Graph::build(graph.dim, rows, self.settings.params))
            };
        }
    }

    /// Up to `k` live candidates in `scope`, most similar first.
    pub fn search(&self, scope: Hash32, query: &[f32], k: usize) -> Vec<Candidate> {
        let Some(partition) = self.partitions.read().get(&scope).cloned() else {
            return Vec::new();
        };
        let partition = partition.read();
        if partition.dim() != query.len() {
            return Vec::new();
        }
        let mut found = partition.search(query, k);
        found.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        found.truncate(k);
        found
    }

    /// Live vectors across all partitions.
    pub fn len(&self) -> usize {
        let partitions: Vec<_> = self.partitions.read().values().cloned().collect();
        partitions.iter().map(|p| p.read().live()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&self) {
        self.partitions.write().clear();
    }
}

enum Partition {
    Flat(Flat),
    Graph(Graph),
}

impl Partition {
    fn new(dim: usize) -> Self {
        Partition::Flat(Flat {
            dim,
            ids: Vec::new(),
            vectors: Vec::new(),
        })
    }

    fn dim(&self) -> usize {
        match self {
            Partition::Flat(flat) => flat.dim,
            Partition::Graph(graph) => graph.dim,
        }
    }

    fn live(&self) -> usize {
        match self {
            Partition::Flat(flat) => flat.ids.len(),
            Partition::Graph(graph) => graph.vectors.len(),
        }
    }

    fn insert(&mut self, id: u64, vector: &[f32]) {
        match self {
            Partition::Flat(flat) => {
                flat.ids.push(id);
                flat.vectors.extend_from_slice(vector);
            }
            Partition::Graph(graph) => graph.insert(id, vector),
        }
    }

    fn remove(&mut self, id: u64) {
        match self {
            Partition::Flat(flat) => {
                if let Some(row) = flat.ids.iter().position(|&x| x == id) {
                    flat.ids.swap_remove(row);
                    let dim = flat.dim;
                    let last = flat.vectors.len() - dim;
                    if row * dim != last {
                        flat.vectors.copy_within(last.., row * dim);
                    }
                    flat.vectors.truncate(last);
                }
            }
            Partition::Graph(graph) => {
                if graph.vectors.remove(&id).is_some() {
                    graph.dead.insert(id);
                }
            }
        }
    }

    fn search(&self, query: &[f32], k: usize) -> Vec<Candidate> {
        match self {
            Partition::Flat(flat) => flat.search(query, k),
            Partition::Graph(graph) => graph.search(query, k),
        }
    }
}

/// Exact search over a row-major matrix: one matrix-vector product.
struct Flat {
    dim: usize,
    ids: Vec<u64>,
    vectors: Vec<f32>,
}

impl Flat {
    fn from_rows(dim: usize, rows: Vec<(u64, Vec<f32>)>) -> Self {
        let mut flat = Flat {
            dim,
            ids: Vec::with_capacity(rows.len()),
            vectors: Vec::with_capacity(rows.len() * dim),
        };
        for (id, vector) in rows {
            flat.ids.push(id);
            flat.vectors.extend_from_slice(&vector);
        }
        flat
    }

    fn rows(&self) -> Vec<(u64, Vec<f32>)> {
        self.ids
            .iter()
            .zip(self.vectors.chunks_exact(self.dim))
            .map(|(&id, v)| (id, v.to_vec()))
            .collect()
    }

    fn search(&self, query: &[f32], k: usize) -> Vec<Candidate> {
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

/// An HNSW graph plus the live vectors (for exact re-scoring and rebuilds).
struct Graph {
    dim: usize,
    ef_search: usize,
    hnsw: Hnsw<'static, f32, DistDot>,
    vectors: HashMap<u64, Vec<f32>>,
    dead: HashSet<u64>,
}

impl Graph {
    fn build(dim: usize, rows: Vec<(u64, Vec<f32>)>, params: HnswParams) -> Self {
        let hnsw = Hnsw::new(
            params.m,
            rows.len().max(1024),
            HNSW_MAX_LAYERS,
            params.ef_construction,
            DistDot,
        );
        let scaled: Vec<(Vec<f32>, usize)> = rows
            .iter()
            .map(|(id, v)| (scale(v), *id as usize))
            .collect();
        let refs: Vec<(&Vec<f32>, usize)> = scaled.iter().map(|(v, id)| (v, *id)).collect();
        hnsw.parallel_insert(&refs);
        Graph {
            dim,
            ef_search: params.ef_search,
            hnsw,
            vectors: rows.into_iter().collect(),
            dead: HashSet::new(),
        }
    }

    fn insert(&mut self, id: u64, vector: &[f32]) {
        self.hnsw.insert((&scale(vector), id as usize));
        self.vectors.insert(id, vector.to_vec());
    }

    fn dead_ratio(&self) -> f32 {
        let total = self.vectors.len() + self.dead.len();
        self.dead.len() as f32 / total.max(1) as f32
    }

    fn rows(&self) -> Vec<(u64, Vec<f32>)> {
        self.vectors
            .iter()
            .map(|(&id, v)| (id, v.clone()))
            .collect()
    }

    fn search(&self, query: &[f32], k: usize) -> Vec<Candidate> {
        let fetch = k + OVERFETCH + self.dead.len().min(OVERFETCH * 4);
        self.hnsw
            .search(&scale(query), fetch, self.ef_search.max(fetch))
            .into_iter()
            .filter_map(|neighbour| {
                let id = neighbour.d_id as u64;
                let vector = self.vectors.get(&id)?;
                Some(Candidate {
                    id,
                    similarity: dot(query, vector),
                })
            })
            .collect()
    }
}

fn scale(vector: &[f32]) -> Vec<f32> {
    vector.iter().map(|x| x * GRAPH_SCALE).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Scales `vector` to unit length in place; false for a zero or non-finite vector.
pub fn normalize(vector: &mut [f32]) -> bool {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !(norm.is_finite() && norm > 0.0) {
        return false;
    }
    vector.iter_mut().for_each(|x| *x /= norm);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut v: Vec<f32> = (0..dim).map(|_| rng.f32() - 0.5).collect();
        normalize(&mut v);
        v
    }

    fn scope(n: u8) -> Hash32 {
        Hash32([n; 32])
    }

    /// Test vectors are `unit(id, dim)`, so the source can regenerate them.
    struct Regenerate(usize);

    impl VectorSource for Regenerate {
        fn vector(&self, id: u64) -> Option<Vec<f32>> {
            Some(unit(id, self.0))
        }
    }

    fn index(hnsw_min_entries: usize) -> VectorIndex {
        VectorIndex::new(
            IndexSettings {
                hnsw_min_entries,
                ..IndexSettings::default()
            },
            Arc::new(Regenerate(0)),
        )
    }

    #[test]
    fn finds_the_same_vector_with_similarity_one() {
        for min in [1_000_000, 1] {
            let index = index(min);
            for id in 0..50 {
                index.insert(scope(1), id, &unit(id, 64));
            }
            let found = index.search(scope(1), &unit(7, 64), 3);
            assert_eq!(found[0].id, 7, "hnsw_min_entries={min}");
            assert!((found[0].similarity - 1.0).abs() < 1e-4);
            assert!(found[1].similarity < found[0].similarity);
        }
    }

    #[test]
    fn scopes_never_mix() {
        let index = index(1_000_000);
        index.insert(scope(1), 1, &unit(1, 16));
        assert!(index.search(scope(2), &unit(1, 16), 5).is_empty());
        assert_eq!(index.search(scope(1), &unit(1, 16), 5).len(), 1);
    }

    #[test]
    fn removed_ids_are_never_returned() {
        for min in [1_000_000, 8] {
            let index = index(min);
            for id in 0..40 {
                index.insert(scope(1), id, &unit(id, 32));
            }
            for id in 0..30 {
                index.remove(scope(1), id);
            }
            assert_eq!(index.len(), 10);
            let found = index.search(scope(1), &unit(3, 32), 20);
            assert!(found.iter().all(|c| c.id >= 30), "min={min}: {found:?}");
            assert_eq!(found.len(), 10);
        }
    }

    #[test]
    fn graph_partition_has_good_recall() {
        let index = index(64);
        for id in 0..600 {
            index.insert(scope(1), id, &unit(id, 48));
        }
        let hits = (0..600)
            .step_by(7)
            .filter(|&id| index.search(scope(1), &unit(id, 48), 1)[0].id == id)
            .count();
        assert!(hits >= 84, "recall {hits}/86");
    }

    #[test]
    fn bulk_load_matches_inserts() {
        for min in [1_000_000, 16] {
            let index = index(min);
            let rows: Vec<_> = (0..40).map(|id| (id, unit(id, 24))).collect();
            index.load(scope(1), rows);
            assert_eq!(index.len(), 40);
            assert_eq!(index.search(scope(1), &unit(9, 24), 1)[0].id, 9);
        }
    }

    #[test]
    fn other_dimensions_are_ignored() {
        let index = index(1_000_000);
        index.insert(scope(1), 1, &unit(1, 16));
        index.insert(scope(1), 2, &unit(1, 32));
        assert_eq!(index.len(), 1);
        assert!(index.search(scope(1), &unit(1, 32), 1).is_empty());
    }

    #[test]
    fn empty_partitions_are_dropped() {
        let index = index(1_000_000);
        index.insert(scope(1), 1, &unit(1, 16));
        index.remove(scope(1), 1);
        assert!(index.is_empty());
        assert!(index.partitions.read().is_empty());
    }
}
