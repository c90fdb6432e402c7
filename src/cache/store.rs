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
//! (a vector or an expiry key without its entry) is dropped at open or by the sweep (see
//! `insert_as`, `remove`). All methods block (disk I/O): call them off the async workers.

use std::path::Path;

use half::f16;

use super::entry::Entry;
use super::key::Hash32;

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
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(200))
            .open()?;
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
        let dropped = store.drop_dangling_vectors()?;
        if dropped > 0 {
            tracing::info!(
                vectors = dropped,
                "dropped vectors of entries a crash cut short"
            );
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

    /// Drops the vectors (and scoped keys) of entries that are not there: left by a store or
    /// a removal that a crash cut short. Run at open, so the index never holds them.
    fn drop_dangling_vectors(&self) -> Result<usize, StoreError> {
        let mut dropped = 0;
        for key in self.scoped.iter().keys() {
            let key = key?;
            let Some(id) = key.get(32..).map(decode_id) else {
                continue;
            };
            if !self.entries.contains_key(id.to_be_bytes())? {
                self.scoped.remove(&key)?;
                self.vectors.remove(id.to_be_bytes())?;
                dropped += 1;
            }
        }
        Ok(dropped)
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

/// The stored size of a vector of `dim` components (scope ‖ f16s).
pub fn vector_bytes(dim: usize) -> u64 {
    32 + 2 * dim as u64
}

fn encode_vector(scope: &[u8; 32], vector: &[f32]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(vector_bytes(vector.len()) as usize);
    bytes.extend_from_slice(scope);
    for &x in vector {
        bytes.extend_from_slice(&f16::from_f32(x).to_le_bytes());
    }
    bytes
}

fn decode_vector(bytes: &[u8]) -> (Hash32, Vec<f32>) {
    let vector = components(bytes)
        .chunks_exact(2)
        .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    (vector_scope(bytes), vector)
}

/// A vector as stores before f16 kept it (scope ‖ f32 LE).
fn decode_f32_vector(bytes: &[u8]) -> (Hash32, Vec<f32>) {
    let vector = components(bytes)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (vector_scope(bytes), vector)
}

fn vector_scope(bytes: &[u8]) -> Hash32 {
    Hash32::from_slice(&bytes[..32.min(bytes.len())]).unwrap_or(Hash32([0; 32]))
}

fn components(bytes: &[u8]) -> &[u8] {
    bytes.get(32..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
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
}
