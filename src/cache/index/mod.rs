//! The in-process vector index, partitioned by scope.
//!
//! A semantic hit is only allowed between prompts of the same scope, so each scope gets its
//! own partition and a search never even sees another tenant's or conversation's vectors.
//! Vectors are kept as int8 codes (`quantized`, 4x smaller than f32); candidates found by
//! their codes are re-scored from the store's (f16) vectors. Small partitions (most
//! scopes: one conversation prefix) are scanned (`flat`); a partition that grows past
//! `hnsw_min_entries` gets an HNSW graph (`graph` over our own compact `hnsw`). HNSW has no
//! delete: removed ids are remembered as dead, over-fetched past, and the graph is rebuilt
//! once the dead pass `compact_dead_ratio`. Graphs are dumped to disk (`dump`) so a restart
//! reloads them.
//!
//! Nothing a request calls waits for a graph: inserts, builds and rebuilds run on a
//! background worker (`worker`), and a partition searches the vectors not yet in its graph
//! exactly meanwhile (`partition`). Methods still take locks and do CPU work (a search):
//! call them off the async workers.

mod dump;
mod flat;
mod graph;
mod hnsw;
mod hnsw_file;
mod partition;
mod quantized;
mod record;
mod signs;
mod worker;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::RwLock;

pub use dump::Dumps;
use flat::Flat;
use graph::Graph;
use partition::{Effect, Limits, Partition};
use worker::{Context, StoreVectors, Worker};

use super::key::Hash32;

#[derive(Debug, Clone, Copy)]
pub struct IndexSettings {
    pub hnsw_min_entries: usize,
    pub compact_dead_ratio: f32,
    /// Vectors of a graph scope that may wait for the worker, searched exactly meanwhile;
    /// older ones past this wait in the store only (deferred: not searchable until indexed).
    /// Every search of the scope scans them: 512 × 1536 dimensions is ~0.1 ms, and a worker
    /// that keeps up holds fewer than one batch (128).
    pub max_pending: usize,
    pub params: HnswParams,
}

impl Default for IndexSettings {
    fn default() -> Self {
        Self {
            hnsw_min_entries: 4096,
            compact_dead_ratio: 0.25,
            max_pending: 512,
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
    /// The configuration's defaults (`crate::config::cache` says why).
    fn default() -> Self {
        Self {
            m: crate::config::DEFAULT_HNSW_M,
            ef_construction: crate::config::DEFAULT_HNSW_EF_CONSTRUCTION,
            ef_search: crate::config::DEFAULT_HNSW_EF_SEARCH,
        }
    }
}

/// Where the stored vectors live (the store): a restored graph inserts the ones its dump
/// lacks from here.
pub trait VectorSource: Send + Sync {
    fn vector(&self, id: u64) -> Option<Vec<f32>>;
}

/// A search result: the entry id and its exact cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub id: u64,
    pub similarity: f32,
}

/// When a graph is worth dumping: how many changes since its last dump.
#[derive(Debug, Clone, Copy)]
pub struct DumpPolicy {
    pub min_changes: u64,
}

/// How far the background work is behind its inserts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Vectors waiting for their scope's graph, searched exactly meanwhile.
    pub pending: usize,
    /// Vectors waiting in the store only, not searchable until the worker indexes them.
    pub deferred: usize,
    /// Partitions queued for the worker.
    pub queued: usize,
}

pub struct VectorIndex {
    settings: IndexSettings,
    /// `settings.params.ef_search`, changeable while running (a reload).
    ef_search: AtomicUsize,
    source: Arc<dyn VectorSource>,
    partitions: RwLock<HashMap<Hash32, Arc<Partition>>>,
    /// Vectors that had to wait in the store only, since start-up.
    deferred_total: AtomicU64,
    context: Context,
    worker: Worker,
}

impl VectorIndex {
    pub fn new(settings: IndexSettings, source: Arc<dyn VectorSource>) -> Self {
        let context = || Context {
            limits: Limits {
                hnsw_min_entries: settings.hnsw_min_entries,
                compact_dead_ratio: settings.compact_dead_ratio,
                max_pending: settings.max_pending,
            },
            params: settings.params,
            source: StoreVectors(Arc::downgrade(&source)),
        };
        Self {
            settings,
            ef_search: AtomicUsize::new(settings.params.ef_search),
            source: source.clone(),
            partitions: RwLock::new(HashMap::new()),
            deferred_total: AtomicU64::new(0),
            worker: Worker::start(context()),
            context: context(),
        }
    }

    /// The parameters a new graph gets.
    fn params(&self) -> HnswParams {
        HnswParams {
            ef_search: self.ef_search.load(Ordering::Relaxed),
            ..self.settings.params
        }
    }

