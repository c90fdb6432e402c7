//! One scope's vectors: an exact (flat) part and, once the scope is large, an HNSW graph.
//!
//! The response path (insert, remove, search) only touches the flat part and the graph's live
//! set, under locks held for microseconds. Everything slow (graph inserts, a first build,
//! compaction) is a `Job` the index worker runs from a snapshot, without the lock, and then
//! applies in one short step: a search never waits for a graph to be built or grown.
//!
//! With a graph (or while the first one is built), new vectors wait in the flat part, searched
//! exactly, until the worker has put them into the graph (read-your-writes). At most
//! `max_pending` wait there; past that the oldest waiting ones are *deferred*: only their ids
//! are kept, and the worker reads their vectors back from the store (the `VectorSource`) when
//! it gets to them. A deferred entry is stored and found by exact lookups, but is not
//! searchable by similarity until then.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use super::flat::Flat;
use super::graph::Graph;
use super::quantized::{self, Query};
use super::{Candidate, HnswParams, VectorSource};

/// Graph inserts per worker step: a step is then a fraction of a second, so the worker turns
/// to other scopes often and applies its results in small, quick steps.
const DRAIN_BATCH: usize = 128;

/// What a partition needs from its index.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub hnsw_min_entries: usize,
    pub compact_dead_ratio: f32,
    pub max_pending: usize,
}

pub(super) struct Partition {
    pub dim: usize,
    state: RwLock<State>,
    /// Held while points are added to the graph and while it is dumped, so a dump never
    /// holds half of a batch.
    graph_points: Mutex<()>,
    /// In the worker's queue already.
    pub queued: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Searched exactly. Without a graph: every live vector of the scope. With a graph (or
    /// during a first build): those waiting for it too.
    flat: Option<Flat>,
    graph: Option<Arc<Graph>>,
    /// Ids in `flat` that wait for a graph, oldest (smallest id) first.
    pending: BTreeSet<u64>,
    /// Ids waiting for a graph whose vectors are only in the store (past `max_pending`).
    deferred: BTreeSet<u64>,
    /// A first graph is being built from a snapshot of `flat`.
    building: bool,
    /// A background step failed (a panic): no more graph work, the scope is served
    /// from what it has.
    broken: bool,
}

/// What an insert or a removal asks of the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Effect {
    None,
    /// The partition has work for the worker.
    Work,
    /// The partition is empty and can be dropped.
    Empty,
}

/// One step of background work on a partition.
enum Job {
    /// The flat part outgrew exact search: build the first graph.
    Build,
    /// Too many dead points: rebuild from the live ones (or go back to flat when few are left).
    Compact,
    /// Put waiting vectors into the graph.
    Drain,
    /// Deferred vectors of a scope without a graph go back into its flat part.
    Undefer,
}

impl State {
    fn flat(&mut self, dim: usize) -> &mut Flat {
        self.flat.get_or_insert_with(|| Flat::new(dim))
    }

    fn flat_len(&self) -> usize {
        self.flat.as_ref().map_or(0, |f| f.ids.len())
    }

    fn live(&self) -> usize {
        self.flat_len() + self.graph.as_ref().map_or(0, |g| g.live()) + self.deferred.len()
    }

    fn next_job(&self, limits: &Limits) -> Option<Job> {
        if self.building || self.broken {
            return None;
        }
        match &self.graph {
            None if self.flat_len() >= limits.hnsw_min_entries => Some(Job::Build),
            None if !self.deferred.is_empty() => Some(Job::Undefer),
            None => None,
            Some(graph) if graph.dead_ratio() > limits.compact_dead_ratio => Some(Job::Compact),
            Some(_) if !self.pending.is_empty() || !self.deferred.is_empty() => Some(Job::Drain),
            Some(_) => None,
        }
    }
}

impl Partition {
    pub fn new(dim: usize) -> Partition {
        Partition {
            dim,
            state: RwLock::new(State::default()),
            graph_points: Mutex::new(()),
            queued: AtomicBool::new(false),
        }
    }

    /// A partition searched exactly.
    pub fn from_flat(flat: Flat) -> Partition {
        let partition = Partition::new(flat.dim);
        partition.state.write().flat = Some(flat);
        partition
    }

    pub fn from_graph(graph: Graph) -> Partition {
        let partition = Partition::new(graph.dim);
        partition.state.write().graph = Some(Arc::new(graph));
        partition
    }

    /// Live vectors, searchable or waiting.
    pub fn live(&self) -> usize {
        self.state.read().live()
    }

    /// Vectors waiting for the graph (searched exactly meanwhile), and deferred ones.
    pub fn waiting(&self) -> (usize, usize) {
        let state = self.state.read();
        (state.pending.len(), state.deferred.len())
    }

    pub fn graph(&self) -> Option<Arc<Graph>> {
        self.state.read().graph.clone()
    }

