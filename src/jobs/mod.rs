//! Work that can wait: `POST /v1/async/{chat/completions,responses,completions,embeddings}`
//! queues the synchronous call as a job, kept in its own sled store (or in Redis, shared by
//! replicas, with `[redis]`), and answers `202`; `GET /v1/async/jobs/{id}` polls it,
//! `DELETE` cancels it while it is queued.
//!
//! Workers replay a job's request through deja's own listener, so a job takes exactly the
//! synchronous path (authentication, limits, cache lookup, coalescing, storing). Delivery is
//! at least once: a job that was running when deja stopped runs again when it starts (with
//! Redis: when another replica takes it over).
//!
//! - `api`: the HTTP calls; `record`: one job as kept; `store`: the seam to the backend
//!   (`JobStore`), `local` (sled, one replica) and `redis_store` (a Redis stream and
//!   consumer group, shared by replicas); `worker`: the workers and the queue's pause;
//!   `webhook`: signing and the allow-list; `deliver`: webhook delivery with retries;
//!   `metrics`: depth, wait, run time and outcomes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::app::App;
use crate::config::Config;

pub mod api;
mod deliver;
mod local;
pub mod metrics;
mod record;
mod redis_store;
mod store;
mod webhook;
mod worker;

pub use crate::config::JobsConfig;
pub use metrics::JobMetrics;
use record::{Job, Status};
use store::{Change, JobStore, Retention, StoreError, Ticket};

/// The queue: its store (sled, or Redis shared by replicas), and this replica's pause.
pub struct Jobs {
    store: Box<dyn JobStore>,
    /// Wakes an idle worker: a job was submitted or put back here.
    wake: Notify,
    /// No job starts before this (ms of `since`): the upstream asked the queue to wait.
    paused_until_ms: AtomicU64,
    /// A monotonic origin for pauses (the app clock may be a test's manual one).
    since: std::time::Instant,
    /// Whether the last store call failed (logged once per outage, not per call).
    store_down: AtomicBool,
    /// The queue's series, registered in `/metrics` at start-up.
    pub metrics: JobMetrics,
}

impl Jobs {
    /// Opens the store: with `[redis]`, the queue shared by replicas; otherwise the sled
    /// store named by `[jobs]` (default `<cache.dir>/jobs`).
    pub fn open(config: &Config, metrics: JobMetrics) -> Result<Jobs, StoreError> {
        if let Some(redis) = &config.redis {
            let store = redis_store::RedisJobs::new(redis, &config.jobs)?;
            return Ok(Jobs::with_store(Box::new(store), metrics));
        }
        let dir = config
            .jobs
            .dir
            .clone()
            .unwrap_or_else(|| config.cache.dir.join("jobs"));
        Ok(Jobs::with_store(
            Box::new(local::SledJobs::open(&dir)?),
            metrics,
        ))
    }

    fn with_store(store: Box<dyn JobStore>, metrics: JobMetrics) -> Jobs {
        Jobs {
            store,
            wake: Notify::new(),
            paused_until_ms: AtomicU64::new(0),
            since: std::time::Instant::now(),
            store_down: AtomicBool::new(false),
            metrics,
        }
    }

    /// Jobs waiting to run.
    pub fn depth(&self) -> usize {
        self.store.depth()
    }

    fn note_depth(&self) {
        self.metrics.depth.set(self.store.depth() as i64);
    }

    async fn update(
        &self,
        id: &str,
        change: Change<'_>,
    ) -> Result<Option<(Job, bool)>, StoreError> {
        self.store.update(id, change).await
    }

