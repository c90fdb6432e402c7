//! One large scope's HNSW graph.
//!
//! hnsw_rs keeps each point's vector (f32, for its SIMD dot product), so the graph keeps no
//! copy of its own: an earlier version kept every vector twice. Its distance is the dot
//! product of unit vectors, so `1 - distance` is the exact cosine similarity and candidates
//! need no second scoring. The int8 graph that was tried instead is described in
//! `benches/results/index_scale.md`: without unsafe SIMD dispatch its distance was 4x slower.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use hnsw_rs::prelude::{DistDot, Hnsw, Point};
use parking_lot::RwLock;

use super::{Candidate, HnswParams, VectorSource};

const MAX_LAYERS: usize = 16;
/// Candidates fetched beyond `k`, so dead ids can be skipped without a filter (filters
/// disable hnsw_rs's early exit and were 5x slower).
const OVERFETCH: usize = 10;
/// hnsw_rs asserts dot <= 1.000002; scaling stored unit vectors down by this much keeps
/// rounding from tripping it. Similarities are divided by its square again.
const GRAPH_SCALE: f32 = 1.0 - 1e-5;

pub type GraphHnsw = Hnsw<'static, f32, DistDot>;

/// Every method takes `&self` (the bookkeeping is behind its own short locks), so the index
/// worker adds points while searches go on.
pub struct Graph {
    pub dim: usize,
    params: HnswParams,
    hnsw: GraphHnsw,
    /// Ids whose points may be returned; the graph also holds removed (dead) ones, and points
    /// added but not admitted yet.
    live: RwLock<HashSet<u64>>,
    dead: AtomicUsize,
    /// Bumped by every insert and removal, so a dump knows whether it is stale.
    changes: AtomicU64,
    /// `changes` as of the last dump that covered this graph.
    dumped: AtomicU64,
}

impl Graph {
    pub fn build(dim: usize, rows: &[(u64, Vec<f32>)], params: HnswParams) -> Self {
        let hnsw = Hnsw::new(
            params.m,
            rows.len().max(1024),
            MAX_LAYERS,
            params.ef_construction,
            DistDot,
        );
        let refs: Vec<(&Vec<f32>, usize)> = rows.iter().map(|(id, v)| (v, *id as usize)).collect();
        hnsw.parallel_insert(&refs);
        Graph {
            dim,
            params,
            hnsw,
            live: RwLock::new(rows.iter().map(|(id, _)| *id).collect()),
            dead: AtomicUsize::new(0),
            changes: AtomicU64::new(1),
            dumped: AtomicU64::new(0),
        }
    }

    pub fn from_f32(dim: usize, rows: Vec<(u64, Vec<f32>)>, params: HnswParams) -> Self {
        let rows: Vec<(u64, Vec<f32>)> = rows.into_iter().map(|(id, v)| (id, scale(&v))).collect();
        Graph::build(dim, &rows, params)
    }

    /// A graph reloaded from a dump, whose live ids are `live`: points not in `live` are
    /// dead, and ids of `live` the graph lacks are inserted from `source`. None when the dump
    /// lacks more than half of `live` (a fresh build is then as cheap) or most of its points
    /// are dead.
    pub fn restored(
        dim: usize,
        hnsw: GraphHnsw,
        live: &HashSet<u64>,
        params: HnswParams,
        source: &dyn VectorSource,
    ) -> Option<Self> {
        let points = point_ids(&hnsw);
        let kept: HashSet<u64> = points.intersection(live).copied().collect();
        let dead = points.len() - kept.len();
        if (live.len() - kept.len()) * 2 > live.len() || dead * 2 > points.len() {
            return None;
        }
        let missing: Vec<(Vec<f32>, usize)> = live
            .iter()
            .filter(|id| !kept.contains(id))
            .filter_map(|&id| Some((scale(&source.vector(id)?), id as usize)))
            .collect();
        let refs: Vec<(&Vec<f32>, usize)> = missing.iter().map(|(v, id)| (v, *id)).collect();
        hnsw.parallel_insert(&refs);
        let mut live = kept;
        live.extend(missing.iter().map(|(_, id)| *id as u64));
        Some(Graph {
            dim,
            params,
            hnsw,
            live: RwLock::new(live),
            dead: AtomicUsize::new(dead),
            changes: AtomicU64::new(u64::from(dead > 0 || !missing.is_empty())),
            dumped: AtomicU64::new(0),
        })
    }

    pub fn hnsw(&self) -> &GraphHnsw {
        &self.hnsw
    }

    pub fn live(&self) -> usize {
        self.live.read().len()
    }

    pub fn is_live(&self, id: u64) -> bool {
        self.live.read().contains(&id)
    }

