//! One large scope's HNSW graph (`hnsw`, over int8 codes), with the ids it may return.
//!
//! The graph navigates on codes; the best candidates are then re-scored from the store's f32
//! vectors (`quantized::rescore`), so the similarity deja compares to its threshold is exact.
//! There is no delete: removed ids are remembered as dead, over-fetched past, and the owner
//! rebuilds the graph (`compacted`) once too many pile up.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use super::hnsw::Hnsw;
use super::quantized::{self, RESCORE_EXTRA};
use super::{Candidate, HnswParams, VectorSource};

/// Candidates fetched beyond those re-scored, so dead ids can be skipped without filtering
/// inside the search.
const OVERFETCH: usize = 10;

pub type GraphHnsw = Hnsw;

pub struct Graph {
    pub dim: usize,
    params: HnswParams,
    hnsw: Hnsw,
    /// Ids whose nodes may be returned; the graph also holds removed (dead) ones.
    live: HashSet<u64>,
    dead: usize,
    /// Bumped by every insert and removal, so a dump knows whether it is stale.
    changes: u64,
    /// `changes` as of the last dump that covered this graph.
    dumped: AtomicU64,
}

impl Graph {
    fn new(dim: usize, hnsw: Hnsw, live: HashSet<u64>, dead: usize, params: HnswParams) -> Self {
        Graph {
            dim,
            params,
            hnsw,
            live,
            dead,
            changes: 1,
            dumped: AtomicU64::new(0),
        }
    }

    pub fn from_f32(dim: usize, rows: Vec<(u64, Vec<f32>)>, params: HnswParams) -> Self {
        let mut hnsw = Hnsw::new(dim, params.m, params.ef_construction, rows.len());
        let mut live = HashSet::with_capacity(rows.len());
        for (id, vector) in rows {
            if live.insert(id) {
                hnsw.insert(id, &vector);
            }
        }
        Graph::new(dim, hnsw, live, 0, params)
    }

    /// A graph reloaded from a dump, whose live ids are `live`: nodes not in `live` are
    /// dead, and ids of `live` the graph lacks are inserted from `source`. None when the dump
    /// lacks more than half of `live` (a fresh build is then as cheap), most of its nodes are
    /// dead, or it was made for another dimension.
    pub fn restored(
        dim: usize,
        mut hnsw: Hnsw,
        live: &HashSet<u64>,
        params: HnswParams,
        source: &dyn VectorSource,
    ) -> Option<Self> {
        if hnsw.dim != dim {
            return None;
        }
        let points: HashSet<u64> = hnsw.ids().iter().copied().collect();
        let kept: HashSet<u64> = points.intersection(live).copied().collect();
        let dead = hnsw.len() - kept.len();
        if (live.len() - kept.len()) * 2 > live.len() || dead * 2 > hnsw.len() {
            return None;
        }
        let mut live_now = kept;
        let mut inserted = 0;
        for &id in live {
            if live_now.contains(&id) {
                continue;
            }
            if let Some(vector) = source.vector(id).filter(|v| v.len() == dim) {
                hnsw.insert(id, &vector);
                live_now.insert(id);
                inserted += 1;
            }
        }
        let mut graph = Graph::new(dim, hnsw, live_now, dead, params);
        graph.changes = u64::from(dead > 0 || inserted > 0);
        Some(graph)
    }

    pub fn hnsw(&self) -> &Hnsw {
        &self.hnsw
    }

    pub fn set_ef_search(&mut self, ef_search: usize) {
        self.params.ef_search = ef_search;
    }

    pub fn live(&self) -> usize {
        self.live.len()
    }

    pub fn insert(&mut self, id: u64, vector: &[f32]) {
        if self.live.insert(id) {
            self.hnsw.insert(id, vector);
            self.changes += 1;
        }
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

    /// A new graph of the live nodes only (dropping the dead), built from this graph's codes.
    pub fn compacted(&self) -> Graph {
        let mut hnsw = Hnsw::new(
            self.dim,
            self.params.m,
            self.params.ef_construction,
            self.live.len(),
        );
        for (node, id) in self.hnsw.ids().iter().enumerate() {
            if self.live.contains(id) {
                let (codes, inv_norm) = self.hnsw.code(node);
                hnsw.insert_code(*id, codes, inv_norm);
            }
        }
        Graph::new(self.dim, hnsw, self.live.clone(), 0, self.params)
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

    /// The live nodes as unit vectors (decoded from their codes, which a flat partition
    /// encodes back to the same codes), to turn a shrunken graph back into a flat scan.
    pub fn live_rows(&self) -> Vec<(u64, Vec<f32>)> {
        self.hnsw
            .ids()
            .iter()
            .enumerate()
            .filter(|(_, id)| self.live.contains(id))
            .map(|(node, &id)| {
                let (codes, inv_norm) = self.hnsw.code(node);
                (id, quantized::dequantize(codes, inv_norm))
            })
            .collect()
    }

    /// Up to `k` live candidates, most similar first, with exact similarities from `source`.
    pub fn search(&self, query: &[f32], k: usize, source: &dyn VectorSource) -> Vec<Candidate> {
        let fetch = k + RESCORE_EXTRA + OVERFETCH + self.dead.min(OVERFETCH * 4);
        let approximate = self
            .hnsw
            .search(query, fetch, self.params.ef_search.max(fetch))
            .into_iter()
            .map(|(node, similarity)| Candidate {
                id: self.hnsw.ids()[node as usize],
                similarity,
            })
            .filter(|candidate| self.live.contains(&candidate.id))
            .collect();
        quantized::rescore(approximate, query, k, source)
    }
}
