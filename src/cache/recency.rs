//! Least-recently-used order of entries, for `cache.max_entries` / `cache.max_bytes`.
//!
//! Kept in memory only: a tick per id (a store or a hit takes the next tick) and the ids in
//! tick order. A hit only updates the id's tick (one map write, ~µs less than reordering);
//! eviction pops the oldest in the order and, when that id was hit since it was placed there,
//! moves it to its current tick and pops again, so the order is exact when it matters. It is
//! not persisted: after a restart entries are ordered by when they were stored (ids grow with
//! time), so the hits of the previous run are forgotten. That costs at worst evicting an entry
//! that was popular before the restart; persisting a tick on every hit would put a disk write
//! on the hit path.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;

use parking_lot::Mutex;

use super::Cache;
use super::entry::Entry;
use super::store::{StoreError, vector_bytes};

/// The caps; 0 means unlimited.
#[derive(Debug, Clone, Copy, Default)]
pub struct Capacity {
    pub max_entries: u64,
    pub max_bytes: u64,
}

impl Capacity {
    pub fn is_limited(&self) -> bool {
        self.max_entries > 0 || self.max_bytes > 0
    }
}

#[derive(Default)]
pub struct Recency {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    tick: u64,
    entries: HashMap<u64, Used>,
    /// tick → id, oldest first; an id sits at its `placed` tick.
    order: BTreeMap<u64, u64>,
    bytes: u64,
}

impl Recency {
    /// A new entry of `bytes` bytes, the most recently used.
    pub fn stored(&self, id: u64, bytes: u64) {
        let mut inner = self.inner.lock();
        inner.remove(id);
        inner.tick += 1;
        let tick = inner.tick;
        let used = Used {
            last: tick,
            placed: tick,
            bytes,
        };
        inner.entries.insert(id, used);
        inner.order.insert(tick, id);
        inner.bytes += bytes;
    }

    /// A hit: `id` becomes the most recently used.
    pub fn touched(&self, id: u64) {
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let tick = inner.tick;
        if let Some(used) = inner.entries.get_mut(&id) {
            used.last = tick;
        }
    }

    pub fn removed(&self, id: u64) {
        self.inner.lock().remove(id);
    }

    /// Takes the least recently used entry out of the order when over `capacity`; the caller
    /// then deletes it. Taking it here means two evicting threads never pick the same one.
    pub fn pop_over(&self, capacity: Capacity) -> Option<u64> {
        let mut inner = self.inner.lock();
        let over = (capacity.max_entries > 0 && inner.entries.len() as u64 > capacity.max_entries)
            || (capacity.max_bytes > 0 && inner.bytes > capacity.max_bytes);
        if !over {
            return None;
        }
        loop {
            let (placed, id) = inner.order.pop_first()?;
            let Some(used) = inner.entries.get_mut(&id) else {
                continue;
            };
            if used.last != placed {
                // Hit since it was placed: move it to where its last use puts it.
                used.placed = used.last;
                let last = used.last;
                inner.order.insert(last, id);
                continue;
            }
            inner.remove(id);
            return Some(id);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    pub fn bytes(&self) -> u64 {
        self.inner.lock().bytes
    }
}

struct Used {
    /// Tick of the last store or hit.
    last: u64,
    /// Tick under which `order` holds the id (older than `last` after a hit).
    placed: u64,
    bytes: u64,
}

impl Inner {
    fn remove(&mut self, id: u64) {
        if let Some(used) = self.entries.remove(&id) {
            self.order.remove(&used.placed);
            self.bytes -= used.bytes;
        }
    }
}

// === impl Cache: capacity ===

impl Cache {
    /// Orders the stored entries oldest first (by id: ids grow with time), then evicts down to
    /// the caps (they may have been lowered since the last run). `with_vectors`: ids that
    /// have a stored vector.
    pub(super) fn load_recency(&self, with_vectors: &HashSet<u64>) -> Result<(), StoreError> {
        if !self.capacity.is_limited() {
            return Ok(());
        }
        let store = self.store()?;
        let vector_size = with_vectors
            .iter()
            .next()
            .and_then(|&id| store.vector_len(id))
            .unwrap_or(0);
        for sized in store.entry_sizes() {
            let (id, size) = sized?;
            let vector = if with_vectors.contains(&id) {
                vector_size
            } else {
                0
            };
            self.recency.stored(id, size + vector);
        }
        drop(store);
        self.evict()
    }

    /// The bytes a new entry counts against the caps (`None` without caps, when nothing is
    /// counted). An entry larger than `cache.max_bytes` on its own is refused and counted:
    /// storing it would evict every other entry, then itself.
    pub(super) fn admit(
        &self,
        entry: &Entry,
        vector: Option<&[f32]>,
    ) -> Result<Option<u64>, StoreError> {
        if !self.capacity.is_limited() {
            return Ok(None);
        }
        let size = entry.encode().len() as u64 + vector.map_or(0, |v| vector_bytes(v.len()));
        if self.capacity.max_bytes > 0 && size > self.capacity.max_bytes {
            self.oversized.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Oversized);
        }
        Ok(Some(size))
    }

    /// Evicts the least recently used entries while over a cap. An entry that fits is the
    /// most recently used when it is stored, so it never evicts more than it needs.
    pub(super) fn evict(&self) -> Result<(), StoreError> {
        while let Some(id) = self.recency.pop_over(self.capacity) {
            self.remove_local(id)?; // each replica evicts by its own use order
        }
        Ok(())
    }

    /// Stored bytes counted against `cache.max_bytes` (0 when there is no cap).
    pub fn stored_bytes(&self) -> u64 {
        self.recency.bytes()
    }

    /// Answers not stored since start-up because they alone exceed `cache.max_bytes`.
    pub fn oversized_skipped(&self) -> u64 {
        self.oversized.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: Capacity = Capacity {
        max_entries: 3,
        max_bytes: 0,
    };

    #[test]
    fn evicts_least_recently_used_first() {
        let recency = Recency::default();
        for id in 1..=3 {
            recency.stored(id, 10);
        }
        assert_eq!(recency.pop_over(THREE), None);
        recency.touched(1);
        recency.stored(4, 10);
        assert_eq!(recency.pop_over(THREE), Some(2));
        assert_eq!(recency.pop_over(THREE), None);
        recency.stored(5, 10);
        assert_eq!(recency.pop_over(THREE), Some(3));
        recency.stored(6, 10);
        assert_eq!(recency.pop_over(THREE), Some(1));
        assert_eq!(recency.len(), 3);
    }

    #[test]
    fn byte_cap_counts_sizes_and_removals() {
        let cap = Capacity {
            max_entries: 0,
            max_bytes: 100,
        };
        let recency = Recency::default();
        recency.stored(1, 60);
        recency.stored(2, 30);
        assert_eq!(recency.pop_over(cap), None);
        recency.stored(3, 20);
        assert_eq!(recency.pop_over(cap), Some(1));
        assert_eq!(recency.bytes(), 50);
        recency.removed(2);
        recency.removed(2);
        recency.touched(99);
        assert_eq!(recency.bytes(), 20);
        assert_eq!(recency.len(), 1);
    }
}