    /// Adds a unit vector for `id` in `scope`. Returns at once: a scope with a graph (or one
    /// that needs one) gets it in the background, and searches find the vector meanwhile.
    pub fn insert(&self, scope: Hash32, id: u64, vector: &[f32]) {
        let before = self.deferred_total.load(Ordering::Relaxed);
        let (partition, effect) = loop {
            let partition = self
                .partitions
                .write()
                .entry(scope)
                .or_insert_with(|| Arc::new(Partition::new(vector.len())))
                .clone();
            if partition.dim != vector.len() {
                // A vector from another model; the cache layer prevents this, never mix them.
                return;
            }
            let effect = partition.insert(id, vector, &self.context.limits, &self.deferred_total);
            // A removal that emptied the partition may have dropped it from the map between
            // the lookup above and the insert (`remove`); then insert again, into a new one.
            let current = self.partitions.read().get(&scope).cloned();
            if current.is_some_and(|current| Arc::ptr_eq(&current, &partition)) {
                break (partition, effect);
            }
        };
        if before == 0 && self.deferred_total.load(Ordering::Relaxed) > 0 {
            tracing::warn!(
                max_pending = self.settings.max_pending,
                "index worker behind: older new entries wait in the store, searchable once \
                 indexed (deja_index_deferred_total counts them)"
            );
        }
        if effect == Effect::Work {
            self.worker.schedule(&partition, &self.context);
        }
    }

    /// Replaces a whole partition at once (start-up): one bulk graph build, not many inserts.
    pub fn load(&self, scope: Hash32, rows: Vec<(u64, Vec<f32>)>) {
        let Some(dim) = rows.first().map(|(_, v)| v.len()) else {
            return;
        };
        let rows: Vec<_> = rows.into_iter().filter(|(_, v)| v.len() == dim).collect();
        let partition = if rows.len() >= self.settings.hnsw_min_entries {
            Partition::from_graph(Graph::from_f32(dim, rows, self.params()))
        } else {
            Partition::from_flat(Flat::from_rows(dim, rows))
        };
        self.partitions.write().insert(scope, Arc::new(partition));
    }

    /// Installs `scope`'s graph from its dump, reconciled with `live` (the store's ids for
    /// the scope): dumped ids not in `live` are dead, ids the dump lacks are inserted. False
    /// when there is no usable dump, or it covers less than half of `live` (a fresh build is
    /// then as cheap and better balanced); the caller then uses `load`.
    pub fn restore(&self, scope: Hash32, live: &HashSet<u64>, dumps: &Dumps) -> bool {
        let Some(dim) = live
            .iter()
            .next()
            .and_then(|&id| self.source.vector(id))
            .map(|v| v.len())
        else {
            return false;
        };
        let started = std::time::Instant::now();
        let Some(hnsw) = dumps.load(&scope, dim) else {
            return false;
        };
        let loaded_ms = started.elapsed().as_millis() as u64;
        let Some(graph) = Graph::restored(dim, hnsw, live, self.params(), &*self.source) else {
            return false;
        };
        tracing::info!(
            scope = %scope.short(),
            entries = live.len(),
            load_ms = loaded_ms,
            reconcile_ms = started.elapsed().as_millis() as u64 - loaded_ms,
            "index graph restored from its dump"
        );
        let graph = if graph.dead_ratio() > self.settings.compact_dead_ratio {
            graph.compacted()
        } else {
            graph
        };
        self.partitions
            .write()
            .insert(scope, Arc::new(Partition::from_graph(graph)));
        true
    }

    /// Dumps every graph with at least `policy.min_changes` changes since its last dump, and
    /// forgets dumps of scopes that have no graph any more; returns how many were written.
    /// The worker's inserts into a scope wait while its graph is written; searches and the
    /// inserts of requests do not.
    pub fn dump(&self, dumps: &Dumps, policy: DumpPolicy) -> usize {
        let partitions: Vec<_> = self
            .partitions
            .read()
            .iter()
            .map(|(scope, p)| (*scope, p.clone()))
            .collect();
        let mut written = 0;
        for (scope, partition) in partitions {
            let Some(graph) = partition.graph() else {
                continue;
            };
            if graph.unsaved() == 0 || graph.unsaved() < policy.min_changes {
                continue;
            }
            let saved = partition.with_graph_points(&graph, |graph| {
                let changes = graph.changes();
                dumps
                    .save(&scope, graph.dim, &graph.hnsw())
                    .map(|()| changes)
            });
            match saved {
                Ok(changes) => {
                    graph.mark_dumped(changes);
                    written += 1;
                }
                Err(err) => {
                    tracing::warn!(scope = %scope.short(), error = %err, "index dump failed")
                }
            }
        }
        written
    }

