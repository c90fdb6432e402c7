//! The queue of one replica: records in their own sled database, the order of queued jobs
//! in memory (rebuilt from the records at start, by submission order).

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use parking_lot::Mutex;

use super::record::{Job, Status};
use super::store::{Change, JobStore, Place, Retention, StoreError, Stored, Ticket};

pub struct SledJobs {
    db: sled::Db,
    jobs: sled::Tree,
    /// Serialises read-modify-write of records (a cancel racing a worker's claim).
    lock: Mutex<()>,
    /// Ids of queued jobs, oldest first.
    ready: Mutex<VecDeque<String>>,
}

impl SledJobs {
    pub fn open(dir: &Path) -> Result<SledJobs, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
        let jobs = db.open_tree("jobs")?;
        Ok(SledJobs {
            db,
            jobs,
            lock: Mutex::new(()),
            ready: Mutex::new(VecDeque::new()),
        })
    }

    fn save(&self, job: &Job) -> Result<(), StoreError> {
        self.jobs
            .insert(job.id.as_bytes(), serde_json::to_vec(job)?)?;
        Ok(())
    }

    fn load_now(&self, id: &str) -> Result<Option<Job>, StoreError> {
        match self.jobs.get(id.as_bytes())? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    // Record reads and writes below run inline: sled serves them from memory (its log is
    // flushed in the background); only the submission's flush blocks, off the async workers.
    fn update_now(&self, id: &str, change: Change<'_>) -> Result<Option<(Job, bool)>, StoreError> {
        let _held = self.lock.lock();
        let Some(mut job) = self.load_now(id)? else {
            return Ok(None);
        };
        let changed = change(&mut job);
        if changed {
            self.save(&job)?;
        }
        Ok(Some((job, changed)))
    }
}

/// Every job, in no particular order (recovery and expiry).
fn scan(jobs: &sled::Tree) -> Result<Vec<Job>, StoreError> {
    let mut all = Vec::new();
    for item in jobs.iter() {
        let (_, bytes) = item?;
        match serde_json::from_slice(&bytes) {
            Ok(job) => all.push(job),
            Err(err) => tracing::warn!(error = %err, "unreadable job record skipped"),
        }
    }
    Ok(all)
}

impl JobStore for SledJobs {
    fn submit(&self, mut job: Job) -> Stored<'_, Job> {
        let (db, jobs) = (self.db.clone(), self.jobs.clone());
        Box::pin(async move {
            let job = tokio::task::spawn_blocking(move || {
                job.seq = db.generate_id()?;
                jobs.insert(job.id.as_bytes(), serde_json::to_vec(&job)?)?;
                // Accepted means kept: on disk before the 202.
                db.flush()?;
                Ok::<_, StoreError>(job)
            })
            .await
            .map_err(|_| StoreError::Blocking)??;
            self.ready.lock().push_back(job.id.clone());
            Ok(job)
        })
    }

    fn load<'a>(&'a self, id: &'a str) -> Stored<'a, Option<Job>> {
        Box::pin(std::future::ready(self.load_now(id)))
    }

    fn update<'a>(&'a self, id: &'a str, change: Change<'a>) -> Stored<'a, Option<(Job, bool)>> {
        Box::pin(std::future::ready(self.update_now(id, change)))
    }

    fn next(&self) -> Stored<'_, Option<Ticket>> {
        let id = self.ready.lock().pop_front();
        Box::pin(std::future::ready(Ok(id.map(Ticket::local))))
    }

    fn done(&self, _ticket: Ticket) -> Stored<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn requeue(&self, ticket: Ticket, place: Place) -> Stored<'_, ()> {
        let mut ready = self.ready.lock();
        match place {
            Place::Front => ready.push_front(ticket.id),
            Place::Back => ready.push_back(ticket.id),
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn abandon(&self, _ticket: Ticket) {}

    fn depth(&self) -> usize {
        self.ready.lock().len()
    }

    fn recover(&self, retention: Retention) -> Result<Vec<Ticket>, StoreError> {
        let mut waiting: Vec<Job> = Vec::new();
        let mut owed = Vec::new();
        for job in scan(&self.jobs)? {
            match job.status {
                Status::Queued | Status::Running => waiting.push(job),
                _ if retention.expired(&job) => {
                    self.jobs.remove(job.id.as_bytes())?;
                }
                _ => {
                    if job.callback.as_ref().is_some_and(|c| !c.delivered) {
                        owed.push(Ticket::local(job.id));
                    }
                }
            }
        }
        waiting.sort_by_key(|job| job.seq);
        let mut rerun = 0;
        for job in &mut waiting {
            if job.status == Status::Running {
                job.status = Status::Queued;
                self.save(job)?;
                rerun += 1;
            }
        }
        if !waiting.is_empty() {
            tracing::info!(
                queued = waiting.len(),
                rerun,
                "jobs recovered from the store"
            );
        }
        self.ready
            .lock()
            .extend(waiting.into_iter().map(|job| job.id));
        Ok(owed)
    }

    fn housekeeping(&self, retention: Retention) -> Stored<'_, usize> {
        let jobs = self.jobs.clone();
        Box::pin(async move {
            // A scan of every record: off the async workers.
            tokio::task::spawn_blocking(move || {
                let mut removed = 0;
                for job in scan(&jobs)? {
                    if job.status.finished() && retention.expired(&job) {
                        jobs.remove(job.id.as_bytes())?;
                        removed += 1;
                    }
                }
                Ok(removed)
            })
            .await
            .map_err(|_| StoreError::Blocking)?
        })
    }

    fn housekeeping_every(&self) -> Duration {
        Duration::from_secs(60)
    }
}
