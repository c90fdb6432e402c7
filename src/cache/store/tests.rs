//! The store's own tests: writes, replacements, crash leftovers, f16 vectors.

use super::*;

fn entry(exact: u8, expires_ms: u64) -> Entry {
    Entry {
        scope: [1; 32],
        exact: [exact; 32],
        model: "m".into(),
        created_ms: 0,
        expires_ms,
        has_usage: true,
        response: "{}".into(),
        prompt: None,
        owner: Default::default(),
    }
}

#[test]
fn insert_get_remove() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // Both components exact in f16.
    let (id, replaced) = store.insert(&entry(1, 100), Some(&[0.5, -0.75])).unwrap();
    assert!(replaced.is_none());
    assert_eq!(store.get(id).unwrap(), Some(entry(1, 100)));
    let (found_id, found) = store.get_exact(&Hash32([1; 32])).unwrap().unwrap();
    assert_eq!((found_id, found), (id, entry(1, 100)));
    let vectors: Vec<_> = store.vectors().map(Result::unwrap).collect();
    assert_eq!(vectors[0].vector, vec![0.5, -0.75]);
    assert_eq!(vectors[0].scope, Hash32([1; 32]));

    let scoped: Vec<_> = store.scoped_ids().map(Result::unwrap).collect();
    assert_eq!(scoped, vec![(Hash32([1; 32]), vec![id])]);

    assert!(store.remove(id).unwrap().is_some());
    assert_eq!(store.scoped_ids().count(), 0);
    assert!(store.get_exact(&Hash32([1; 32])).unwrap().is_none());
    assert_eq!(store.vectors().count(), 0);
    assert!(store.expired(u64::MAX, 10).unwrap().is_empty());
    assert!(store.remove(id).unwrap().is_none());
}

#[test]
fn stored_vectors_take_two_bytes_a_component_and_keep_cosines_within_5e_4() {
    use crate::cache::index::tests::{random_unit, reworded};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut rng = fastrand::Rng::with_seed(8);
    let mut worst = 0.0f32;
    for n in 0..40u8 {
        let vector = random_unit(&mut rng, 1536);
        let (id, _) = store.insert(&entry(n, 100), Some(&vector)).unwrap();
        assert_eq!(store.vector_len(id), Some(32 + 2 * 1536));
        let stored = store.vector(id).unwrap();
        for query in [reworded(&mut rng, &vector), random_unit(&mut rng, 1536)] {
            let dot = |v: &[f32]| -> f32 { v.iter().zip(&query).map(|(a, b)| a * b).sum() };
            worst = worst.max((dot(&stored) - dot(&vector)).abs());
        }
    }
    assert!(worst < 5e-4, "worst cosine error {worst}");
}

#[test]
fn f32_vectors_of_an_older_store_are_converted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let vector = [0.6f32, 0.8];
    {
        let db = sled::open(dir.path()).unwrap();
        let mut bytes = vec![3u8; 32];
        for x in vector {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        let old = db.open_tree(F32_VECTORS_TREE).unwrap();
        old.insert(7u64.to_be_bytes(), bytes).unwrap();
        let entries = db.open_tree("entries").unwrap();
        entries
            .insert(7u64.to_be_bytes(), entry(7, 100).encode())
            .unwrap();
        let exact = db.open_tree("exact").unwrap();
        exact.insert([7; 32], &7u64.to_be_bytes()).unwrap();
        // An interrupted conversion had written part of a copy: it is written again.
        let new = db.open_tree(VECTORS_TREE).unwrap();
        new.insert(7u64.to_be_bytes(), vec![0u8; 4]).unwrap();
        db.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let stored: Vec<_> = store.vectors().map(Result::unwrap).collect();
    assert_eq!(stored.len(), 1);
    assert_eq!((stored[0].id, stored[0].scope), (7, Hash32([3; 32])));
    let error = |v: &[f32]| -> f32 { v.iter().zip(vector).map(|(a, b)| (a - b).abs()).sum() };
    assert!(error(&stored[0].vector) < 1e-3, "{:?}", stored[0].vector);
    assert_eq!(store.vector_len(7), Some(vector_bytes(2)));
    let names = store.db.tree_names();
    assert!(!names.iter().any(|name| name == F32_VECTORS_TREE.as_bytes()));
    // `scoped` is filled from the converted vectors.
    let scoped: Vec<_> = store.scoped_ids().map(Result::unwrap).collect();
    assert_eq!(scoped, vec![(Hash32([3; 32]), vec![7])]);
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert!(error(&store.vector(7).unwrap()) < 1e-3);
}

#[test]
fn same_exact_key_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (first, _) = store.insert(&entry(1, 100), Some(&[1.0])).unwrap();
    let (second, replaced) = store.insert(&entry(1, 200), Some(&[1.0])).unwrap();
    assert_eq!(replaced.map(|r| r.id), Some(first));
    assert_eq!(store.len(), 1);
    assert_eq!(
        store.get_exact(&Hash32([1; 32])).unwrap().unwrap().0,
        second
    );
    assert_eq!(store.expired(150, 10).unwrap(), Vec::<u64>::new());
    assert_eq!(store.vectors().count(), 1);
}