    /// Forgets `id`; its vector is never returned again.
    pub fn remove(&self, scope: Hash32, id: u64) {
        let Some(partition) = self.partitions.read().get(&scope).cloned() else {
            return;
        };
        match partition.remove(id, &self.context.limits) {
            Effect::None => {}
            Effect::Work => self.worker.schedule(&partition, &self.context),
            Effect::Empty => {
                let mut partitions = self.partitions.write();
                // Unless an insert came in meanwhile.
                if partitions
                    .get(&scope)
                    .is_some_and(|p| Arc::ptr_eq(p, &partition) && p.live() == 0)
                {
                    partitions.remove(&scope);
                }
            }
        }
    }

    /// Up to `k` live candidates in `scope`, most similar first.
    pub fn search(&self, scope: Hash32, query: &[f32], k: usize) -> Vec<Candidate> {
        self.search_above(scope, query, k, f32::NEG_INFINITY)
    }

    /// As `search`, for a caller that has no use for similarities below `floor`: only the
    /// best candidate and those whose codes say they may reach `floor` are re-scored, so most
    /// misses read one stored vector instead of several. The others are left out.
    pub fn search_above(
        &self,
        scope: Hash32,
        query: &[f32],
        k: usize,
        floor: f32,
    ) -> Vec<Candidate> {
        let Some(partition) = self.partitions.read().get(&scope).cloned() else {
            return Vec::new();
        };
        if partition.dim != query.len() {
            return Vec::new();
        }
        let ef_search = self.ef_search.load(Ordering::Relaxed);
        partition.search(query, k, floor, ef_search, &*self.source)
    }

    /// Sets the search breadth of every graph, existing and future.
    pub fn set_ef_search(&self, ef_search: usize) {
        self.ef_search.store(ef_search, Ordering::Relaxed);
    }

    /// Live vectors across all partitions (searchable or waiting to be).
    pub fn len(&self) -> usize {
        let partitions: Vec<_> = self.partitions.read().values().cloned().collect();
        partitions.iter().map(|p| p.live()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&self) {
        self.partitions.write().clear();
    }

    /// How far the background work is behind.
    pub fn backlog(&self) -> Backlog {
        let partitions: Vec<_> = self.partitions.read().values().cloned().collect();
        let mut backlog = Backlog {
            queued: self.worker.queued(),
            ..Backlog::default()
        };
        for partition in partitions {
            let (pending, deferred) = partition.waiting();
            backlog.pending += pending;
            backlog.deferred += deferred;
        }
        backlog
    }

    /// Vectors that had to wait in the store only (past `max_pending`), since start-up.
    pub fn deferred_total(&self) -> u64 {
        self.deferred_total.load(Ordering::Relaxed)
    }

    /// Waits, at most `timeout`, until the background work is done: every vector in its
    /// graph, every build swapped in; whether it got there. For tests, benches and shutdown:
    /// requests never wait for this.
    pub fn settle(&self, timeout: Duration) -> bool {
        self.worker.settle(timeout)
    }
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
mod background_tests;
#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Long enough for any background step of these small tests.
    pub(super) const SETTLE: Duration = Duration::from_secs(60);

    pub(super) fn unit(seed: u64, dim: usize) -> Vec<f32> {
        random_unit(&mut fastrand::Rng::with_seed(seed), dim)
    }

    /// A random unit vector.
    pub(crate) fn random_unit(rng: &mut fastrand::Rng, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim).map(|_| rng.f32() - 0.5).collect();
        normalize(&mut v);
        v
    }

    /// `source` plus noise, about cosine 0.95 to it: a rewording.
    pub(crate) fn reworded(rng: &mut fastrand::Rng, source: &[f32]) -> Vec<f32> {
        let noise = 0.6 / (source.len() as f32).sqrt();
        let mut v: Vec<f32> = source
            .iter()
            .map(|x| x + (rng.f32() - 0.5) * noise)
            .collect();
        normalize(&mut v);
        v
    }

    /// Vectors kept in memory, by id (the index of the row).
    pub(super) struct Rows(pub Vec<Vec<f32>>);

    impl VectorSource for Rows {
        fn vector(&self, id: u64) -> Option<Vec<f32>> {
            self.0.get(id as usize).cloned()
        }
    }

    pub(super) fn scope(n: u8) -> Hash32 {
        Hash32([n; 32])
    }

    /// Test vectors are `unit(id, dim)`, so the source can regenerate them.
    pub(super) struct Regenerate(pub usize);

