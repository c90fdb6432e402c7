//! The index worker: one background thread that runs every partition's slow work (graph
//! inserts, first builds, compaction), one step at a time, round-robin over the partitions
//! that have some.
//!
//! The worker runs at the lowest CPU priority (nice +19 on Linux; at +10 it still took
//! about 30% of the CPU in `miss_growth`): under load the index falls behind (its waiting
//! vectors are still searched exactly, the oldest past the bound are deferred) rather than
//! slowing responses; it catches up when the machine has time.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::partition::{Limits, Partition};
use super::{HnswParams, VectorSource};

/// Niceness of the worker's threads (0 is the default, 19 the lowest priority).
const WORKER_NICE: i32 = 19;

/// What every job needs.
pub(super) struct Context {
    pub limits: Limits,
    pub params: HnswParams,
    pub source: StoreVectors,
}

/// The store's vectors, held weakly: a worker thread that outlives its index for one last
/// step must not keep the store (and its file lock) open.
pub(super) struct StoreVectors(pub Weak<dyn VectorSource>);

impl VectorSource for StoreVectors {
    fn vector(&self, id: u64) -> Option<Vec<f32>> {
        self.0.upgrade()?.vector(id)
    }
}

pub(super) struct Worker {
    queue: Arc<Queue>,
}

struct Queue {
    state: Mutex<QueueState>,
    /// Signalled when work is queued, when a step ends, and on stop.
    changed: Condvar,
}

#[derive(Default)]
struct QueueState {
    waiting: VecDeque<Arc<Partition>>,
    /// A step is running.
    busy: bool,
    stopped: bool,
    /// No thread could be started: steps run on the caller's thread (the old, blocking way).
    inline: bool,
    /// Tests hold the worker to look at a partition between two steps.
    paused: bool,
}

impl Worker {
    pub fn start(context: Context) -> Worker {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
            changed: Condvar::new(),
        });
        let thread_queue = queue.clone();
        let context = Arc::new(context);
        let thread_context = context.clone();
        let started = std::thread::Builder::new()
            .name("deja-index".into())
            .spawn(move || run(&thread_queue, &thread_context));
        if let Err(err) = started {
            tracing::error!(error = %err, "no index worker thread; index work runs inline");
            queue.state.lock().inline = true;
        }
        Worker { queue }
    }

    /// Queues `partition` for a step, unless it is queued already. Without a worker thread,
    /// runs its steps here until it has none left.
    pub fn schedule(&self, partition: &Arc<Partition>, context: &Context) {
        if partition
            .queued
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let mut state = self.queue.state.lock();
        if state.inline {
            drop(state);
            partition
                .queued
                .store(false, std::sync::atomic::Ordering::Release);
            while step(partition, context) {}
            return;
        }
        state.waiting.push_back(partition.clone());
        self.queue.changed.notify_all();
    }

    /// Waits until no work is queued or running, at most `timeout`; whether it got there.
    pub fn settle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.queue.state.lock();
        while state.busy || !state.waiting.is_empty() {
            if self
                .queue
                .changed
                .wait_until(&mut state, deadline)
                .timed_out()
            {
                return !state.busy && state.waiting.is_empty();
            }
        }
        true
    }

    /// Holds (or releases) the worker before its next step.
    #[cfg(test)]
    pub fn pause(&self, paused: bool) {
        self.queue.state.lock().paused = paused;
        self.queue.changed.notify_all();
    }

    /// Partitions waiting for a step.
    pub fn queued(&self) -> usize {
        self.queue.state.lock().waiting.len()
    }
}

impl Drop for Worker {
    /// The thread ends after its current step; nothing waits for it.
    fn drop(&mut self) {
        self.queue.state.lock().stopped = true;
        self.queue.changed.notify_all();
    }
}

fn run(queue: &Queue, context: &Context) {
    lower_priority();
    loop {
        let partition = {
            let mut state = queue.state.lock();
            loop {
                if state.stopped {
                    return;
                }
                if !state.paused
                    && let Some(partition) = state.waiting.pop_front()
                {
                    state.busy = true;
                    break partition;
                }
                queue.changed.notify_all(); // idle: wake `settle`
                queue.changed.wait(&mut state);
            }
        };
        // Cleared first: an insert during the step queues the partition again.
        partition
            .queued
            .store(false, std::sync::atomic::Ordering::Release);
        let more = step(&partition, context);
        let mut state = queue.state.lock();
        state.busy = false;
        if more
            && !partition
                .queued
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            state.waiting.push_back(partition);
        }
        queue.changed.notify_all();
    }
}

/// One step on `partition`; true when it has more to do. A panic
/// ends graph work on that scope (logged), never the worker.
fn step(partition: &Partition, context: &Context) -> bool {
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        partition.work(&context.limits, context.params, &context.source)
    }));
    ran.unwrap_or_else(|_| {
        tracing::error!("index graph work failed; this scope keeps exact search only");
        partition.give_up();
        false
    })
}

/// Makes the calling thread yield to request handling (Linux: its own nice value).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(err) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), WORKER_NICE)
    {
        tracing::debug!(error = %err, "index worker keeps the normal priority");
    }
}
