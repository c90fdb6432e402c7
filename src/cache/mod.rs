//! The two-tier answer cache: exact lookups by key, semantic lookups by vector within a scope,
//! TTL and expiry sweeps. It knows nothing of HTTP or of the request flow; `flow/` drives it.
//!
//! - `key`: canonical hashing of requests into scope and exact keys
//! - `entry`: the stored form of one answer
//! - `partition`: whose cache (tenant, namespace): a request's, and each entry's owner
//! - `store`: sled persistence
//! - `index`: the per-scope vector index (exact search, then an HNSW graph; int8 codes)
//! - `verify`: a second check on semantic candidates (numbers, negation)
//! - `recency`: least-recently-used order and eviction for the capacity caps
//! - `health`: write failures (full or read-only disk) turn writes off, then probe and recover
//! - `events`: what a store or an admin delete tells observers (replication), and applying
//!   what other replicas stored
//! - `inflight`: identical requests in flight wait for one answer (coalescing), with the
//!   seam through which other processes take part
//!
//! Every method of `Cache` blocks; run it with `spawn_blocking`.

pub mod admin;
pub mod entry;
pub mod events;
pub mod health;
mod hits;
pub mod index;
pub mod inflight;
pub mod key;
mod lookup;
mod partition;
mod recency;
pub mod store;
pub mod verify;

pub use lookup::{Candidate, Hit, Lookup, REPLAY_FLOOR, Requirements, SemanticOutcome};
pub use partition::Partition;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::{MappedRwLockReadGuard, Mutex, RwLock, RwLockReadGuard};

use crate::clock::SharedClock;
use crate::config::CacheConfig;
use entry::Entry;
use health::{Permit, WriteHealth};
use index::{DumpPolicy, Dumps, HnswParams, IndexSettings, VectorIndex};
use key::Hash32;
use recency::{Capacity, Recency};
use store::{Store, StoreError};
use verify::VerifyConfig;
use verify::model::ModelStage;

/// How many nearest vectors a semantic lookup examines before giving up.
const SEMANTIC_CANDIDATES: usize = 4;
/// Expired entries removed per sweep step (keeps each blocking step short).
const SWEEP_BATCH: usize = 1024;
/// A graph is dumped in the background once it has this many unsaved changes (a restart
/// replays them: a few seconds of inserts at most) ...
const DUMP_MIN_CHANGES: u64 = 1000;
/// ... and no more often than this, since a dump of a million entries writes gigabytes.
const DUMP_MIN_INTERVAL: Duration = Duration::from_secs(300);
/// How long the shutdown dump waits for the index worker to finish its backlog; what is
/// left is replayed from the store at the next start.
const SHUTDOWN_SETTLE: Duration = Duration::from_secs(10);

/// A new answer to store.
pub struct NewEntry {
    pub scope: Hash32,
    pub exact: Hash32,
    pub model: String,
    pub response: String,
    pub has_usage: bool,
    pub vector: Option<Vec<f32>>,
    /// The embedded prompt text, kept for verification of later candidates.
    pub prompt: Option<String>,
    /// Whose entry this is (for purging a tenant or a namespace).
    pub owner: Partition,
}

pub struct Cache {
    /// `None` only while a probe reopens it, or when reopening failed (lookups then miss).
    /// Shared with the index's vector source, so nothing else keeps an old store (and its
    /// file lock) alive across a reopen.
    store: Arc<RwLock<Option<Store>>>,
    dir: PathBuf,
    health: WriteHealth,
    index: VectorIndex,
    clock: SharedClock,
    /// Both retuned by a configuration reload.
    ttl_ms: AtomicU64,
    verify: ArcSwap<VerifyConfig>,
    /// The verifier model after the rules (`[cache.verify.model]`), with the thresholds it
    /// may lower.
    model_stage: ArcSwap<ModelStage>,
    /// Graph dumps under `dir/index`, reloaded at start-up.
    dumps: Dumps,
    last_dump: Mutex<Instant>,
    /// `cache.max_entries` / `cache.max_bytes`.
    capacity: Capacity,
    /// Use order for eviction; empty when there is no cap.
    recency: Recency,
    /// Times each entry was served since start-up (the admin entry view).
    hits: hits::HitCounts,
    /// Answers not stored because they alone exceed `cache.max_bytes`.
    oversized: AtomicU64,
    /// Told of every local store and admin delete (`[redis]` replication); unset without it.
    events: std::sync::OnceLock<Arc<dyn events::CacheEvents>>,
}

