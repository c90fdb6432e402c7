//! Graph dumps across restarts: a scope large enough for an HNSW graph still hits
//! semantically after a graceful restart (reloaded from its dump), after its dump was
//! damaged (rebuilt from the store), and with entries stored and removed after the dump.

use std::path::Path;

use crate::support::fake_upstream::{CHAT_PATH, EMBED_DIM};
use crate::support::proxy::{Harness, ask};
use deja::cache::key::Hash32;
use deja::cache::{Cache, NewEntry, Requirements};
use deja::clock::ManualClock;
use deja::config::CacheConfig;

/// Entries stored in one scope: past `hnsw_min_entries`, so the scope has a graph.
const ENTRIES: usize = 24;
const MIN_ENTRIES: usize = 16;

/// Question `i`'s embedding: basis vector `i`.
fn basis(i: usize) -> Vec<f32> {
    let mut v = vec![0.0; EMBED_DIM];
    v[i] = 1.0;
    v
}

/// Entry `i` of `scope`: its answer names it, its vector is basis vector `i`.
fn entry(scope: Hash32, i: usize) -> NewEntry {
    NewEntry {
        scope,
        exact: Hash32([i as u8; 32]),
        model: "m".into(),
        response: format!("answer {i}"),
        has_usage: true,
        vector: Some(basis(i)),
        prompt: None,
        owner: Default::default(),
    }
}

/// A rewording of question `i`: cosine 0.95 to `basis(i)`, 0 to every other question.
fn reworded(i: usize) -> Vec<f32> {
    let mut v = vec![0.0; EMBED_DIM];
    v[i] = 0.95;
    v[EMBED_DIM - 1] = (1.0f32 - 0.95 * 0.95).sqrt();
    v
}

async fn start(dir: &Path) -> Harness {
    let dir = dir.to_path_buf();
    let h = Harness::with(move |c| {
        c.cache.dir = dir;
        c.cache.hnsw_min_entries = MIN_ENTRIES;
    })
    .await;
    for i in 0..ENTRIES {
        h.upstream.set_embedding(&format!("question {i}"), basis(i));
        h.upstream
            .set_embedding(&format!("reworded {i}"), reworded(i));
    }
    h
}

async fn fill_and_stop(dir: &Path) -> Vec<String> {
    let h = start(dir).await;
    let mut answers = Vec::new();
    for i in 0..ENTRIES {
        let reply = h.chat(&ask(&format!("question {i}"))).await;
        assert_eq!(reply.cache_status(), "miss");
        answers.push(reply.content());
    }
    h.proxy.shutdown().await;
    answers
}

/// Restarts and checks every rewording hits. `restored`: whether the graph must have come
/// from the dump (whose manifest then survives start-up unchanged) or been rebuilt (start-up
/// deletes a dump it could not use).
async fn assert_rewordings_hit(dir: &Path, answers: &[String], restored: bool) {
    let manifest = |dir: &Path| {
        files_ending(dir, ".manifest")
            .first()
            .map(|path| std::fs::read(path).unwrap())
    };
    let before = manifest(dir);
    let h = start(dir).await;
    if restored {
        assert!(before.is_some());
        assert_eq!(manifest(dir), before, "reloaded, not rebuilt");
    } else {
        assert_eq!(manifest(dir), None, "unusable dump removed");
    }
    for (i, answer) in answers.iter().enumerate() {
        let reply = h.chat(&ask(&format!("reworded {i}"))).await;
        assert_eq!(reply.cache_status(), "hit", "reworded {i}");
        assert_eq!(reply.header("x-deja-match"), Some("semantic"));
        assert_eq!(&reply.content(), answer, "reworded {i}");
    }
    assert_eq!(h.upstream.calls(CHAT_PATH), 0);
}

