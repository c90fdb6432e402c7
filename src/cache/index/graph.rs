//! One large scope's HNSW graph (`hnsw`, over int8 codes), with the ids it may return.
//!
//! The graph navigates on codes; the partition then re-scores the best candidates from the
//! store's f16 vectors (`quantized::rescore`), so the similarity deja compares to its
//! threshold is exact to within 5e-4. There is no delete: removed ids are remembered as dead,
//! over-fetched past, and the partition rebuilds the graph (`compacted`) once too many pile up.
//!
//! Every method takes `&self`, so the index worker adds points while searches go on: an
//! insert is planned under the graph's read lock (the slow part: a search of the graph) and
//! written under its write lock in a few microseconds. Only the worker adds points (under
//! the partition's `graph_points` lock), so a plan is never outdated when it is written.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::{RwLock, RwLockReadGuard};

use super::flat::Flat;
use super::hnsw::Hnsw;
use super::quantized::{self, Coded, Query, RESCORE_EXTRA};
use super::{HnswParams, VectorSource};

/// Candidates fetched beyond those re-scored, so dead ids can be skipped without filtering
/// inside the search.
const OVERFETCH: usize = 10;

pub type GraphHnsw = Hnsw;

pub struct Graph {
    pub dim: usize,
    params: HnswParams,
    hnsw: RwLock<Hnsw>,
    /// Ids whose nodes may be returned; the graph also holds removed (dead) ones, and nodes
    /// added but not admitted yet.
    live: RwLock<HashSet<u64>>,
    dead: AtomicUsize,
    /// Bumped by every insert and removal, so a dump knows whether it is stale.
    changes: AtomicU64,
    /// `changes` as of the last dump that covered this graph.
    dumped: AtomicU64,
}

impl Graph {
    fn new(dim: usize, hnsw: Hnsw, live: HashSet<u64>, dead: usize, params: HnswParams) -> Self {
        Graph {
            dim,
            params,
            hnsw: RwLock::new(hnsw),
            live: RwLock::new(live),
            dead: AtomicUsize::new(dead),
            changes: AtomicU64::new(1),
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

    /// A graph of a flat part's rows, built from their codes (what the rows hold).
    pub fn from_flat(flat: &Flat, params: HnswParams) -> Self {
        let mut hnsw = Hnsw::new(flat.dim, params.m, params.ef_construction, flat.ids.len());
        let mut live = HashSet::with_capacity(flat.ids.len());
        for (id, codes, inv_norm) in flat.codes() {
            if live.insert(id) {
                hnsw.insert_code(id, codes, inv_norm);
            }
        }
        Graph::new(flat.dim, hnsw, live, 0, params)
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
        let graph = Graph::new(dim, hnsw, live_now, dead, params);
        graph
            .changes
            .store(u64::from(dead > 0 || inserted > 0), Ordering::Relaxed);
        Some(graph)
    }

    /// The graph itself, for a dump; inserts wait while it is held.
    pub fn hnsw(&self) -> RwLockReadGuard<'_, Hnsw> {
        self.hnsw.read()
    }

    pub fn live(&self) -> usize {
        self.live.read().len()
    }

    pub fn is_live(&self, id: u64) -> bool {
        self.live.read().contains(&id)
    }

    /// Inserts points without making them searchable: `admit` or `added_dead` settles each
    /// one. Each is planned while searches go on and written in a short exclusive step.
    pub fn add(&self, rows: &[(u64, Vec<f32>)]) {
        for (id, vector) in rows {
            let insertion = self.hnsw.read().plan(*id, vector);
            self.hnsw.write().apply(insertion);
        }
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

    /// A new graph of the live nodes only (dropping the dead), built from this graph's codes.
    pub fn compacted(&self) -> Graph {
        let ids = self.live.read().clone();
        let old = self.hnsw.read();
        let mut hnsw = Hnsw::new(
            self.dim,
            self.params.m,
            self.params.ef_construction,
            ids.len(),
        );
        for (node, id) in old.ids().iter().enumerate() {
            if ids.contains(id) {
                let (codes, inv_norm) = old.code(node);
                hnsw.insert_code(*id, codes, inv_norm);
            }
        }
        Graph::new(self.dim, hnsw, ids, 0, self.params)
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

    /// The live nodes as unit vectors (decoded from their codes, which a flat partition
    /// encodes back to the same codes), to turn a shrunken graph back into a flat scan.
    pub fn live_rows(&self) -> Vec<(u64, Vec<f32>)> {
        let live = self.live.read();
        let hnsw = self.hnsw.read();
        hnsw.ids()
            .iter()
            .enumerate()
            .filter(|(_, id)| live.contains(id))
            .map(|(node, &id)| {
                let (codes, inv_norm) = hnsw.code(node);
                (id, quantized::dequantize(codes, inv_norm))
            })
            .collect()
    }

    /// Live candidates by the similarity of their codes, enough of them for `k` to be
    /// re-scored exactly (`quantized::rescore`).
    pub fn approximate(&self, query: &Query, k: usize, ef_search: usize) -> Vec<Coded> {
        let dead = self.dead.load(Ordering::Relaxed);
        let fetch = k + RESCORE_EXTRA + OVERFETCH + dead.min(OVERFETCH * 4);
        let found: Vec<Coded> = {
            let hnsw = self.hnsw.read();
            hnsw.search_coded(query, fetch, ef_search.max(fetch))
                .into_iter()
                .map(|(node, similarity)| Coded {
                    id: hnsw.ids()[node as usize],
                    similarity,
                    slack: quantized::slack(self.dim, query.inv_norm, hnsw.code(node as usize).1),
                })
                .collect()
        };
        let live = self.live.read();
        found
            .into_iter()
            .filter(|candidate| live.contains(&candidate.id))
            .collect()
    }
}