/// Reads vectors for the index through the cache's store slot: after a reopen, the new store.
struct SlotVectors(Arc<RwLock<Option<Store>>>);

impl index::VectorSource for SlotVectors {
    fn vector(&self, id: u64) -> Option<Vec<f32>> {
        // During a reopen the vector is missing for a moment: the candidate is skipped.
        self.0.try_read()?.as_ref()?.vector(id)
    }
}

impl Cache {
    /// Opens the store under `config.dir` and rebuilds the vector index from it. Vectors made
    /// by another embedding model than `embedder_id` are dropped (their entries stay
    /// reachable by the exact tier).
    pub fn open(
        config: &CacheConfig,
        embedder_id: &str,
        clock: SharedClock,
    ) -> Result<Cache, StoreError> {
        std::fs::create_dir_all(&config.dir).map_err(|e| StoreError::Sled(e.into()))?;
        let slot = Arc::new(RwLock::new(Some(Store::open(&config.dir)?)));
        let guard = slot.read();
        let store = guard.as_ref().ok_or(StoreError::Unavailable)?;
        // Dumps only save time: failing to use them is a warning, never a cache without store.
        let dumps = Dumps::new(config.dir.join("index"), embedder_id);
        if store.meta("embedder")?.as_deref() != Some(embedder_id) {
            store.clear_vectors()?;
            // Leftovers would be refused anyway: each manifest names its embedder.
            if let Err(err) = dumps.clear() {
                tracing::warn!(error = %err, "clearing index dumps failed");
            }
            store.set_meta("embedder", embedder_id)?;
        }
        let source = Arc::new(SlotVectors(slot.clone()));
        let index = VectorIndex::new(
            IndexSettings {
                hnsw_min_entries: config.hnsw_min_entries,
                compact_dead_ratio: config.compact_dead_ratio,
                max_pending: IndexSettings::default().max_pending,
                params: HnswParams {
                    m: config.hnsw_m,
                    ef_construction: config.hnsw_ef_construction,
                    ef_search: config.hnsw_ef_search,
                },
            },
            source.clone(),
        );
        // Large scopes reload their graph dump and replay what changed since; the rest (and
        // any scope whose dump is missing, stale beyond use or damaged) are built from the
        // stored vectors.
        let mut restored = std::collections::HashSet::new();
        let capacity = Capacity {
            max_entries: config.max_entries,
            max_bytes: config.max_bytes,
        };
        let mut with_vectors = std::collections::HashSet::new();
        for scoped in store.scoped_ids() {
            let (scope, ids) = scoped?;
            if capacity.is_limited() {
                with_vectors.extend(ids.iter().copied());
            }
            if ids.len() >= config.hnsw_min_entries
                && index.restore(scope, &ids.iter().copied().collect(), &dumps)
            {
                restored.insert(scope);
                continue;
            }
            let rows = ids
                .into_iter()
                .filter_map(|id| Some((id, index::VectorSource::vector(&*source, id)?)))
                .collect();
            index.load(scope, rows);
        }
        if let Err(err) = dumps.retain(&restored) {
            tracing::warn!(error = %err, "cleaning index dumps failed");
        }
        drop(guard);
        let cache = Cache {
            store: slot,
            dir: config.dir.clone(),
            health: WriteHealth::new(),
            index,
            clock,
            ttl_ms: AtomicU64::new(config.ttl_secs.saturating_mul(1000)),
            verify: ArcSwap::from_pointee(config.verify.clone()),
            model_stage: ArcSwap::from_pointee(ModelStage::new(config, None)),
            dumps,
            last_dump: Mutex::new(Instant::now()),
            capacity,
            recency: Recency::default(),
            hits: Default::default(),
            oversized: AtomicU64::new(0),
            events: std::sync::OnceLock::new(),
        };
        cache.load_recency(&with_vectors)?;
        Ok(cache)
    }

    /// Applies a reloaded TTL (for entries stored from now on) and verification settings.
    pub fn retune(&self, config: &CacheConfig) {
        self.ttl_ms
            .store(config.ttl_secs.saturating_mul(1000), Ordering::Relaxed);
        self.verify
            .store(std::sync::Arc::new(config.verify.clone()));
        let stage = ModelStage::new(config, Some(&self.model_stage.load()));
        self.model_stage.store(Arc::new(stage));
        self.index.set_ef_search(config.hnsw_ef_search);
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The store for reading. A lookup never waits for a reopen: it misses instead.
    fn store(&self) -> Result<MappedRwLockReadGuard<'_, Store>, StoreError> {
        let guard = self.store.try_read().ok_or(StoreError::Unavailable)?;
        RwLockReadGuard::try_map(guard, Option::as_ref).map_err(|_| StoreError::Unavailable)
    }