    /// Adds a vector; counts in `deferred_total` a waiting one that had to be deferred.
    pub fn insert(&self, id: u64, vector: &[f32], limits: &Limits, deferred: &AtomicU64) -> Effect {
        let mut state = self.state.write();
        if state.graph.is_none() && !state.building {
            let flat = state.flat(self.dim);
            flat.insert(id, vector);
            return if flat.ids.len() >= limits.hnsw_min_entries {
                Effect::Work
            } else {
                Effect::None
            };
        }
        if state.pending.len() >= limits.max_pending.max(1)
            && let Some(oldest) = state.pending.pop_first()
        {
            if let Some(flat) = &mut state.flat {
                flat.remove(oldest);
            }
            state.deferred.insert(oldest);
            deferred.fetch_add(1, Ordering::Relaxed);
        }
        state.flat(self.dim).insert(id, vector);
        state.pending.insert(id);
        Effect::Work
    }

    /// Forgets `id` wherever it is; its vector is never returned again.
    pub fn remove(&self, id: u64, limits: &Limits) -> Effect {
        let mut state = self.state.write();
        let waiting = state.pending.remove(&id);
        if !state.deferred.remove(&id) {
            let in_flat = waiting || state.graph.is_none();
            if let Some(flat) = &mut state.flat
                && in_flat
            {
                flat.remove(id);
            }
            if !waiting && let Some(graph) = &state.graph {
                graph.remove(id);
            }
        }
        if state.live() == 0 && !state.building {
            return Effect::Empty;
        }
        match state.next_job(limits) {
            Some(Job::Compact) => Effect::Work,
            _ => Effect::None,
        }
    }

