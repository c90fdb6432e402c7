//! The OpenAI Batch API through deja, answered from the cache first. `POST /v1/batches`
//! reads the caller's input file from the upstream, answers the lines the cache holds, sends
//! each distinct remaining request once in an upstream batch, and keeps a batch of its own
//! (`batch_deja_…`) that maps to it. Polling merges the upstream's output back into the
//! input's order, stores the new answers in the cache, and serves the merged files as
//! deja-owned files (`file-deja-…`).
//!
//! - `api`: which calls deja answers, and the HTTP surface; `run`: create, refresh, cancel;
//!   `lines`: planning and looking up each input line; `merge`: the output files and the
//!   cache writes; `upstream`: the Files/Batches calls deja makes; `record`: one batch as
//!   kept; `charge`: the lines sent against the caller's managed key; `files`: the files
//!   list with deja's files in it; `metrics`: lines answered, repeated and sent.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::Config;

pub mod api;
mod charge;
mod files;
mod lines;
mod merge;
pub mod metrics;
mod record;
mod run;
mod upstream;

pub use metrics::BatchMetrics;
use record::Batch;

/// Prefix of the batch ids deja gives out.
pub const BATCH_PREFIX: &str = "batch_deja_";
/// Prefix of the ids of the files deja serves itself (merged output and error files).
pub const FILE_PREFIX: &str = "file-deja-";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("batch store: {0}")]
    Sled(#[from] sled::Error),
    #[error("batch record: {0}")]
    Record(#[from] serde_json::Error),
    #[error("batch store task failed")]
    Task,
}

/// A file deja made, and whose it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FileRecord {
    tenant: String,
    /// OpenAI's File object.
    object: Value,
}

/// Batches and their merged files, in their own sled database (`<cache.dir>/batches`).
pub struct Batches {
    db: sled::Db,
    batches: sled::Tree,
    files: sled::Tree,
    contents: sled::Tree,
    /// One refresh at a time per batch, so a finished upstream batch is merged (and stored)
    /// once, while polls of different batches go on side by side.
    refreshing: parking_lot::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Managed keys' reservations for batches not yet merged, by batch id.
    charges: parking_lot::Mutex<std::collections::HashMap<String, charge::Charge>>,
    /// The Batch API's series, registered in `/metrics` at start-up.
    pub metrics: BatchMetrics,
}

impl Batches {
    pub fn open(config: &Config, metrics: BatchMetrics) -> Result<Batches, StoreError> {
        Batches::open_at(&config.cache.dir.join("batches"), metrics)
    }