#[test]
fn scoped_ids_group_by_scope_and_follow_replacements() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut other = entry(9, 100);
    other.scope = [2; 32];
    let (a, _) = store.insert(&entry(1, 100), Some(&[1.0])).unwrap();
    let (b, _) = store.insert(&other, Some(&[1.0])).unwrap();
    let (c, _) = store.insert(&entry(2, 100), Some(&[1.0])).unwrap();
    store.insert(&entry(3, 100), None).unwrap();
    let (d, _) = store.insert(&entry(1, 200), Some(&[1.0])).unwrap();
    let scoped: Vec<_> = store.scoped_ids().map(Result::unwrap).collect();
    assert_eq!(
        scoped,
        vec![(Hash32([1; 32]), vec![c, d]), (Hash32([2; 32]), vec![b])]
    );
    assert!(a < c);
    store.clear_vectors().unwrap();
    assert_eq!(store.scoped_ids().count(), 0);
}

#[test]
fn expired_lists_in_expiry_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (late, _) = store.insert(&entry(1, 300), None).unwrap();
    let (early, _) = store.insert(&entry(2, 100), None).unwrap();
    store.insert(&entry(3, 900), None).unwrap();
    assert_eq!(store.expired(300, 10).unwrap(), vec![early, late]);
    assert_eq!(store.expired(300, 1).unwrap(), vec![early]);
}

#[test]
fn survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let store = Store::open(dir.path()).unwrap();
        let (id, _) = store.insert(&entry(1, 100), Some(&[1.0, 0.0])).unwrap();
        store.set_meta("embedder", "m@2").unwrap();
        store.flush().unwrap();
        id
    };
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.get(id).unwrap(), Some(entry(1, 100)));
    assert_eq!(store.meta("embedder").unwrap().as_deref(), Some("m@2"));
    assert_eq!(store.vectors().count(), 1);
}

/// sled lets go of its file lock a moment after a store is dropped; an open meanwhile waits
/// for it, and still fails while the store stays open.
#[test]
fn an_open_waits_for_a_store_being_dropped_but_not_for_one_kept_open() {
    let dir = tempfile::tempdir().unwrap();
    let held = Store::open(dir.path()).unwrap();
    let started = std::time::Instant::now();
    assert!(
        Store::open(dir.path()).is_err(),
        "two stores on one directory"
    );
    assert!(started.elapsed() >= LOCK_WAIT);
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(held);
    });
    let store = Store::open(dir.path()).unwrap();
    release.join().unwrap();
    store.insert(&entry(1, 100), None).unwrap();
}

#[test]
fn ids_carry_the_base_and_applied_entries_keep_theirs() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let (alone, _) = store.insert(&entry(1, 100), None).unwrap();
        assert!(alone < 1 << LOCAL_ID_BITS);
        store.set_id_base(7 << LOCAL_ID_BITS).unwrap();
        store.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let (mine, _) = store.insert(&entry(2, 100), None).unwrap();
    assert_eq!(mine >> LOCAL_ID_BITS, 7, "the base survives a reopen");
    // Another replica's entry keeps its id...
    let theirs = (9 << LOCAL_ID_BITS) | 5;
    let (kept, _) = store.insert_as(&entry(3, 100), None, Some(theirs)).unwrap();
    assert_eq!(kept, theirs);
    // ...and a newer answer under the same exact key may reuse it...
    let (again, replaced) = store.insert_as(&entry(3, 200), None, Some(theirs)).unwrap();
    assert_eq!((again, replaced.map(|r| r.id)), (theirs, Some(theirs)));
    assert_eq!(store.get(theirs).unwrap(), Some(entry(3, 200)));
    // ...but an id held by another exact key is never taken over.
    let (moved, _) = store.insert_as(&entry(4, 100), None, Some(mine)).unwrap();
    assert_ne!(moved, mine);
    assert_eq!(store.get(mine).unwrap(), Some(entry(2, 100)));
    assert_eq!(store.get(moved).unwrap(), Some(entry(4, 100)));
}

