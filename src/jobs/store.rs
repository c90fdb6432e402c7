//! Where jobs are kept and queued. `JobStore` is the seam between the queue's logic
//! (`super::Jobs`, the workers, the API) and its backend:
//!
//! - `SledJobs` (`local.rs`): one replica; records in their own sled database, the queue in
//!   memory, rebuilt from the records at start.
//! - `RedisJobs` (`redis_store.rs`, with `[redis]`): records in Redis, the queue a Redis
//!   stream read by a consumer group, so every replica's workers share it and a dead
//!   replica's jobs are taken over by another.
//!
//! A worker takes a `Ticket` (`next`), marks the job running (`update`), and gives the ticket
//! back with `done` (finished, and its webhook delivered) or `requeue` (to run later).

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::record::Job;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job store: {0}")]
    Sled(#[from] sled::Error),
    #[error("job record: {0}")]
    Record(#[from] serde_json::Error),
    #[error("job store: redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("job store: redis did not answer within the timeout")]
    Timeout,
    #[error("job store: record {0} kept changing under this update")]
    Contended(String),
    #[error("job store: a blocking task failed")]
    Blocking,
}

/// What a store call gives back, later.
pub type Stored<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// A change to one job record. It may be called more than once (a replica changing the
/// same record meanwhile makes the store read and apply it again), so it must look at the
/// job it is given, not at what an earlier call saw. Returns whether it changed anything.
pub type Change<'a> = &'a mut (dyn FnMut(&mut Job) -> bool + Send);

/// A queued job handed to this replica: held by it until `done` or `requeue`.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub id: String,
    /// Taken over from a replica that stopped holding it (it died, or stalled longer than
    /// `jobs.claim_idle_ms`): a job it left running runs again.
    pub taken_over: bool,
    /// The stream entry that queued it (Redis).
    pub entry: Option<String>,
}

impl Ticket {
    /// A ticket with no stream entry (the local queue).
    pub fn local(id: String) -> Ticket {
        Ticket {
            id,
            taken_over: false,
            entry: None,
        }
    }
}

/// Where a job goes back in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Ahead of the others (a pause must not reorder jobs; best effort across replicas).
    Front,
    Back,
}

/// How long finished jobs are kept, and the time now (the app's clock), in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub now_secs: u64,
    pub keep_secs: u64,
}

impl Retention {
    pub fn expired(&self, job: &Job) -> bool {
        job.finished_at
            .is_some_and(|at| at.saturating_add(self.keep_secs) <= self.now_secs)
    }
}

pub trait JobStore: Send + Sync {
    /// Keeps a new job and queues it; kept (on disk, or acknowledged by Redis) on return.
    fn submit(&self, job: Job) -> Stored<'_, Job>;
    fn load<'a>(&'a self, id: &'a str) -> Stored<'a, Option<Job>>;
    /// Applies `change` to job `id`, atomically against every other writer (other replicas
    /// included). The job after the change and whether it changed; `None` if there is none.
    fn update<'a>(&'a self, id: &'a str, change: Change<'a>) -> Stored<'a, Option<(Job, bool)>>;
    /// The next queued job's ticket, without waiting; `None` when there is none.
    fn next(&self) -> Stored<'_, Option<Ticket>>;
    /// This replica is finished with the ticket (the job finished or is gone).
    fn done(&self, ticket: Ticket) -> Stored<'_, ()>;
    /// The job (already marked queued) goes back to the queue.
    fn requeue(&self, ticket: Ticket, place: Place) -> Stored<'_, ()>;
    /// Stops holding the ticket without settling it (the store failed mid-way): another
    /// replica takes it over after `jobs.claim_idle_ms` (the local queue: the next start).
    fn abandon(&self, ticket: Ticket);
    /// Jobs waiting to run, as far as this replica knows.
    fn depth(&self) -> usize;
    /// At start: puts back what a stop left unfinished, drops finished jobs past their
    /// retention, and returns the tickets of finished jobs whose webhook is still owed.
    fn recover(&self, retention: Retention) -> Result<Vec<Ticket>, StoreError>;
    /// Runs every `housekeeping_every`: drops expired jobs, renews held tickets. Returns the
    /// number of jobs removed.
    fn housekeeping(&self, retention: Retention) -> Stored<'_, usize>;
    fn housekeeping_every(&self) -> Duration;
    /// At a graceful stop: what this replica holds goes to others at once rather than after
    /// `jobs.claim_idle_ms` (the local queue keeps it for the next start).
    fn hand_back(&self) -> Stored<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }
}
