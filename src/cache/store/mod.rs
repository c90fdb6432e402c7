//! Durable storage of entries in sled.
//!
//! Trees: `entries` (id → entry), `exact` (exact key → id), `vectors_f16` (id → scope ‖ f16
//! LE vector: half the bytes of f32, and the index re-scores unit vectors from it within 5e-4
//! of their f32 cosine), `scoped` (scope ‖ id → (), which ids each scope has, so start-up
//! learns them without reading every vector), `expiry` (expires_ms ‖ id → ()), `meta`
//! (settings the data depends on). Ids are big-endian u64 so trees iterate in order, and the
//! same id is the vector index's point id.
//! A new id is the store's `id_base` (high bits naming this replica among others, 0 when
//! alone) plus sled's counter; an entry applied from another replica keeps its own id.
//! Writes are plain sled writes in an order that keeps every intermediate state readable: the
//! exact key is written last and removed first, so it never points at nothing, and an
//! entry's vector is there before the entry and goes after it; what a crash leaves between
//! (a vector or an expiry key without its entry, an entry without its exact key) is dropped
//! at open or by the sweep (see `insert_as`, `remove`, `settle_interrupted_writes`).
//! All methods block (disk I/O): call them off the async workers.

use std::path::Path;

use super::entry::Entry;
use super::key::Hash32;

mod vector_codec;

pub use vector_codec::vector_bytes;
use vector_codec::{decode_f32_vector, decode_vector, encode_vector};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cache store: {0}")]
    Sled(#[from] sled::Error),
    /// Writes are off after a write failure (see `cache::health`); not itself a new failure.
    #[error("cache store: writes are off after a disk error")]
    WritesOff,
    /// The store is being reopened, or could not be reopened after a disk error.
    #[error("cache store: unavailable")]
    Unavailable,
    /// The answer alone is larger than `cache.max_bytes`; storing it would evict everything.
    #[error("cache store: answer larger than cache.max_bytes; not cached")]
    Oversized,
}

/// A stored vector, as read back at start-up to rebuild the index.
pub struct StoredVector {
    pub id: u64,
    pub scope: Hash32,
    pub vector: Vec<f32>,
}

/// What an insert displaced: the older entry under the same exact key.
pub struct Replaced {
    pub id: u64,
    pub scope: Hash32,
}

