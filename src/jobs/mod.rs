//! Work that can wait: `POST /v1/async/{chat/completions,responses,completions,embeddings}`
//! queues the synchronous call as a job, kept in its own sled store, and answers `202`;
//! `GET /v1/async/jobs/{id}` polls it, `DELETE` cancels it while it is queued.
//!
//! Workers replay a job's request through deja's own listener, so a job takes exactly the
//! synchronous path (authentication, limits, cache lookup, coalescing, storing). Delivery is
//! at least once: a job that was running when deja stopped runs again when it starts.
//!
//! - `api`: the HTTP calls; `record`: one job as kept; `store`: the durable store (a trait,
//!   so a Redis backend can take its place); `worker`: the workers and the queue's pause;
//!   `webhook`: signing and the allow-list; `deliver`: webhook delivery with retries;
//!   `metrics`: depth, wait, run time and outcomes.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::app::App;
use crate::config::Config;

pub mod api;
mod deliver;
pub mod metrics;
mod record;
mod store;
mod webhook;
mod worker;

pub use crate::config::JobsConfig;
pub use metrics::JobMetrics;
use record::{Job, Status};
use store::{JobStore, SledJobs, StoreError};

/// The queue: durable records plus the order in which queued jobs run.
pub struct Jobs {
    store: Box<dyn JobStore>,
    /// Serialises read-modify-write of records (a cancel racing a worker's claim).
    lock: Mutex<()>,
    /// Ids of queued jobs, oldest first.
    ready: Mutex<VecDeque<String>>,
    wake: Notify,
    /// No job starts before this (ms of `since`): the upstream asked the queue to wait.
    paused_until_ms: AtomicU64,
    /// A monotonic origin for pauses (the app clock may be a test's manual one).
    since: std::time::Instant,
}

impl Jobs {
    /// Opens the store named by `[jobs]` (default `<cache.dir>/jobs`).
    pub fn open(config: &Config) -> Result<Jobs, StoreError> {
        let dir = config
            .jobs
            .dir
            .clone()
            .unwrap_or_else(|| config.cache.dir.join("jobs"));
        Ok(Jobs::with_store(Box::new(SledJobs::open(&dir)?)))
    }

    pub fn with_store(store: Box<dyn JobStore>) -> Jobs {
        Jobs {
            store,
            lock: Mutex::new(()),
            ready: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            paused_until_ms: AtomicU64::new(0),
            since: std::time::Instant::now(),
        }
    }

    /// Jobs waiting to run.
    pub fn depth(&self) -> usize {
        self.ready.lock().len()
    }

    fn push(&self, id: String, app: &App) {
        let depth = {
            let mut ready = self.ready.lock();
            ready.push_back(id);
            ready.len()
        };
        app.metrics.jobs.depth.set(depth as i64);
        self.wake.notify_one();
    }

    /// Applies `change` to the stored job `id`, under the lock; `None` if it is gone.
    fn update(&self, id: &str, change: impl FnOnce(&mut Job)) -> Result<Option<Job>, StoreError> {
        let _held = self.lock.lock();
        let Some(mut job) = self.store.load(id)? else {
            return Ok(None);
        };
        change(&mut job);
        self.store.save(&job)?;
        Ok(Some(job))
    }

    /// The next queued job, now marked running.
    fn claim(&self, app: &App) -> Option<Job> {
        loop {
            let id = {
                let mut ready = self.ready.lock();
                let id = ready.pop_front()?;
                app.metrics.jobs.depth.set(ready.len() as i64);
                id
            };
            let now = app.now_ms();
            let mut claimed = false;
            let updated = self.update(&id, |job| {
                if job.status == Status::Queued {
                    job.status = Status::Running;
                    job.started_at = Some(now / 1000);
                    job.runs += 1;
                    claimed = true;
                }
            });
            match updated {
                Ok(Some(job)) if claimed => return Some(job),
                Ok(_) => continue, // cancelled or expired while queued
                Err(err) => {
                    tracing::warn!(error = %err, "job store; job left queued");
                    continue;
                }
            }
        }
    }

