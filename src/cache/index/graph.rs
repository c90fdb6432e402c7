//! One large scope's HNSW graph.
//!
//! hnsw_rs keeps each point's vector (f32, for its SIMD dot product), so the graph keeps no
//! copy of its own: an earlier version kept every vector twice. Its distance is the dot
//! product of unit vectors, so `1 - distance` is the exact cosine similarity and candidates
//! need no second scoring. The int8 graph that was tried instead is described in
//! `benches/results/index_scale.md`: without unsafe SIMD dispatch its distance was 4x slower.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hnsw_rs::prelude::{DistDot, Hnsw, Point};

use super::{Candidate, HnswParams, VectorSource};

const MAX_LAYERS: usize = 16;
/// Candidates fetched beyond `k`, so dead ids can be skipped without a filter (filters
/// disable hnsw_rs's early exit and were 5x slower).
const OVERFETCH: usize = 10;
/// hnsw_rs asserts dot <= 1.000002; scaling stored unit vectors down by this much keeps
/// rounding from tripping it. Similarities are divided by its square again.
const GRAPH_SCALE: f32 = 1.0 - 1e-5;

pub type GraphHnsw = Hnsw<'static, f32, DistDot>;

pub struct Graph {
    pub dim: usize,
    params: HnswParams,
    hnsw: GraphHnsw,
    /// Ids whose points may be returned; the graph also holds removed (dead) ones.
    live: HashSet<u64>,
    dead: usize,
    /// Bumped by every insert and removal, so a dump knows whether it is stale.
    changes: u64,
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
            live: rows.iter().map(|(id, _)| *id).collect(),
            dead: 0,
            changes: 1,
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
            live,
            dead,
            changes: u64::from(dead > 0 || !missing.is_empty()),
            dumped: AtomicU64::new(0),
        })
    }

    pub fn hnsw(&self) -> &GraphHnsw {
        &self.hnsw
    }

    pub fn set_ef_search(&mut self, ef_search: usize) {
        self.params.ef_search = ef_search;
    }

    pub fn live(&self) -> usize {
        self.live.len()
    }

    pub fn insert(&mut self, id: u64, vector: &[f32]) {
        self.hnsw.insert((&scale(vector), id as usize));
        self.live.insert(id);
        self.changes += 1;
    }

    pub fn remove(&mut self, id: u64) {
        if self.live.remove(&id) {
            self.dead += 1;
            self.changes += 1;
        }
    }

    pub fn dead_ratio(&self) -> f32 {
        self.dead as f32 / (self.dead + self.live.len()).max(1) as f32
    }

    /// A new graph of the live points only (dropping the dead), from the graph's vectors.
    /// Inserts borrow the old graph's vectors, so the peak is two graphs, not two graphs plus
    /// a copy of every vector.
    pub fn compacted(&self) -> Graph {
        let live: Vec<_> = points(&self.hnsw)
            .filter(|p| self.live.contains(&(p.get_origin_id() as u64)))
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
            live: self.live.clone(),
            dead: 0,
            changes: 1,
            dumped: AtomicU64::new(0),
        }
    }

    /// Changes not yet covered by a dump.
    pub fn unsaved(&self) -> u64 {
        self.changes
            .saturating_sub(self.dumped.load(Ordering::Relaxed))
    }

    pub fn changes(&self) -> u64 {
        self.changes
    }

    pub fn mark_dumped(&self, changes: u64) {
        self.dumped.store(changes, Ordering::Relaxed);
    }

    /// The live points' vectors, unscaled (to turn a shrunken graph back into a flat scan).
    pub fn live_rows(&self) -> Vec<(u64, Vec<f32>)> {
        points(&self.hnsw)
            .map(|p| (p.get_origin_id() as u64, p))
            .filter(|(id, _)| self.live.contains(id))
            .map(|(id, p)| (id, p.get_v().iter().map(|x| x / GRAPH_SCALE).collect()))
            .collect()
    }

    pub fn search(&self, query: &[f32], k: usize) -> Vec<Candidate> {
        let fetch = k + OVERFETCH + self.dead.min(OVERFETCH * 4);
        self.hnsw
            .search(&scale(query), fetch, self.params.ef_search.max(fetch))
            .into_iter()
            .filter(|neighbour| self.live.contains(&(neighbour.d_id as u64)))
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
