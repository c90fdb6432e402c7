//! The background worker: what a search sees before, during and after each step, and that
//! removals made while a step runs are never undone by it.

use std::collections::HashSet;

use super::tests::{Regenerate, SETTLE, index, scope, unit};
use super::*;

const DIM: usize = 32;

fn limits(hnsw_min_entries: usize, max_pending: usize) -> Limits {
    Limits {
        hnsw_min_entries,
        compact_dead_ratio: 0.25,
        max_pending,
    }
}

fn partition_of(index: &VectorIndex, n: u8) -> Arc<Partition> {
    index
        .partitions
        .read()
        .get(&scope(n))
        .cloned()
        .expect("partition")
}

fn best(index: &VectorIndex, id: u64) -> Option<u64> {
    index
        .search(scope(1), &unit(id, DIM), 1)
        .first()
        .map(|c| c.id)
}

/// Ids a search over the whole partition returns.
fn found(partition: &Partition, query: u64) -> HashSet<u64> {
    partition
        .search(
            &unit(query, DIM),
            1000,
            f32::NEG_INFINITY,
            128,
            &Regenerate(DIM),
        )
        .iter()
        .map(|c| c.id)
        .collect()
}

/// A partition with a graph of ids `0..n`.
fn graph_partition(n: u64) -> Partition {
    let rows = (0..n).map(|id| (id, unit(id, DIM))).collect();
    Partition::from_graph(Graph::from_f32(DIM, rows, HnswParams::default()))
}

#[test]
fn a_scope_keeps_serving_while_its_graph_is_built_then_uses_it() {
    let index = index(64, DIM);
    index.worker.pause(true);
    for id in 0..200 {
        index.insert(scope(1), id, &unit(id, DIM));
    }
    let partition = partition_of(&index, 1);
    assert!(
        partition.graph().is_none(),
        "the build waits for the worker"
    );
    for id in (0..200).step_by(13) {
        assert_eq!(best(&index, id), Some(id), "exact search meanwhile");
    }
    index.worker.pause(false);
    assert!(index.settle(SETTLE));
    assert_eq!(partition.graph().map(|g| g.live()), Some(200));
    assert_eq!(partition.waiting(), (0, 0), "nothing left in the flat part");
    for id in (0..200).step_by(13) {
        assert_eq!(best(&index, id), Some(id), "found in the graph");
    }
}

#[test]
fn a_new_vector_is_found_before_it_reaches_the_graph() {
    let index = index(64, DIM);
    for id in 0..100 {
        index.insert(scope(1), id, &unit(id, DIM));
    }
    assert!(index.settle(SETTLE));
    let partition = partition_of(&index, 1);
    index.worker.pause(true);
    index.insert(scope(1), 1000, &unit(1000, DIM));
    assert_eq!(partition.waiting(), (1, 0));
    assert_eq!(partition.graph().map(|g| g.live()), Some(100));
    let hit = index.search(scope(1), &unit(1000, DIM), 1)[0];
    assert_eq!(hit.id, 1000);
    assert!((hit.similarity - 1.0).abs() < 1e-4);
    index.worker.pause(false);
    assert!(index.settle(SETTLE));
    assert_eq!(partition.waiting(), (0, 0));
    assert_eq!(partition.graph().map(|g| g.live()), Some(101));
    assert_eq!(best(&index, 1000), Some(1000));
    assert_eq!(index.len(), 101);
}

#[test]
fn removals_during_a_first_build_stay_removed() {
    let limits = limits(64, 1024);
    let partition = Partition::new(DIM);
    let deferred = AtomicU64::new(0);
    for id in 0..100 {
        partition.insert(id, &unit(id, DIM), &limits, &deferred);
    }
    let rows = partition.start_build();
    let snapshot: HashSet<u64> = rows.ids.iter().copied().collect();
    let graph = Graph::from_flat(&rows, HnswParams::default());
    // While the graph is built: one snapshot entry removed, two stored, one of those removed.
    partition.remove(5, &limits);
    partition.insert(500, &unit(500, DIM), &limits, &deferred);
    partition.insert(501, &unit(501, DIM), &limits, &deferred);
    partition.remove(500, &limits);
    assert!(!found(&partition, 5).contains(&5));
    partition.finish_build(graph, &snapshot);

    assert_eq!(partition.waiting(), (1, 0), "501 waits for the graph");
    for query in [5, 500, 501] {
        let ids = found(&partition, query);
        assert!(!ids.contains(&5) && !ids.contains(&500), "{query}: {ids:?}");
        assert!(ids.contains(&501));
    }
    assert_eq!(partition.live(), 100);
}