/// Bits of an id below the replica's base: the local counter (2^40 stores per replica).
pub const LOCAL_ID_BITS: u32 = 40;
/// Where `id_base` is kept in `meta`.
const ID_BASE_META: &str = "id_base";
/// How long an open waits for a store dropped just before to let go of its file lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens sled at `dir`. sled's background threads hold the file lock for a moment after
/// the last handle of a database is dropped, so a reopen right after a drop (a probe after
/// a disk error, a restart in one process) would fail for nothing: it waits up to
/// `LOCK_WAIT` for the lock instead. Another process holding it still fails the open.
fn open_db(dir: &Path) -> Result<sled::Db, sled::Error> {
    let started = std::time::Instant::now();
    loop {
        match sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(200))
            .open()
        {
            // sled reports it only in the message of an `Other` I/O error.
            Err(sled::Error::Io(err))
                if err.to_string().contains("could not acquire lock")
                    && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}
/// The vectors' tree, and the one stores before f16 kept f32 vectors in (converted at open).
const VECTORS_TREE: &str = "vectors_f16";
const F32_VECTORS_TREE: &str = "vectors";

pub struct Store {
    db: sled::Db,
    /// High bits of every id this store makes (kept in `meta`).
    id_base: std::sync::atomic::AtomicU64,
    entries: sled::Tree,
    exact: sled::Tree,
    vectors: sled::Tree,
    scoped: sled::Tree,
    expiry: sled::Tree,
    meta: sled::Tree,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = open_db(dir)?;
        let meta = db.open_tree("meta")?;
        let id_base = meta
            .get(ID_BASE_META)?
            .and_then(|v| String::from_utf8_lossy(&v).parse().ok())
            .unwrap_or(0);
        let store = Store {
            id_base: id_base.into(),
            entries: db.open_tree("entries")?,
            exact: db.open_tree("exact")?,
            vectors: db.open_tree(VECTORS_TREE)?,
            scoped: db.open_tree("scoped")?,
            expiry: db.open_tree("expiry")?,
            meta,
            db,
        };
        store.convert_f32_vectors()?;
        // Stores written before `scoped` existed: fill it once.
        if store.scoped.is_empty() && !store.vectors.is_empty() {
            for stored in store.vectors() {
                let stored = stored?;
                store
                    .scoped
                    .insert(scoped_key(stored.scope.as_bytes(), stored.id), &[])?;
            }
        }
        let (vectors, entries) = store.settle_interrupted_writes()?;
        if vectors + entries > 0 {
            tracing::info!(vectors, entries, "dropped what a crash cut short");
        }
        Ok(store)
    }

    /// Stores written before f16 vectors: their f32 vectors are copied over as f16, then the
    /// old tree is dropped. Interrupted, it starts again at the next open (the copy overwrites).
    fn convert_f32_vectors(&self) -> Result<(), StoreError> {
        if !self
            .db
            .tree_names()
            .iter()
            .any(|name| name == F32_VECTORS_TREE.as_bytes())
        {
            return Ok(());
        }
        let old = self.db.open_tree(F32_VECTORS_TREE)?;
        let mut converted = 0usize;
        let mut batch = sled::Batch::default();
        for item in old.iter() {
            let (key, value) = item?;
            let (scope, vector) = decode_f32_vector(&value);
            batch.insert(key, encode_vector(scope.as_bytes(), &vector));
            converted += 1;
            if converted.is_multiple_of(1024) {
                self.vectors.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        self.vectors.apply_batch(batch)?;
        // The copies are on disk before the originals go.
        self.db.flush()?;
        self.db.drop_tree(F32_VECTORS_TREE)?;
        if converted > 0 {
            tracing::info!(
                vectors = converted,
                "stored vectors converted from f32 to f16"
            );
        }
        Ok(())
    }

    /// Stores `entry` (and its vector), replacing any entry with the same exact key.
    pub fn insert(
        &self,
        entry: &Entry,
        vector: Option<&[f32]>,
    ) -> Result<(u64, Option<Replaced>), StoreError> {
        self.insert_as(entry, vector, None)
    }

    /// `insert`, under `id` when given and not held by another exact key (an entry from
    /// another replica keeps its id; one that clashes gets a new one here).
    ///
    /// No transaction: a sled transaction seals and writes the log's buffer on its own,
    /// which cost 2.5 times the plain writes' CPU. Instead the writes are ordered so that
    /// every state between them (and every prefix a crash leaves, sled recovering its log in
    /// order) is one the readers handle: the vector and the expiry key come before the entry
    /// (one without the entry is dropped at open, or by the sweep), and the exact key, written
    /// last, publishes it. Swapping the exact key returns the entry it displaced, which is
    /// then removed like any other.
    pub fn insert_as(
        &self,
        entry: &Entry,
        vector: Option<&[f32]>,
        id: Option<u64>,
    ) -> Result<(u64, Option<Replaced>), StoreError> {
        let id = match id {
            Some(id) if self.free_for(id, &entry.exact)? => id,
            _ => self.new_id()?,
        };
        let key = id.to_be_bytes();
        if let Some(vector) = vector {
            self.vectors
                .insert(key, encode_vector(&entry.scope, vector))?;
            self.scoped.insert(scoped_key(&entry.scope, id), &[])?;
        }
        self.expiry.insert(expiry_key(entry.expires_ms, id), &[])?;
        let prior = self.entries.insert(key, entry.encode())?;
        let displaced = self.exact.insert(entry.exact, &key)?.map(|v| decode_id(&v));
        // The same id held an older entry under this exact key (an entry applied again from
        // another replica): drop what of it the new one did not overwrite.
        let mut replaced = None;
        if let Some(prior) = prior.as_deref().and_then(Entry::decode) {
            if prior.expires_ms != entry.expires_ms {
                self.expiry.remove(expiry_key(prior.expires_ms, id))?;
            }
            if prior.scope != entry.scope || vector.is_none() {
                self.scoped.remove(scoped_key(&prior.scope, id))?;
            }
            if vector.is_none() {
                self.vectors.remove(key)?;
            }
            replaced = Some(Replaced {
                id,
                scope: prior.scope(),
            });
        }
        if let Some(old) = displaced.filter(|old| *old != id)
            && let Some(old_entry) = self.remove(old)?
        {
            replaced = Some(Replaced {
                id: old,
                scope: old_entry.scope(),
            });
        }
        Ok((id, replaced))
    }

    pub fn get(&self, id: u64) -> Result<Option<Entry>, StoreError> {
        Ok(self
            .entries
            .get(id.to_be_bytes())?
            .and_then(|bytes| Entry::decode(&bytes)))
    }

    /// The high bits of new ids, and setting them (kept for the next start).
    pub fn id_base(&self) -> u64 {
        self.id_base.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_id_base(&self, base: u64) -> Result<(), StoreError> {
        self.meta
            .insert(ID_BASE_META, base.to_string().as_bytes())?;
        self.id_base
            .store(base, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn new_id(&self) -> Result<u64, StoreError> {
        let counter = self.db.generate_id()? & ((1 << LOCAL_ID_BITS) - 1);
        Ok(self.id_base() | counter)
    }

    /// Whether `id` is unused, or used by the entry under `exact` (which it replaces).
    fn free_for(&self, id: u64, exact: &[u8; 32]) -> Result<bool, StoreError> {
        Ok(match self.entries.get(id.to_be_bytes())? {
            None => true,
            Some(held) => Entry::decode(&held).is_some_and(|held| held.exact == *exact),
        })
    }

    /// Whether entry `id` exists (a read error counts as no).
    pub fn contains(&self, id: u64) -> bool {
        self.entries.contains_key(id.to_be_bytes()).unwrap_or(false)
    }

    /// The entry stored under an exact key, with its id.
    pub fn get_exact(&self, exact: &Hash32) -> Result<Option<(u64, Entry)>, StoreError> {
        let Some(id) = self.exact.get(exact.as_bytes())? else {
            return Ok(None);
        };
        let id = decode_id(&id);
        Ok(self.get(id)?.map(|entry| (id, entry)))
    }

    /// Deletes an entry from every tree; returns it if it existed. The exact key goes first
    /// (no key is left pointing at nothing), then the entry itself, which is the claim: of
    /// two removals of one id only one gets it back. What a removal cut short leaves behind
    /// (an expiry key, a vector) is dropped by the sweep (`expired`) and at open.
    pub fn remove(&self, id: u64) -> Result<Option<Entry>, StoreError> {
        let key = id.to_be_bytes();
        let Some(bytes) = self.entries.get(key)? else {
            return Ok(None);
        };
        let Some(entry) = Entry::decode(&bytes) else {
            // Unreadable: its vector goes with it; its expiry key goes at the next sweep.
            self.entries.remove(key)?;
            self.vectors.remove(key)?;
            return Ok(None);
        };
        // Only if it still points here: a newer entry may hold the key already.
        let _ = self
            .exact
            .compare_and_swap(entry.exact, Some(&key), None::<&[u8]>)?;
        if self.entries.remove(key)?.is_none() {
            return Ok(None);
        }
        self.expiry.remove(expiry_key(entry.expires_ms, id))?;
        self.vectors.remove(key)?;
        self.scoped.remove(scoped_key(&entry.scope, id))?;
        Ok(Some(entry))
    }

    /// Settles what a crash cut short, for every entry the index would load: a vector whose
    /// entry is not there is dropped (a store or a removal interrupted), and so is an entry
    /// its exact key does not point at. That one is either a store cut off before its exact
    /// key or a removal cut off after it; the two look alike, and republishing it could bring
    /// back an entry an operator deleted, so it goes: its request is a miss again, instead
    /// of an entry only a paraphrase could reach. (Entries without a vector cannot be reached
    /// at all; the sweep removes them when they expire.) Run at open, so the index never
    /// holds them. Returns the vectors and the entries dropped.
    fn settle_interrupted_writes(&self) -> Result<(usize, usize), StoreError> {
        let (mut vectors, mut entries) = (0, 0);
        for key in self.scoped.iter().keys() {
            let key = key?;
            let Some(id) = key.get(32..).map(decode_id) else {
                continue;
            };
            let Some(bytes) = self.entries.get(id.to_be_bytes())? else {
                self.scoped.remove(&key)?;
                self.vectors.remove(id.to_be_bytes())?;
                vectors += 1;
                continue;
            };
            let published = match Entry::exact_key(&bytes) {
                Some(exact) => self
                    .exact
                    .get(exact)?
                    .is_some_and(|held| decode_id(&held) == id),
                None => false, // unreadable: `remove` takes it out
            };
            if !published {
                self.remove(id)?;
                self.scoped.remove(&key)?; // `remove` leaves it when the entry was unreadable
                entries += 1;
            }
        }
        Ok((vectors, entries))
    }

    /// Ids of up to `limit` entries that expire at or before `now_ms`, oldest first. An
    /// expiry key whose entry is gone (a removal cut short by a crash) is deleted here.
    pub fn expired(&self, now_ms: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
        let end = expiry_key(now_ms, u64::MAX);
        let mut ids = Vec::new();
        for key in self.expiry.range(..=end.as_slice()).keys() {
            let key = key?;
            let id = decode_id(&key[8..]);
            if !self.entries.contains_key(id.to_be_bytes())? {
                self.expiry.remove(&key)?;
                continue;
            }
            ids.push(id);
            if ids.len() == limit {
                break;
            }
        }
        Ok(ids)
    }

    /// Every entry with its id, in id order (for administration; not on a request path).
    pub fn scan(&self) -> impl Iterator<Item = Result<(u64, Entry), StoreError>> + '_ {
        self.entries.iter().filter_map(|item| match item {
            Ok((key, value)) => Entry::decode(&value).map(|entry| Ok((decode_id(&key), entry))),
            Err(err) => Some(Err(err.into())),
        })
    }

    /// Every stored vector (to rebuild the index at start-up).
    pub fn vectors(&self) -> impl Iterator<Item = Result<StoredVector, StoreError>> + '_ {
        self.vectors.iter().map(|item| {
            let (key, value) = item?;
            let (scope, vector) = decode_vector(&value);
            Ok(StoredVector {
                id: decode_id(&key),
                scope,
                vector,
            })
        })
    }

    /// Every scope that has vectors, with the ids of its vectors, one scope at a time.
    pub fn scoped_ids(&self) -> impl Iterator<Item = Result<(Hash32, Vec<u64>), StoreError>> + '_ {
        let mut keys = self.scoped.iter().keys().peekable();
        std::iter::from_fn(move || {
            let first = match keys.next()? {
                Ok(key) => key,
                Err(err) => return Some(Err(err.into())),
            };
            let scope = Hash32::from_slice(&first[..32.min(first.len())])?;
            let mut ids = vec![decode_id(&first[32..])];
            while let Some(Ok(key)) = keys.peek() {
                if key.get(..32) != Some(scope.as_bytes().as_slice()) {
                    break;
                }
                ids.push(decode_id(&key[32..]));
                keys.next();
            }
            Some(Ok((scope, ids)))
        })
    }

    /// Every entry's id and stored size in bytes, in id order.
    pub fn entry_sizes(&self) -> impl Iterator<Item = Result<(u64, u64), StoreError>> + '_ {
        self.entries.iter().map(|item| {
            let (key, value) = item?;
            Ok((decode_id(&key), value.len() as u64))
        })
    }

    /// The stored size of `id`'s vector.
    pub fn vector_len(&self, id: u64) -> Option<u64> {
        Some(self.vectors.get(id.to_be_bytes()).ok()??.len() as u64)
    }

    /// One stored vector, for exact re-scoring in the index.
    pub fn vector(&self, id: u64) -> Option<Vec<f32>> {
        let bytes = self.vectors.get(id.to_be_bytes()).ok()??;
        Some(decode_vector(&bytes).1)
    }

    /// Drops every vector (the embedding model changed), keeping the entries' exact tier.
    pub fn clear_vectors(&self) -> Result<(), StoreError> {
        self.scoped.clear()?;
        Ok(self.vectors.clear()?)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .meta
            .get(key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.meta.insert(key, value.as_bytes())?;
        Ok(())
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

fn decode_id(bytes: &[u8]) -> u64 {
    let mut id = [0u8; 8];
    let n = bytes.len().min(8);
    id[..n].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(id)
}

fn scoped_key(scope: &[u8; 32], id: u64) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..32].copy_from_slice(scope);
    key[32..].copy_from_slice(&id.to_be_bytes());
    key
}

fn expiry_key(expires_ms: u64, id: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&expires_ms.to_be_bytes());
    key[8..].copy_from_slice(&id.to_be_bytes());
    key
}

#[cfg(test)]
mod tests;
