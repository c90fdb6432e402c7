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
//!   kept; `charge`: the lines sent against the caller's managed key; `metrics`: lines
//!   answered, repeated and sent.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::Config;

pub mod api;
mod charge;
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
    /// One refresh at a time, so a finished upstream batch is merged (and stored) once.
    refreshing: tokio::sync::Mutex<()>,
    /// Managed keys' reservations for batches not yet merged, by batch id.
    charges: parking_lot::Mutex<std::collections::HashMap<String, charge::Charge>>,
}

impl Batches {
    pub fn open(config: &Config) -> Result<Batches, StoreError> {
        Batches::open_at(&config.cache.dir.join("batches"))
    }

    fn open_at(dir: &Path) -> Result<Batches, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
        Ok(Batches {
            batches: db.open_tree("batches")?,
            files: db.open_tree("files")?,
            contents: db.open_tree("contents")?,
            db,
            refreshing: tokio::sync::Mutex::new(()),
            charges: Default::default(),
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

    fn load(&self, id: &str) -> Result<Option<Batch>, StoreError> {
        match self.batches.get(id.as_bytes())? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The tenant's batches, newest first.
    fn of_tenant(&self, tenant: &str) -> Result<Vec<Batch>, StoreError> {
        let mut found = Vec::new();
        for item in self.batches.iter() {
            let (_, bytes) = item?;
            match serde_json::from_slice::<Batch>(&bytes) {
                Ok(batch) if batch.tenant == tenant => found.push(batch),
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
        now_secs: u64,
    ) -> Result<Value, StoreError> {
        let id = format!("{FILE_PREFIX}{:032x}", fastrand::u128(..));
        let object = json!({
            "id": id,
            "object": "file",
            "bytes": content.len(),
            "created_at": now_secs,
            "filename": filename,
            "purpose": "batch_output",
            "status": "processed",
            "status_details": null,
            "expires_at": null,
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

    /// The File object of the tenant's file `id`.
    fn file(&self, tenant: &str, id: &str) -> Result<Option<Value>, StoreError> {
        let Some(bytes) = self.files.get(id.as_bytes())? else {
            return Ok(None);
        };
        let record: FileRecord = serde_json::from_slice(&bytes)?;
        Ok((record.tenant == tenant).then_some(record.object))
    }

    fn content(&self, tenant: &str, id: &str) -> Result<Option<Bytes>, StoreError> {
        if self.file(tenant, id)?.is_none() {
            return Ok(None);
        }
        Ok(self
            .contents
            .get(id.as_bytes())?
            .map(|bytes| Bytes::copy_from_slice(&bytes)))
    }

    /// Deletes the tenant's file `id`; false if there is none.
    fn delete_file(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        if self.file(tenant, id)?.is_none() {
            return Ok(false);
        }
        self.files.remove(id.as_bytes())?;
        self.contents.remove(id.as_bytes())?;
        Ok(true)
    }
}