#[test]
fn removals_during_a_compaction_stay_removed() {
    let limits = limits(64, 1024);
    let partition = graph_partition(100);
    for id in 0..30 {
        partition.remove(id, &limits);
    }
    let old = partition.graph().expect("graph");
    assert!(old.dead_ratio() > limits.compact_dead_ratio);
    let new = old.compacted();
    partition.remove(50, &limits);
    partition.finish_compaction(&old, new);

    let graph = partition.graph().expect("graph");
    assert!(!Arc::ptr_eq(&graph, &old), "swapped");
    assert_eq!(graph.live(), 69);
    assert_eq!(
        graph.dead_ratio(),
        1.0 / 70.0,
        "only the late removal is dead"
    );
    for query in [3, 50, 99] {
        let ids = found(&partition, query);
        assert!(ids.iter().all(|&id| id >= 30 && id != 50), "{ids:?}");
    }
}

#[test]
fn removals_during_a_drain_stay_removed() {
    let limits = limits(64, 1024);
    let partition = graph_partition(100);
    let deferred = AtomicU64::new(0);
    partition.insert(200, &unit(200, DIM), &limits, &deferred);
    partition.insert(201, &unit(201, DIM), &limits, &deferred);
    let source = Regenerate(DIM);
    let (graph, rows, unreadable) = partition.take_batch(&source).expect("batch");
    assert_eq!(rows.len(), 2);
    graph.add(&rows);
    partition.remove(200, &limits);
    partition.finish_drain(&graph, &rows, &unreadable);

    assert_eq!(partition.waiting(), (0, 0));
    assert!(!graph.is_live(200) && graph.is_live(201));
    assert!(graph.dead_ratio() > 0.0, "200's point is counted dead");
    assert!(!found(&partition, 200).contains(&200));
    assert!(found(&partition, 201).contains(&201));
}

#[test]
fn past_the_bound_the_oldest_wait_in_the_store_and_are_indexed_later() {
    let index = VectorIndex::new(
        IndexSettings {
            hnsw_min_entries: 16,
            max_pending: 4,
            ..IndexSettings::default()
        },
        Arc::new(Regenerate(DIM)),
    );
    for id in 0..32 {
        index.insert(scope(1), id, &unit(id, DIM));
    }
    assert!(index.settle(SETTLE));
    // Inserts made while the first graph was built may have been deferred already.
    let deferred_before = index.deferred_total();
    index.worker.pause(true);
    for id in 100..110 {
        index.insert(scope(1), id, &unit(id, DIM));
    }
    let backlog = index.backlog();
    assert_eq!((backlog.pending, backlog.deferred), (4, 6));
    assert_eq!(index.deferred_total() - deferred_before, 6, "counted");
    assert_eq!(index.len(), 42, "deferred entries are not lost");
    for id in 106..110 {
        assert_eq!(best(&index, id), Some(id), "the newest stay searchable");
    }
    for id in 100..106 {
        assert_ne!(best(&index, id), Some(id), "deferred: not searchable yet");
    }
    index.worker.pause(false);
    assert!(index.settle(SETTLE));
    assert_eq!(index.backlog(), Backlog::default());
    for id in 100..110 {
        assert_eq!(best(&index, id), Some(id), "indexed from the store");
    }
    let graph = partition_of(&index, 1).graph().expect("graph");
    assert_eq!(graph.live(), 42);
}

#[test]
fn a_deferred_entry_removed_before_it_is_indexed_never_comes_back() {
    let index = VectorIndex::new(
        IndexSettings {
            hnsw_min_entries: 16,
            max_pending: 2,
            ..IndexSettings::default()
        },
        Arc::new(Regenerate(DIM)),
    );
    for id in 0..20 {
        index.insert(scope(1), id, &unit(id, DIM));
    }
    assert!(index.settle(SETTLE));
    index.worker.pause(true);
    for id in 100..105 {
        index.insert(scope(1), id, &unit(id, DIM));
    }
    assert_eq!(index.backlog().deferred, 3);
    index.remove(scope(1), 100);
    index.worker.pause(false);
    assert!(index.settle(SETTLE));
    assert_ne!(best(&index, 100), Some(100));
    assert_eq!(index.len(), 24);
}