    /// Notes how a store call went; an outage is logged when it starts and when it ends.
    fn store_health<T>(&self, result: &Result<T, StoreError>) {
        match result {
            Ok(_) => {
                if self.store_down.swap(false, Ordering::Relaxed) {
                    tracing::info!("job store reachable again");
                }
            }
            Err(err) => {
                if !self.store_down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %err, "job store unavailable; jobs wait until it is back");
                }
            }
        }
    }

    /// Marks the ticket's job running; `None` (the ticket settled) when it is not to run:
    /// cancelled, finished, gone, or running under another ticket.
    async fn claim(self: &Arc<Self>, app: &Arc<App>, ticket: Ticket) -> Option<(Job, Ticket)> {
        let now = app.now_ms();
        // A job a dead replica left running runs again (at least once).
        let taken_over = ticket.taken_over;
        let claimed = self
            .update(&ticket.id, &mut |job| {
                let runnable =
                    job.status == Status::Queued || (taken_over && job.status == Status::Running);
                if runnable {
                    job.status = Status::Running;
                    job.started_at = Some(now / 1000);
                    job.runs += 1;
                }
                runnable
            })
            .await;
        self.store_health(&claimed);
        match claimed {
            Ok(Some((job, true))) => {
                if taken_over {
                    tracing::info!(job = %job.id, runs = job.runs, "job taken over from a replica that stopped");
                }
                Some((job, ticket))
            }
            Ok(Some((job, false))) if job.status.finished() && owes_webhook(&job) => {
                // Finished by a replica that died before its webhook was delivered.
                deliver::spawn(app.clone(), self.clone(), ticket);
                None
            }
            Ok(_) => {
                let done = self.store.done(ticket).await;
                self.store_health(&done);
                None
            }
            Err(err) => {
                tracing::debug!(error = %err, "job store; job left for later");
                self.store.abandon(ticket);
                None
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
}

fn owes_webhook(job: &Job) -> bool {
    job.callback.as_ref().is_some_and(|c| !c.delivered)
}

fn retention(app: &App) -> Retention {
    Retention {
        now_secs: app.now_ms() / 1000,
        keep_secs: app.config().jobs.retention_secs,
    }
}

/// Starts the workers, housekeeping and unfinished deliveries once the listener at `addr`
/// (which workers call) is up. They stop when `stopped` turns true; the caller awaits the
/// returned tasks.
pub fn start(
    app: &Arc<App>,
    jobs: &Arc<Jobs>,
    addr: SocketAddr,
    stopped: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let jobs = jobs.clone();
    match jobs.store.recover(retention(app)) {
        Ok(owed) => {
            for ticket in owed {
                deliver::spawn(app.clone(), jobs.clone(), ticket);
            }
        }
        Err(err) => tracing::error!(error = %err, "jobs could not be recovered from the store"),
    }
    jobs.note_depth();
    let target = worker::loopback(addr);
    let mut tasks = Vec::new();
    for _ in 0..app.config().jobs.concurrency {
        let work = worker::run(app.clone(), jobs.clone(), target);
        tasks.push(tokio::spawn(until_stopped(stopped.clone(), work)));
    }
    let app = app.clone();
    tasks.push(tokio::spawn(async move {
        let every = jobs.store.housekeeping_every();
        let housekeeping = async {
            loop {
                tokio::time::sleep(every).await;
                match jobs.store.housekeeping(retention(&app)).await {
                    Ok(0) => {}
                    Ok(removed) => tracing::debug!(removed, "expired jobs removed"),
                    Err(err) => tracing::warn!(error = %err, "job housekeeping failed"),
                }
                jobs.note_depth();
            }
        };
        until_stopped(stopped, housekeeping).await;
        if let Err(err) = jobs.store.hand_back().await {
            tracing::warn!(error = %err, "jobs held here stay until another replica takes them over");
        }
    }));
    tasks
}

/// Runs `work` until the server stops. A job cut short is still marked running in the store,
/// so the next start (or, with Redis, another replica) runs it again (at least once), and
/// nothing here keeps the app (and its store) alive after shutdown.
async fn until_stopped(mut stopped: watch::Receiver<bool>, work: impl Future<Output = ()>) {
    tokio::select! {
        () = work => {}
        _ = stopped.wait_for(|stop| *stop) => {}
    }
}