    /// Up to `k` live candidates, best first; the graph's and the waiting vectors' together,
    /// found by their codes and re-scored exactly from `source` (outside the locks): the best
    /// one and any that may reach `floor` (`quantized::rescore`).
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        floor: f32,
        ef_search: usize,
        source: &dyn VectorSource,
    ) -> Vec<Candidate> {
        let coded = Query::new(query);
        let (graph, mut found) = {
            let state = self.state.read();
            let found = state
                .flat
                .as_ref()
                .map(|flat| flat.approximate(&coded, k))
                .unwrap_or_default();
            (state.graph.clone(), found)
        };
        if let Some(graph) = graph {
            found.extend(graph.approximate(&coded, k, ef_search));
        }
        // A vector that moved into the graph since the flat part was read is found twice;
        // `rescore` keeps one.
        quantized::rescore(found, query, k, floor, source)
    }

    /// Runs one step of background work; true when more is left (the caller queues the
    /// partition again).
    pub fn work(&self, limits: &Limits, params: HnswParams, source: &dyn VectorSource) -> bool {
        let Some(job) = self.state.read().next_job(limits) else {
            return false;
        };
        match job {
            Job::Build => self.build(params),
            Job::Compact => self.compact(limits),
            Job::Drain => self.drain(source),
            Job::Undefer => self.undefer(source),
        }
        self.state.read().next_job(limits).is_some()
    }

    /// Builds the first graph from a snapshot of the flat part; searches and inserts go on
    /// against the flat part meanwhile.
    fn build(&self, params: HnswParams) {
        let rows = self.start_build();
        let snapshot: HashSet<u64> = rows.ids.iter().copied().collect();
        let graph = Graph::from_flat(&rows, params);
        self.finish_build(graph, &snapshot);
    }

    /// Marks the build and copies the flat part it starts from: its codes as they are, a
    /// memcpy (it used to decode every row to f32 here). Both under one write lock: a vector
    /// stored between the two would be in the snapshot and also waiting (`pending`) for a
    /// graph that already has it, and the worker would never see its queue empty.
    pub(super) fn start_build(&self) -> Flat {
        let mut state = self.state.write();
        state.building = true;
        state.flat.clone().unwrap_or_else(|| Flat::new(self.dim))
    }

    /// Swaps the new graph in: snapshot entries removed during the build are dead in it,
    /// the rest leave the flat part, and what was stored meanwhile keeps waiting there.
    pub(super) fn finish_build(&self, graph: Graph, snapshot: &HashSet<u64>) {
        let mut state = self.state.write();
        state.building = false;
        let flat = state.flat(self.dim);
        let still: HashSet<u64> = flat.ids.iter().copied().collect();
        for id in snapshot.difference(&still) {
            graph.remove(*id);
        }
        flat.retain(|id| !snapshot.contains(&id));
        state.graph = Some(Arc::new(graph));
    }

    /// Replaces a graph heavy with dead points by one of its live points (or by a flat part
    /// when few are left).
    fn compact(&self, limits: &Limits) {
        let Some(old) = self.graph() else {
            return;
        };
        if old.live() < limits.hnsw_min_entries {
            self.shrink(&old);
            return;
        }
        let new = old.compacted();
        self.finish_compaction(&old, new);
    }

    /// Swaps a compacted graph in; entries removed from the old one meanwhile (the old one
    /// took every removal until now) are dead in the new one too.
    pub(super) fn finish_compaction(&self, old: &Arc<Graph>, new: Graph) {
        let mut state = self.state.write();
        if !state.graph.as_ref().is_some_and(|g| Arc::ptr_eq(g, old)) {
            return;
        }
        for id in new.live_ids() {
            if !old.is_live(id) {
                new.remove(id);
            }
        }
        state.graph = Some(Arc::new(new));
    }

    /// Back to exact search: the graph's live vectors join the flat part.
    fn shrink(&self, old: &Arc<Graph>) {
        let rows = old.live_rows();
        let mut state = self.state.write();
        if !state.graph.as_ref().is_some_and(|g| Arc::ptr_eq(g, old)) {
            return;
        }
        let flat = state.flat(self.dim);
        for (id, vector) in rows {
            if old.is_live(id) {
                flat.insert(id, &vector);
            }
        }
        state.pending.clear();
        state.graph = None;
    }

    /// Moves up to `DRAIN_BATCH` waiting vectors into the graph: deferred ones first (they are
    /// not searchable at all until then), then those searched exactly meanwhile.
    fn drain(&self, source: &dyn VectorSource) {
        let Some((graph, rows, unreadable)) = self.take_batch(source) else {
            return;
        };
        {
            let _points = self.graph_points.lock();
            graph.add(&rows);
        }
        self.finish_drain(&graph, &rows, &unreadable);
    }

    /// The graph and the next batch of waiting vectors (deferred ones read from `source`),
    /// with the deferred ids `source` no longer has.
    #[allow(clippy::type_complexity)]
    pub(super) fn take_batch(
        &self,
        source: &dyn VectorSource,
    ) -> Option<(Arc<Graph>, Vec<(u64, Vec<f32>)>, Vec<u64>)> {
        let (graph, mut rows, deferred) = {
            let state = self.state.read();
            let graph = state.graph.clone()?;
            let deferred: Vec<u64> = state.deferred.iter().take(DRAIN_BATCH).copied().collect();
            let rows: Vec<(u64, Vec<f32>)> = state
                .pending
                .iter()
                .take(DRAIN_BATCH - deferred.len())
                .filter_map(|&id| Some((id, state.flat.as_ref()?.get(id)?)))
                .collect();
            (graph, rows, deferred)
        };
        let mut unreadable = Vec::new();
        for id in deferred {
            match source.vector(id).filter(|v| v.len() == self.dim) {
                Some(vector) => rows.push((id, vector)),
                None => unreadable.push(id),
            }
        }
        Some((graph, rows, unreadable))
    }

    /// Makes a batch added to `graph` searchable there (and no longer in the flat part);
    /// entries removed while it was added stay dead.
    pub(super) fn finish_drain(
        &self,
        graph: &Arc<Graph>,
        rows: &[(u64, Vec<f32>)],
        unreadable: &[u64],
    ) {
        let mut state = self.state.write();
        if !state.graph.as_ref().is_some_and(|g| Arc::ptr_eq(g, graph)) {
            return; // replaced meanwhile (cannot happen while one worker runs the jobs)
        }
        // Gone from the store (removed, or lost with a reopened store): nothing to index.
        for id in unreadable {
            state.deferred.remove(id);
        }
        let mut admitted = Vec::with_capacity(rows.len());
        let mut dead = 0;
        for (id, _) in rows {
            if state.pending.remove(id) {
                if let Some(flat) = &mut state.flat {
                    flat.remove(*id);
                }
                admitted.push(*id);
            } else if state.deferred.remove(id) {
                admitted.push(*id);
            } else {
                dead += 1; // removed while it was being added
            }
        }
        graph.admit(admitted);
        graph.added_dead(dead);
    }

    /// Reads deferred vectors of a scope that has no graph (any more) back into its flat part.
    fn undefer(&self, source: &dyn VectorSource) {
        let ids: Vec<u64> = self
            .state
            .read()
            .deferred
            .iter()
            .take(DRAIN_BATCH)
            .copied()
            .collect();
        let rows: Vec<(u64, Option<Vec<f32>>)> = ids
            .into_iter()
            .map(|id| (id, source.vector(id).filter(|v| v.len() == self.dim)))
            .collect();
        let mut state = self.state.write();
        for (id, vector) in rows {
            if state.deferred.remove(&id)
                && let Some(vector) = vector
            {
                state.flat(self.dim).insert(id, &vector);
            }
        }
    }

    /// After a background step panicked: stop graph work on this scope for good.
    pub fn give_up(&self) {
        let mut state = self.state.write();
        state.building = false;
        state.broken = true;
    }

    /// Runs `save` on the graph's points while no batch is being added.
    pub fn with_graph_points<T>(&self, graph: &Graph, save: impl FnOnce(&Graph) -> T) -> T {
        let _points = self.graph_points.lock();
        save(graph)
    }
}