    /// Runs a write under the health rules: skipped while writes are off, counted and turning
    /// writes off when it fails, and once the backoff has passed run as a probe on a reopened
    /// store, made durable before writes count as on again.
    fn write<T>(
        &self,
        work: impl FnOnce(&Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let now = self.now_ms();
        let probe = match self.health.permit(now) {
            Permit::Write => false,
            Permit::Skip => return Err(StoreError::WritesOff),
            Permit::Probe => true,
        };
        let result = (|| -> Result<T, StoreError> {
            if probe {
                self.reopen()?;
            }
            let guard = self.store.read();
            let store = guard.as_ref().ok_or(StoreError::Unavailable)?;
            let value = work(store)?;
            if probe {
                store.flush()?;
            }
            Ok(value)
        })();
        match result {
            Ok(value) => {
                if probe {
                    self.health.succeeded();
                }
                Ok(value)
            }
            Err(err) => {
                self.health.failed(now, &err);
                Err(StoreError::WritesOff)
            }
        }
    }

    /// Drops the store and opens it again (sled holds a file lock, so never two at once).
    /// Vectors of writes lost with the old instance stay in the index; their ids are never
    /// reused, and a lookup that meets one drops it.
    fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.store.write();
        *slot = None;
        *slot = Some(Store::open(&self.dir)?);
        Ok(())
    }

    /// Whether cache writes are on (off after a disk error, until a probe succeeds).
    pub fn writes_enabled(&self) -> bool {
        self.health.writes_enabled()
    }

    /// Cache writes that failed since start-up (disk full, read-only, I/O errors).
    pub fn write_failures(&self) -> u64 {
        self.health.failures()
    }

    /// Cache writes skipped because writes were off.
    pub fn writes_skipped(&self) -> u64 {
        self.health.skipped()
    }

    /// Stores an answer with the configured TTL (a request's `max-age` only limits what that
    /// request accepts: it never shortens an entry other requests rely on); returns its id and
    /// the time it was stored. An answer larger than `cache.max_bytes` is not stored
    /// (`StoreError::Oversized`), so it never evicts what fits.
    pub fn insert(&self, new: NewEntry) -> Result<(u64, u64), StoreError> {
        let now = self.now_ms();
        let ttl = self.ttl_ms.load(Ordering::Relaxed);
        let entry = Entry {
            scope: *new.scope.as_bytes(),
            exact: *new.exact.as_bytes(),
            model: new.model,
            created_ms: now,
            expires_ms: now.saturating_add(ttl),
            has_usage: new.has_usage,
            response: new.response,
            prompt: new.prompt,
            owner: new.owner,
        };
        let id = self.store_entry(&entry, new.vector.as_deref(), None)?;
        if let Some(events) = self.events.get() {
            events.stored(id, &entry, new.vector.as_deref());
        }
        Ok((id, now))
    }

    /// Writes an entry (new here, or stored by another replica) into the store, the index and
    /// the use order, then evicts down to the caps; returns its id (`id` if given and free).
    fn store_entry(
        &self,
        entry: &Entry,
        vector: Option<&[f32]>,
        id: Option<u64>,
    ) -> Result<u64, StoreError> {
        let scope = entry.scope();
        let size = self.admit(entry, vector)?;
        let (id, replaced) = self.write(|store| store.insert_as(entry, vector, id))?;
        if let Some(replaced) = replaced {
            self.index.remove(replaced.scope, replaced.id);
            self.recency.removed(replaced.id);
            self.hits.forget(replaced.id);
        }
        if let Some(vector) = vector {
            self.index.insert(scope, id, vector);
        }
        if let Some(size) = size {
            self.recency.stored(id, size);
        }
        // A concurrent store under the same exact key, or an eviction, may have deleted this
        // entry between the write and the lines above: its removal then found nothing in the
        // index or the use order. Checking after adding means one of the two always cleans up.
        if !self.is_stored(id) {
            self.index.remove(scope, id);
            self.recency.removed(id);
            self.hits.forget(id);
        }
        self.evict()?;
        Ok(id)
    }

    /// Whether `id` is in the store; waits for a reopen (a write path, never a lookup).
    fn is_stored(&self, id: u64) -> bool {
        let guard = self.store.read();
        guard.as_ref().is_some_and(|store| store.contains(id))
    }

