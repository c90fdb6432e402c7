//! The cache's narrow interface to replication: an observer told of what this replica stores
//! and deletes, and the calls that apply what other replicas did. The cache knows nothing of
//! Redis; `crate::replica` implements the observer.
//!
//! Across replicas an entry is known by its exact key and its creation time, and keeps the
//! id the replica that stored it gave it: ids are unique across replicas once each has its
//! `id_base` (given by `crate::replica` when it joins).

use std::sync::Arc;

use super::Cache;
use super::entry::Entry;
use super::key::Hash32;
use super::store::StoreError;

/// Told of local changes other replicas must see. Called on the storing thread (blocking
/// code): implementations only queue the event.
pub trait CacheEvents: Send + Sync {
    /// An answer stored here under `id` (not one applied from another replica).
    fn stored(&self, id: u64, entry: &Entry, vector: Option<&[f32]>);
    /// An entry deleted by an admin call (delete or purge). Expiry and eviction are not
    /// announced: every replica expires by the same clock and evicts by its own use order.
    fn removed(&self, entry: &Entry);
}

impl Cache {
    /// Sets the observer; only the first call counts.
    pub fn set_events(&self, events: Arc<dyn CacheEvents>) {
        let _ = self.events.set(events);
    }

    /// Applies an entry stored by another replica (under its `id` there, kept here unless
    /// it clashes), unless it has expired or this replica already holds the same or a newer
    /// answer for its exact key. Returns whether it was stored. Nothing is announced (it came
    /// from the log).
    pub fn apply_stored(
        &self,
        id: Option<u64>,
        entry: &Entry,
        vector: Option<&[f32]>,
    ) -> Result<bool, StoreError> {
        if !entry.is_live(self.now_ms()) {
            return Ok(false);
        }
        if let Some((_, held)) = self.store()?.get_exact(&entry.exact())?
            && held.created_ms >= entry.created_ms
        {
            return Ok(false);
        }
        self.store_entry(entry, vector, id)?;
        Ok(true)
    }

    /// Applies another replica's delete of the answer under `exact` created at `created_ms`:
    /// this replica's copy goes, and so does any older answer it held under that key (a newer
    /// one, stored after the delete, stays).
    pub fn apply_removed(&self, exact: &Hash32, created_ms: u64) -> Result<bool, StoreError> {
        let Some((id, held)) = self.store()?.get_exact(exact)? else {
            return Ok(false);
        };
        if held.created_ms > created_ms {
            return Ok(false);
        }
        Ok(self.remove_local(id)?.is_some())
    }

    /// The live answer under `exact` with its id and vector, to publish again after Redis
    /// was away.
    pub fn stored_answer(&self, exact: &Hash32) -> Option<(u64, Entry, Option<Vec<f32>>)> {
        let store = self.store().ok()?;
        let (id, entry) = store.get_exact(exact).ok()??;
        entry
            .is_live(self.now_ms())
            .then(|| (id, entry, store.vector(id)))
    }

    /// The high bits of the ids this replica gives new entries (0 until it has joined a
    /// cluster), and setting them (kept in the store).
    pub fn id_base(&self) -> u64 {
        self.store().map_or(0, |store| store.id_base())
    }

    pub fn set_id_base(&self, base: u64) -> Result<(), StoreError> {
        self.write(|store| store.set_id_base(base))
    }

    /// A setting kept in the store beside the entries (the replication log position).
    pub fn meta(&self, key: &str) -> Option<String> {
        self.store().ok()?.meta(key).ok()?
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.write(|store| store.set_meta(key, value))
    }
}