/// Entries, expiry keys, vectors and scoped keys, by count.
fn tree_counts(store: &Store) -> [usize; 4] {
    [
        store.entries.len(),
        store.expiry.len(),
        store.vectors.len(),
        store.scoped.len(),
    ]
}

#[test]
fn an_entry_applied_again_under_its_id_leaves_nothing_of_the_older_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let theirs = (9 << LOCAL_ID_BITS) | 5;
    store
        .insert_as(&entry(3, 100), Some(&[1.0, 0.0]), Some(theirs))
        .unwrap();
    let mut newer = entry(3, 200);
    newer.scope = [2; 32];
    let (id, replaced) = store.insert_as(&newer, None, Some(theirs)).unwrap();
    assert_eq!(id, theirs);
    assert_eq!(
        replaced.map(|r| (r.id, r.scope)),
        Some((theirs, Hash32([1; 32])))
    );
    assert_eq!(
        tree_counts(&store),
        [1, 1, 0, 0],
        "old expiry, vector, scope gone"
    );
    assert_eq!(store.expired(150, 10).unwrap(), Vec::<u64>::new());
    assert_eq!(store.expired(250, 10).unwrap(), vec![theirs]);
}

#[test]
fn what_an_interrupted_removal_leaves_is_swept_and_dropped_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (cut, whole) = {
        let store = Store::open(dir.path()).unwrap();
        let (cut, _) = store.insert(&entry(1, 100), Some(&[1.0])).unwrap();
        let (whole, _) = store.insert(&entry(2, 100), Some(&[1.0])).unwrap();
        // A removal that a crash stopped after taking the entry out.
        store.exact.remove([1; 32]).unwrap();
        store.entries.remove(cut.to_be_bytes()).unwrap();
        assert_eq!(store.expired(150, 10).unwrap(), vec![whole]);
        assert_eq!(store.expiry.len(), 1, "the dangling expiry key is gone");
        assert_eq!(tree_counts(&store), [1, 1, 2, 2]);
        store.flush().unwrap();
        (cut, whole)
    };
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        tree_counts(&store),
        [1, 1, 1, 1],
        "its vector dropped at open"
    );
    assert_eq!(store.vector(cut), None);
    assert!(store.vector(whole).is_some());
}

#[test]
fn an_entry_its_exact_key_does_not_point_at_is_dropped_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (unpublished, displaced, whole) = {
        let store = Store::open(dir.path()).unwrap();
        // A store cut off before its exact key (or a removal right after taking it).
        let (unpublished, _) = store.insert(&entry(1, 100), Some(&[1.0])).unwrap();
        store.exact.remove([1; 32]).unwrap();
        // A store that swapped the exact key but was cut off before removing the entry it
        // displaced.
        let (displaced, _) = store.insert(&entry(2, 100), Some(&[1.0])).unwrap();
        let (whole, _) = store.insert(&entry(3, 100), Some(&[1.0])).unwrap();
        store.exact.insert([2; 32], &whole.to_be_bytes()).unwrap();
        store.exact.insert([3; 32], &whole.to_be_bytes()).unwrap();
        store.flush().unwrap();
        (unpublished, displaced, whole)
    };
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        tree_counts(&store),
        [1, 1, 1, 1],
        "only the whole entry left"
    );
    for gone in [unpublished, displaced] {
        assert!(store.get(gone).unwrap().is_none());
        assert_eq!(store.vector(gone), None);
    }
    assert_eq!(store.get_exact(&Hash32([3; 32])).unwrap().unwrap().0, whole);
    assert!(store.get_exact(&Hash32([1; 32])).unwrap().is_none());
}

#[test]
fn concurrent_stores_and_removals_of_one_key_leave_one_whole_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    std::thread::scope(|threads| {
        for writer in 0..4u64 {
            let store = &store;
            threads.spawn(move || {
                for round in 0..200u64 {
                    let (id, _) = store
                        .insert(&entry(1, 1_000 + writer * 1_000 + round), Some(&[1.0]))
                        .unwrap();
                    if round % 7 == 0 {
                        store.remove(id).unwrap();
                    }
                }
            });
        }
    });
    // Settle: one last store under the key displaces whatever the race left.
    let (last, _) = store.insert(&entry(1, 99_999), Some(&[1.0])).unwrap();
    assert_eq!(tree_counts(&store), [1, 1, 1, 1], "nothing orphaned");
    assert_eq!(store.get_exact(&Hash32([1; 32])).unwrap().unwrap().0, last);
    assert_eq!(store.expired(u64::MAX, 10).unwrap(), vec![last]);
}