fn files_ending(dir: &Path, suffix: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir.join("index"))
        .map(|files| {
            files
                .map(|f| f.unwrap().path())
                .filter(|p| p.to_string_lossy().ends_with(suffix))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn graph_scope_hits_after_a_restart_from_its_dump() {
    let dir = tempfile::tempdir().unwrap();
    let answers = fill_and_stop(dir.path()).await;
    assert_eq!(
        files_ending(dir.path(), ".manifest").len(),
        1,
        "dumped on shutdown"
    );
    assert_rewordings_hit(dir.path(), &answers, true).await;
}

#[tokio::test]
async fn a_corrupted_dump_falls_back_to_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let answers = fill_and_stop(dir.path()).await;
    let graphs = files_ending(dir.path(), ".graph");
    assert_eq!(graphs.len(), 1);
    for file in graphs {
        let mut bytes = std::fs::read(&file).unwrap();
        bytes.truncate(bytes.len() / 2);
        bytes.extend(std::iter::repeat_n(0xff, 64));
        std::fs::write(&file, bytes).unwrap();
    }
    assert_rewordings_hit(dir.path(), &answers, false).await;
}

/// Stored after the dump, removed after the dump, then a crash (no second dump): the reopened
/// cache finds the new entry and never returns the removed ones.
#[test]
fn changes_after_the_dump_are_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let config = CacheConfig {
        dir: dir.path().to_path_buf(),
        hnsw_min_entries: MIN_ENTRIES,
        ..CacheConfig::default()
    };
    let scope = Hash32([7; 32]);
    let store = |cache: &Cache, i: usize| cache.insert(entry(scope, i)).unwrap().0;
    let clock = ManualClock::starting_now();
    let ids: Vec<u64> = {
        let cache = Cache::open(&config, "e", clock.clone()).unwrap();
        let ids = (0..ENTRIES).map(|i| store(&cache, i)).collect();
        assert_eq!(cache.dump_index(true), 1);
        ids
    };
    let added = {
        let cache = Cache::open(&config, "e", clock.clone()).unwrap();
        for &id in &ids[..3] {
            assert!(cache.remove(id).unwrap());
        }
        let added = store(&cache, ENTRIES);
        cache.flush().unwrap();
        added
        // Dropped without a dump, like a crash after the store's last flush.
    };
    let cache = Cache::open(&config, "e", clock).unwrap();
    let needs = Requirements {
        max_age_ms: None,
        needs_usage: false,
    };
    let lookup = |i: usize| {
        cache
            .lookup_semantic(&scope, &reworded(i), "q", 0.9, needs)
            .unwrap()
            .hit
            .map(|hit| hit.id)
    };
    assert_eq!(lookup(ENTRIES), Some(added));
    for i in 0..3 {
        assert_eq!(lookup(i), None, "removed entry {i}");
    }
    for (i, &id) in ids.iter().enumerate().skip(3) {
        assert_eq!(lookup(i), Some(id));
    }
    assert_eq!(cache.indexed(), ENTRIES - 2);
}

/// Dumps only save start-up time: a dump directory that cannot be used (here a file is in
/// its place) leaves the cache working, and rebuilding on the next start.
#[test]
fn an_unusable_dump_directory_does_not_disable_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index"), b"not a directory").unwrap();
    let config = CacheConfig {
        dir: dir.path().to_path_buf(),
        hnsw_min_entries: MIN_ENTRIES,
        ..CacheConfig::default()
    };
    let scope = Hash32([7; 32]);
    let cache = Cache::open(&config, "e", ManualClock::starting_now()).unwrap();
    for i in 0..ENTRIES {
        cache.insert(entry(scope, i)).unwrap();
    }
    assert_eq!(cache.dump_index(true), 0);
    let needs = Requirements {
        max_age_ms: None,
        needs_usage: false,
    };
    let hit = cache
        .lookup_semantic(&scope, &reworded(3), "q", 0.9, needs)
        .unwrap()
        .hit
        .expect("semantic hit");
    assert_eq!(hit.entry.response, "answer 3");
}

/// A reloaded graph reads its vectors from the dump's data file (memory-mapped). Dumping it
/// again writes new files and deletes the mapped ones; every generation must still find
/// every entry, old and new.
#[test]
fn a_reloaded_graph_is_dumped_and_reloaded_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = CacheConfig {
        dir: dir.path().to_path_buf(),
        hnsw_min_entries: MIN_ENTRIES,
        ..CacheConfig::default()
    };
    let scope = Hash32([9; 32]);
    let clock = ManualClock::starting_now();
    let needs = Requirements {
        max_age_ms: None,
        needs_usage: false,
    };
    let mut ids = Vec::new();
    let first = ENTRIES - 6;
    for generation in 0..3 {
        let cache = Cache::open(&config, "e", clock.clone()).unwrap();
        let stored = if generation == 0 {
            0..first
        } else {
            first + generation * 2 - 2..first + generation * 2
        };
        for i in stored {
            ids.push(cache.insert(entry(scope, i)).unwrap().0);
        }
        for (i, &id) in ids.iter().enumerate() {
            let hit = cache
                .lookup_semantic(&scope, &reworded(i), "q", 0.9, needs)
                .unwrap()
                .hit
                .map(|hit| hit.id);
            assert_eq!(hit, Some(id), "generation {generation}, entry {i}");
        }
        assert_eq!(cache.dump_index(true), 1);
        assert_eq!(files_ending(dir.path(), ".manifest").len(), 1);
        assert_eq!(
            files_ending(dir.path(), ".graph").len(),
            1,
            "old dump deleted"
        );
    }
}