    /// Monotonic milliseconds, for pauses.
    fn mono_ms(&self) -> u64 {
        self.since.elapsed().as_millis() as u64
    }

    /// No job starts for `wait_ms` from now (a longer pause already set stays).
    fn pause_for(&self, wait_ms: u64) {
        let until = self.mono_ms().saturating_add(wait_ms);
        self.paused_until_ms.fetch_max(until, Ordering::SeqCst);
    }

    /// Puts back what a stop left unfinished, resumes webhooks, and drops expired jobs.
    fn recover(&self, app: &Arc<App>) -> Result<(), StoreError> {
        let mut waiting: Vec<Job> = Vec::new();
        for job in self.store.scan()? {
            match job.status {
                Status::Queued | Status::Running => waiting.push(job),
                _ if self.expired(&job, app) => self.store.remove(&job.id)?,
                _ => {
                    if job.callback.as_ref().is_some_and(|c| !c.delivered) {
                        deliver::spawn(app.clone(), job.id.clone());
                    }
                }
            }
        }
        waiting.sort_by_key(|job| job.seq);
        let rerun = waiting
            .iter()
            .filter(|job| job.status == Status::Running)
            .count();
        for job in &waiting {
            if job.status == Status::Running {
                self.update(&job.id, |job| job.status = Status::Queued)?;
            }
        }
        if !waiting.is_empty() {
            tracing::info!(
                queued = waiting.len(),
                rerun,
                "jobs recovered from the store"
            );
        }
        for job in waiting {
            self.push(job.id, app);
        }
        Ok(())
    }

    fn expired(&self, job: &Job, app: &App) -> bool {
        let retention = app.config().jobs.retention_secs;
        job.finished_at
            .is_some_and(|at| at.saturating_add(retention) <= app.now_ms() / 1000)
    }

    /// Removes finished jobs older than `jobs.retention_secs`.
    fn sweep(&self, app: &App) -> Result<usize, StoreError> {
        let mut removed = 0;
        for job in self.store.scan()? {
            if job.status.finished() && self.expired(&job, app) {
                self.store.remove(&job.id)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Starts the workers, the sweeper and unfinished deliveries once the listener at `addr`
/// (which workers call) is up. They stop when `stopped` turns true; the caller awaits the
/// returned tasks.
pub fn start(
    app: &Arc<App>,
    addr: SocketAddr,
    stopped: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let Some(jobs) = app.jobs.clone() else {
        return Vec::new();
    };
    if let Err(err) = jobs.recover(app) {
        tracing::error!(error = %err, "jobs could not be recovered from the store");
    }
    let target = worker::loopback(addr);
    let mut tasks = Vec::new();
    for _ in 0..app.config().jobs.concurrency {
        let work = worker::run(app.clone(), jobs.clone(), target);
        tasks.push(tokio::spawn(until_stopped(stopped.clone(), work)));
    }
    let app = app.clone();
    tasks.push(tokio::spawn(until_stopped(stopped, async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let swept = {
                let (app, jobs) = (app.clone(), jobs.clone());
                tokio::task::spawn_blocking(move || jobs.sweep(&app)).await
            };
            match swept {
                Ok(Ok(0)) => {}
                Ok(Ok(removed)) => tracing::debug!(removed, "expired jobs removed"),
                Ok(Err(err)) => tracing::warn!(error = %err, "job sweep failed"),
                Err(_) => {}
            }
        }
    })));
    tasks
}

/// Runs `work` until the server stops. A job cut short is still marked running in the store,
/// so the next start runs it again (at least once), and nothing here keeps the app (and its
/// store) alive after shutdown.
async fn until_stopped(mut stopped: watch::Receiver<bool>, work: impl Future<Output = ()>) {
    tokio::select! {
        () = work => {}
        _ = stopped.wait_for(|stop| *stop) => {}
    }
}