    impl VectorSource for Regenerate {
        fn vector(&self, id: u64) -> Option<Vec<f32>> {
            Some(unit(id, self.0))
        }
    }

    pub(super) fn index(hnsw_min_entries: usize, dim: usize) -> VectorIndex {
        VectorIndex::new(
            IndexSettings {
                hnsw_min_entries,
                ..IndexSettings::default()
            },
            Arc::new(Regenerate(dim)),
        )
    }

    #[test]
    fn finds_the_same_vector_with_similarity_one() {
        for min in [1_000_000, 1] {
            let index = index(min, 64);
            for id in 0..50 {
                index.insert(scope(1), id, &unit(id, 64));
            }
            assert!(index.settle(SETTLE));
            let found = index.search(scope(1), &unit(7, 64), 3);
            assert_eq!(found[0].id, 7, "hnsw_min_entries={min}");
            assert!((found[0].similarity - 1.0).abs() < 1e-4);
            assert!(found[1].similarity < found[0].similarity);
        }
    }

    #[test]
    fn scopes_never_mix() {
        let index = index(1_000_000, 16);
        index.insert(scope(1), 1, &unit(1, 16));
        assert!(index.search(scope(2), &unit(1, 16), 5).is_empty());
        assert_eq!(index.search(scope(1), &unit(1, 16), 5).len(), 1);
    }

    #[test]
    fn removed_ids_are_never_returned() {
        for min in [1_000_000, 8] {
            let index = index(min, 32);
            for id in 0..40 {
                index.insert(scope(1), id, &unit(id, 32));
            }
            assert!(index.settle(SETTLE));
            for id in 0..30 {
                index.remove(scope(1), id);
            }
            // Before and after the rebuild the removals call for.
            for settled in [false, true] {
                if settled {
                    assert!(index.settle(SETTLE));
                }
                assert_eq!(index.len(), 10);
                let found = index.search(scope(1), &unit(3, 32), 20);
                assert!(found.iter().all(|c| c.id >= 30), "min={min}: {found:?}");
                assert_eq!(found.len(), 10);
            }
        }
    }

    #[test]
    fn graph_partition_has_good_recall() {
        let index = index(64, 48);
        for id in 0..600 {
            index.insert(scope(1), id, &unit(id, 48));
        }
        assert!(index.settle(SETTLE));
        let partition = index.partitions.read().get(&scope(1)).cloned().unwrap();
        assert_eq!(partition.graph().map(|g| g.live()), Some(600));
        let hits = (0..600)
            .step_by(7)
            .filter(|&id| index.search(scope(1), &unit(id, 48), 1)[0].id == id)
            .count();
        assert!(hits >= 84, "recall {hits}/86");
    }

    #[test]
    fn bulk_load_matches_inserts() {
        for min in [1_000_000, 16] {
            let index = index(min, 24);
            let rows: Vec<_> = (0..40).map(|id| (id, unit(id, 24))).collect();
            index.load(scope(1), rows);
            assert_eq!(index.len(), 40);
            assert_eq!(index.search(scope(1), &unit(9, 24), 1)[0].id, 9);
        }
    }

    #[test]
    fn other_dimensions_are_ignored() {
        let index = index(1_000_000, 16);
        index.insert(scope(1), 1, &unit(1, 16));
        index.insert(scope(1), 2, &unit(1, 32));
        assert_eq!(index.len(), 1);
        assert!(index.search(scope(1), &unit(1, 32), 1).is_empty());
    }

    #[test]
    fn empty_partitions_are_dropped() {
        let index = index(1_000_000, 16);
        index.insert(scope(1), 1, &unit(1, 16));
        index.remove(scope(1), 1);
        assert!(index.is_empty());
        assert!(index.partitions.read().is_empty());
    }

    /// A store that replaces a scope's only entry removes the old vector while another
    /// thread may be adding the new one: the removal empties the partition and drops it, and
    /// the insert must not land in the dropped partition (lost from the index while its
    /// entry stays stored).
    #[test]
    fn an_insert_racing_the_removal_that_empties_its_scope_is_kept() {
        let index = index(1_000_000, 16);
        index.insert(scope(1), 0, &unit(0, 16));
        for id in 1..20_000u64 {
            let barrier = std::sync::Barrier::new(2);
            std::thread::scope(|threads| {
                threads.spawn(|| {
                    barrier.wait();
                    index.remove(scope(1), id - 1);
                });
                barrier.wait();
                index.insert(scope(1), id, &unit(id, 16));
            });
            assert_eq!(index.len(), 1, "round {id}");
            assert_eq!(index.search(scope(1), &unit(id, 16), 1)[0].id, id);
        }
    }
}
