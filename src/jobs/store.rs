//! Where jobs are kept. `JobStore` is the durable part; `SledJobs` keeps them in their own
//! sled database. A Redis backend (a stream with a consumer group, for replicas) would
//! implement the same trait.

use std::path::Path;

use super::record::Job;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job store: {0}")]
    Sled(#[from] sled::Error),
    #[error("job record: {0}")]
    Record(#[from] serde_json::Error),
}

pub trait JobStore: Send + Sync {
    /// A number larger than any given before, across restarts.
    fn next_seq(&self) -> Result<u64, StoreError>;
    fn save(&self, job: &Job) -> Result<(), StoreError>;
    fn load(&self, id: &str) -> Result<Option<Job>, StoreError>;
    fn remove(&self, id: &str) -> Result<(), StoreError>;
    /// Every job, in no particular order (recovery and expiry).
    fn scan(&self) -> Result<Vec<Job>, StoreError>;
    /// Makes everything saved so far survive a crash.
    fn flush(&self) -> Result<(), StoreError>;
}

pub struct SledJobs {
    db: sled::Db,
    jobs: sled::Tree,
}

impl SledJobs {
    pub fn open(dir: &Path) -> Result<SledJobs, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
        let jobs = db.open_tree("jobs")?;
        Ok(SledJobs { db, jobs })
    }
}

impl JobStore for SledJobs {
    fn next_seq(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    fn save(&self, job: &Job) -> Result<(), StoreError> {
        self.jobs
            .insert(job.id.as_bytes(), serde_json::to_vec(job)?)?;
        Ok(())
    }

    fn load(&self, id: &str) -> Result<Option<Job>, StoreError> {
        match self.jobs.get(id.as_bytes())? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.jobs.remove(id.as_bytes())?;
        Ok(())
    }

    fn scan(&self) -> Result<Vec<Job>, StoreError> {
        let mut all = Vec::new();
        for item in self.jobs.iter() {
            let (_, bytes) = item?;
            match serde_json::from_slice(&bytes) {
                Ok(job) => all.push(job),
                Err(err) => tracing::warn!(error = %err, "unreadable job record skipped"),
            }
        }
        Ok(all)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}