    /// Deletes one entry (an admin call): from the store and the index here, and through the
    /// event observer on every other replica.
    pub fn remove(&self, id: u64) -> Result<bool, StoreError> {
        let Some(entry) = self.remove_local(id)? else {
            return Ok(false);
        };
        if let Some(events) = self.events.get() {
            events.removed(&entry);
        }
        Ok(true)
    }

    /// Removes one entry from this replica's store and index only (expiry and eviction,
    /// which every replica does by itself, and deletes applied from other replicas).
    fn remove_local(&self, id: u64) -> Result<Option<Entry>, StoreError> {
        let Some(entry) = self.write(|store| store.remove(id))? else {
            return Ok(None);
        };
        self.index.remove(entry.scope(), id);
        self.recency.removed(id);
        self.hits.forget(id);
        Ok(Some(entry))
    }

    /// Deletes every expired entry; returns how many.
    pub fn sweep_expired(&self) -> Result<usize, StoreError> {
        let mut removed = 0;
        if !self.health.writes_enabled() {
            return Ok(0); // expired entries are not served; they go once writes are back
        }
        loop {
            let ids = self.store()?.expired(self.now_ms(), SWEEP_BATCH)?;
            if ids.is_empty() {
                return Ok(removed);
            }
            for id in ids {
                removed += usize::from(self.remove_local(id)?.is_some());
            }
        }
    }

    pub fn entries(&self) -> usize {
        self.store().map_or(0, |store| store.len())
    }

    pub fn indexed(&self) -> usize {
        self.index.len()
    }

    /// How far the index's background work is behind (vectors not yet in their graph).
    pub fn index_backlog(&self) -> index::Backlog {
        self.index.backlog()
    }

    /// Vectors that waited in the store only, unsearchable until indexed, since start-up.
    pub fn index_deferred_total(&self) -> u64 {
        self.index.deferred_total()
    }

    /// Waits (at most `timeout`) until every stored vector is in its graph; whether it got
    /// there. For tests and benches: no request waits for the index.
    pub fn settle_index(&self, timeout: Duration) -> bool {
        self.index.settle(timeout)
    }

    /// Dumps vector graphs so the next start reloads them instead of rebuilding. `all`
    /// (shutdown) writes every graph changed since its last dump; otherwise only graphs with
    /// many unsaved changes, at most every few minutes. Returns how many were written.
    pub fn dump_index(&self, all: bool) -> usize {
        let policy = if all {
            if !self.index.settle(SHUTDOWN_SETTLE) {
                tracing::info!("index still catching up; the next start replays the rest");
            }
            DumpPolicy { min_changes: 1 }
        } else {
            let mut last = self.last_dump.lock();
            if last.elapsed() < DUMP_MIN_INTERVAL {
                return 0;
            }
            *last = Instant::now();
            DumpPolicy {
                min_changes: DUMP_MIN_CHANGES,
            }
        };
        // Flush first, so a dump rarely covers vectors a crash could still lose (a restart
        // would only find them dead).
        if let Err(err) = self.store().and_then(|store| store.flush()) {
            tracing::warn!(error = %err, "flush before index dump failed");
            return 0;
        }
        self.index.dump(&self.dumps, policy)
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.store()?.flush()
    }
}

impl Drop for Cache {
    /// Closes the store here and now. The index worker may hold the slot for one last
    /// vector read; without this, the store (and sled's file lock) would close on that
    /// thread a moment later, and a cache reopened on the same directory at once (a test,
    /// an embedding library) would find the lock still held.
    fn drop(&mut self) {
        self.store.write().take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index worker may hold the store's slot past the cache's end (one last vector
    /// read); the store still closes with the cache, so the directory reopens at once.
    #[test]
    fn a_dropped_cache_releases_its_directory_even_while_the_worker_holds_the_slot() {
        let dir = tempfile::tempdir().unwrap();
        let config = CacheConfig {
            dir: dir.path().to_path_buf(),
            ..CacheConfig::default()
        };
        let clock = crate::clock::ManualClock::starting_now();
        let cache = Cache::open(&config, "e", clock.clone()).unwrap();
        let held_by_worker = SlotVectors(cache.store.clone());
        drop(cache);
        let reopened = Cache::open(&config, "e", clock);
        assert!(reopened.is_ok(), "{:?}", reopened.err());
        assert_eq!(index::VectorSource::vector(&held_by_worker, 1), None);
    }
}