    /// Inserts points (in parallel, on the current rayon pool) without making them
    /// searchable: `admit` or `added_dead` settles each one.
    pub fn add(&self, rows: &[(u64, Vec<f32>)]) {
        let rows: Vec<(Vec<f32>, usize)> = rows
            .iter()
            .map(|(id, v)| (scale(v), *id as usize))
            .collect();
        let refs: Vec<(&Vec<f32>, usize)> = rows.iter().map(|(v, id)| (v, *id)).collect();
        self.hnsw.parallel_insert(&refs);
    }

    /// Makes added points searchable.
    pub fn admit(&self, ids: impl IntoIterator<Item = u64>) {
        let mut live = self.live.write();
        for id in ids {
            live.insert(id);
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts added points whose entries were removed before they were admitted.
    pub fn added_dead(&self, count: usize) {
        self.dead.fetch_add(count, Ordering::Relaxed);
        self.changes.fetch_add(count as u64, Ordering::Relaxed);
    }

    /// Whether `id` was live (and is now dead).
    pub fn remove(&self, id: u64) -> bool {
        let removed = self.live.write().remove(&id);
        if removed {
            self.dead.fetch_add(1, Ordering::Relaxed);
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
        removed
    }

    pub fn dead_ratio(&self) -> f32 {
        let dead = self.dead.load(Ordering::Relaxed);
        dead as f32 / (dead + self.live()).max(1) as f32
    }

    /// A new graph of the live points only (dropping the dead), from the graph's vectors.
    /// Inserts borrow the old graph's vectors, so the peak is two graphs, not two graphs plus
    /// a copy of every vector.
    pub fn compacted(&self) -> Graph {
        let ids = self.live.read().clone();
        let live: Vec<_> = points(&self.hnsw)
            .filter(|p| ids.contains(&(p.get_origin_id() as u64)))
            .collect();
        let hnsw = Hnsw::new(
            self.params.m,
            live.len().max(1024),
            MAX_LAYERS,
            self.params.ef_construction,
            DistDot,
        );
        let slices: Vec<(&[f32], usize)> = live
            .iter()
            .map(|p| (p.get_v(), p.get_origin_id()))
            .collect();
        hnsw.parallel_insert_slice(&slices);
        Graph {
            dim: self.dim,
            params: self.params,
            hnsw,
            live: RwLock::new(ids),
            dead: AtomicUsize::new(0),
            changes: AtomicU64::new(1),
            dumped: AtomicU64::new(0),
        }
    }

    /// Live ids, copied.
    pub fn live_ids(&self) -> Vec<u64> {
        self.live.read().iter().copied().collect()
    }

    /// Changes not yet covered by a dump.
    pub fn unsaved(&self) -> u64 {
        self.changes()
            .saturating_sub(self.dumped.load(Ordering::Relaxed))
    }

    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    pub fn mark_dumped(&self, changes: u64) {
        self.dumped.store(changes, Ordering::Relaxed);
    }

    /// The live points' vectors, unscaled (to turn a shrunken graph back into a flat scan).
    pub fn live_rows(&self) -> Vec<(u64, Vec<f32>)> {
        let live = self.live.read();
        points(&self.hnsw)
            .map(|p| (p.get_origin_id() as u64, p))
            .filter(|(id, _)| live.contains(id))
            .map(|(id, p)| (id, p.get_v().iter().map(|x| x / GRAPH_SCALE).collect()))
            .collect()
    }

    pub fn search(&self, query: &[f32], k: usize, ef_search: usize) -> Vec<Candidate> {
        let dead = self.dead.load(Ordering::Relaxed);
        let fetch = k + OVERFETCH + dead.min(OVERFETCH * 4);
        let found = self.hnsw.search(&scale(query), fetch, ef_search.max(fetch));
        let live = self.live.read();
        found
            .into_iter()
            .filter(|neighbour| live.contains(&(neighbour.d_id as u64)))
            .map(|neighbour| Candidate {
                id: neighbour.d_id as u64,
                similarity: (1.0 - neighbour.distance) / (GRAPH_SCALE * GRAPH_SCALE),
            })
            .collect()
    }
}

/// Every point of the graph (an empty graph has none; hnsw_rs's iterator would panic on it).
fn points(hnsw: &GraphHnsw) -> impl Iterator<Item = Arc<Point<'static, f32>>> + '_ {
    let any = hnsw.get_nb_point() > 0;
    any.then(|| hnsw.get_point_indexation().into_iter())
        .into_iter()
        .flatten()
}

fn point_ids(hnsw: &GraphHnsw) -> HashSet<u64> {
    points(hnsw).map(|p| p.get_origin_id() as u64).collect()
}

fn scale(vector: &[f32]) -> Vec<f32> {
    vector.iter().map(|x| x * GRAPH_SCALE).collect()
}