    fn open_at(dir: &Path, metrics: BatchMetrics) -> Result<Batches, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
        Ok(Batches {
            batches: db.open_tree("batches")?,
            files: db.open_tree("files")?,
            contents: db.open_tree("contents")?,
            db,
            refreshing: Default::default(),
            charges: Default::default(),
            metrics,
        })
    }

    /// Runs store work off the async workers.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Batches) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|_| StoreError::Task)?
    }

    /// Waits for the batch's own refresh lock; the lock is forgotten once no one holds or
    /// waits for it.
    async fn refreshing(self: &Arc<Self>, id: &str) -> Refreshing {
        let lock = self
            .refreshing
            .lock()
            .entry(id.to_string())
            .or_default()
            .clone();
        let guard = lock.clone().lock_owned().await;
        Refreshing {
            store: self.clone(),
            id: id.to_string(),
            lock,
            guard: Some(guard),
        }
    }

    fn next_seq(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    /// Saves a batch and makes it survive a crash.
    fn save(&self, batch: &Batch) -> Result<(), StoreError> {
        self.batches
            .insert(batch.id.as_bytes(), serde_json::to_vec(batch)?)?;
        self.db.flush()?;
        Ok(())
    }

    /// The batch `id`, unless it has outlived `kept`.
    fn load(&self, id: &str, kept: Kept) -> Result<Option<Batch>, StoreError> {
        match self.batches.get(id.as_bytes())? {
            Some(bytes) => {
                let batch: Batch = serde_json::from_slice(&bytes)?;
                Ok((!kept.batch_gone(&batch)).then_some(batch))
            }
            None => Ok(None),
        }
    }

    /// The tenant's batches, newest first.
    fn of_tenant(&self, tenant: &str, kept: Kept) -> Result<Vec<Batch>, StoreError> {
        let mut found = Vec::new();
        for item in self.batches.iter() {
            let (_, bytes) = item?;
            match serde_json::from_slice::<Batch>(&bytes) {
                Ok(batch) if batch.tenant == tenant && !kept.batch_gone(&batch) => {
                    found.push(batch)
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "unreadable batch record skipped"),
            }
        }
        found.sort_by_key(|batch| std::cmp::Reverse(batch.seq));
        Ok(found)
    }

    /// Keeps a file deja serves itself; its OpenAI File object.
    fn put_file(
        &self,
        tenant: &str,
        filename: &str,
        content: &[u8],
        kept: Kept,
    ) -> Result<Value, StoreError> {
        let id = format!("{FILE_PREFIX}{:032x}", fastrand::u128(..));
        let object = json!({
            "id": id,
            "object": "file",
            "bytes": content.len(),
            "created_at": kept.now_secs,
            "filename": filename,
            "purpose": "batch_output",
            "status": "processed",
            "status_details": null,
            "expires_at": kept.now_secs + kept.retention_secs,
        });
        let record = FileRecord {
            tenant: tenant.to_string(),
            object: object.clone(),
        };
        self.contents.insert(id.as_bytes(), content)?;
        self.files
            .insert(id.as_bytes(), serde_json::to_vec(&record)?)?;
        Ok(object)
    }

    /// The File object of the tenant's file `id`, unless it has expired.
    fn file(&self, tenant: &str, id: &str, kept: Kept) -> Result<Option<Value>, StoreError> {
        let Some(bytes) = self.files.get(id.as_bytes())? else {
            return Ok(None);
        };
        let record: FileRecord = serde_json::from_slice(&bytes)?;
        let mine = record.tenant == tenant && !kept.file_gone(&record.object);
        Ok(mine.then_some(record.object))
    }

    /// The tenant's files that have not expired.
    fn files_of(&self, tenant: &str, kept: Kept) -> Result<Vec<Value>, StoreError> {
        let mut found = Vec::new();
        for item in self.files.iter() {
            let (_, bytes) = item?;
            if let Ok(record) = serde_json::from_slice::<FileRecord>(&bytes)
                && record.tenant == tenant
                && !kept.file_gone(&record.object)
            {
                found.push(record.object);
            }
        }
        Ok(found)
    }

    fn content(&self, tenant: &str, id: &str, kept: Kept) -> Result<Option<Bytes>, StoreError> {
        if self.file(tenant, id, kept)?.is_none() {
            return Ok(None);
        }
        Ok(self
            .contents
            .get(id.as_bytes())?
            .map(|bytes| Bytes::copy_from_slice(&bytes)))
    }

    /// Deletes the tenant's file `id`; false if there is none.
    fn delete_file(&self, tenant: &str, id: &str, kept: Kept) -> Result<bool, StoreError> {
        if self.file(tenant, id, kept)?.is_none() {
            return Ok(false);
        }
        self.files.remove(id.as_bytes())?;
        self.contents.remove(id.as_bytes())?;
        Ok(true)
    }

    /// Removes the batches and files that have outlived `kept`; how many of each.
    fn sweep(&self, kept: Kept) -> Result<(usize, usize), StoreError> {
        let mut gone = (0, 0);
        for item in self.batches.iter() {
            let (id, bytes) = item?;
            let batch = serde_json::from_slice::<Batch>(&bytes);
            if batch.is_ok_and(|batch| kept.batch_gone(&batch)) {
                self.batches.remove(id)?;
                gone.0 += 1;
            }
        }
        for item in self.files.iter() {
            let (id, bytes) = item?;
            let record = serde_json::from_slice::<FileRecord>(&bytes);
            if record.is_ok_and(|record| kept.file_gone(&record.object)) {
                self.files.remove(&id)?;
                self.contents.remove(&id)?;
                gone.1 += 1;
            }
        }
        if gone != (0, 0) {
            self.db.flush()?;
        }
        Ok(gone)
    }

    /// The sweep the cache's sweeper runs (off the async workers): logs what it removed.
    pub fn sweep_expired(&self, app: &crate::app::App) {
        match self.sweep(Kept::now(app)) {
            Ok((0, 0)) => {}
            Ok((batches, files)) => tracing::debug!(batches, files, "expired batches swept"),
            Err(err) => tracing::warn!(error = %err, "batch sweep failed"),
        }
    }

    /// How many batches and files the store holds (expired or not).
    pub fn held(&self) -> (usize, usize) {
        (self.batches.len(), self.files.len())
    }
}

/// A batch's refresh lock, held.
struct Refreshing {
    store: Arc<Batches>,
    id: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Refreshing {
    fn drop(&mut self) {
        self.guard.take();
        let mut locks = self.store.refreshing.lock();
        // Clones are only made under `locks`: the map's and this one means no one waits.
        if Arc::strong_count(&self.lock) == 2 {
            locks.remove(&self.id);
        }
    }
}

/// Retention (`jobs.batch_retention_secs`) as of now: a batch is kept that long after it
/// ended (or, never seen to end, after its 24 h window), a merged file that long after it
/// was made. Reads treat what has outlived it as gone before the sweep removes it.
#[derive(Debug, Clone, Copy)]
pub struct Kept {
    now_secs: u64,
    retention_secs: u64,
}

impl Kept {
    pub fn now(app: &crate::app::App) -> Kept {
        Kept {
            now_secs: app.now_ms() / 1000,
            retention_secs: app.config().jobs.batch_retention_secs,
        }
    }

    fn outlived(&self, since_secs: u64) -> bool {
        since_secs.saturating_add(self.retention_secs) <= self.now_secs
    }

    fn batch_gone(&self, batch: &Batch) -> bool {
        let ended = [
            batch.completed_at,
            batch.failed_at,
            batch.expired_at,
            batch.cancelled_at,
        ]
        .into_iter()
        .flatten()
        .max();
        let since = ended.unwrap_or(batch.created_at + record::WINDOW_SECS);
        self.outlived(since)
    }

    fn file_gone(&self, object: &Value) -> bool {
        object["created_at"]
            .as_u64()
            .is_some_and(|made| self.outlived(made))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refresh_lock_is_per_batch_and_forgotten_when_free() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Batches::open_at(dir.path(), BatchMetrics::default()).unwrap());
        let a = store.refreshing("batch_a").await;
        // Another batch's lock is free while `a` is held.
        let b = store.refreshing("batch_b").await;
        assert_eq!(store.refreshing.lock().len(), 2);
        // The same batch's lock is not.
        let again = store.clone();
        let waiting = tokio::spawn(async move { again.refreshing("batch_a").await.id.clone() });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(b);
        drop(a);
        assert_eq!(waiting.await.unwrap(), "batch_a");
        assert!(store.refreshing.lock().is_empty());
    }
}
