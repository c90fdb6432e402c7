//! The queue in front of a batching embedder, shared by both providers: a caller hands in its
//! prompt and awaits the vector; the embedder takes whatever is waiting as one batch (one
//! forward pass of the local model, one `/embeddings` call of the API) and answers each job.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::EmbedError;

/// Requests waiting in the queue, per slot of a batch: a full queue makes callers wait (which
/// counts against their timeout) rather than pile up without bound.
const QUEUE_BATCHES: usize = 4;

type Answer = Result<Vec<f32>, EmbedError>;

/// One prompt waiting for its vector.
pub(super) struct Job<T> {
    pub(super) input: T,
    reply: oneshot::Sender<Answer>,
}

impl<T> Job<T> {
    /// A job outside any queue (the local model's warm-up) and where its answer arrives.
    pub(super) fn new(input: T) -> (Job<T>, oneshot::Receiver<Answer>) {
        let (reply, answer) = oneshot::channel();
        (Job { input, reply }, answer)
    }

    pub(super) fn answer(self, result: Answer) {
        // A caller that gave up no longer listens; nothing to do then.
        let _ = self.reply.send(result);
    }

    /// The caller gave up (timed out, or its request went away): its work can be skipped.
    pub(super) fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

/// The callers' end.
pub(super) struct Queue<T> {
    jobs: mpsc::Sender<Job<T>>,
    timeout: Duration,
}

/// The embedder's end: yields batches of at most `max_batch` jobs.
pub(super) struct Batches<T> {
    jobs: mpsc::Receiver<Job<T>>,
    max_batch: usize,
}

/// A queue for batches of up to `max_batch` jobs; each caller waits at most `timeout`, queueing
/// included.
pub(super) fn queue<T>(max_batch: usize, timeout: Duration) -> (Queue<T>, Batches<T>) {
    let max_batch = max_batch.max(1);
    let (jobs, receiver) = mpsc::channel(max_batch * QUEUE_BATCHES);
    let batches = Batches {
        jobs: receiver,
        max_batch,
    };
    (Queue { jobs, timeout }, batches)
}

impl<T> Queue<T> {
    /// Queues `input` and waits for its vector.
    pub(super) async fn embed(&self, input: T) -> Answer {
        let (job, answer) = Job::new(input);
        let call = async {
            self.jobs.send(job).await.map_err(|_| EmbedError::Stopped)?;
            answer.await.map_err(|_| EmbedError::Stopped)?
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| EmbedError::Timeout(self.timeout))?
    }
}

impl<T> Batches<T> {
    /// For an embedder on a thread of its own: blocks for the next job, then takes whatever
    /// else is already waiting. `None` once every caller's end is gone.
    pub(super) fn next_blocking(&mut self) -> Option<Vec<Job<T>>> {
        loop {
            let mut batch = vec![self.jobs.blocking_recv()?];
            while batch.len() < self.max_batch {
                match self.jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            if let Some(batch) = live(batch) {
                return Some(batch);
            }
        }
    }

    /// Waits for the next job, then up to `wait()` (asked once the job is there) for others to
    /// join it, or until the batch is full. `None` once every caller's end is gone.
    pub(super) async fn next(&mut self, wait: impl Fn() -> Duration) -> Option<Vec<Job<T>>> {
        loop {
            let mut batch = vec![self.jobs.recv().await?];
            let deadline = Instant::now() + wait();
            while batch.len() < self.max_batch {
                // A job already waiting is taken without a timer, and a wait that is over sets
                // none (the timer rounds up to the next millisecond: a zero wait would still
                // wait one).
                let job = match self.jobs.try_recv() {
                    Ok(job) => Some(job),
                    Err(_) if Instant::now() >= deadline => None,
                    Err(_) => tokio::time::timeout_at(deadline, self.jobs.recv())
                        .await
                        .ok()
                        .flatten(),
                };
                match job {
                    Some(job) => batch.push(job),
                    None => break,
                }
            }
            if let Some(batch) = live(batch) {
                return Some(batch);
            }
        }
    }
}

/// The jobs whose callers still listen, if any.
fn live<T>(mut batch: Vec<Job<T>>) -> Option<Vec<Job<T>>> {
    batch.retain(|job| !job.abandoned());
    (!batch.is_empty()).then_some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_batch_waits_for_late_jobs_but_not_past_its_deadline() {
        let (queue, mut batches) = queue::<u32>(8, Duration::from_secs(60));
        let queue = std::sync::Arc::new(queue);
        let submit = |n: u32, after: Duration| {
            let queue = queue.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                queue.embed(n).await
            })
        };
        let _early = [
            submit(1, Duration::ZERO),
            submit(2, Duration::from_millis(3)),
        ];
        let _late = submit(3, Duration::from_millis(20));
        let first = batches
            .next(|| Duration::from_millis(5))
            .await
            .expect("a batch");
        let inputs: Vec<u32> = first.iter().map(|job| job.input).collect();
        assert_eq!(
            inputs,
            [1, 2],
            "the job 3 ms later joined, the one 20 ms later did not"
        );
        let second = batches
            .next(|| Duration::from_millis(5))
            .await
            .expect("a batch");
        assert_eq!(second.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn no_wait_means_no_timer() {
        let (queue, mut batches) = queue::<u32>(8, Duration::from_secs(60));
        let caller = tokio::spawn(async move { queue.embed(1).await });
        tokio::task::yield_now().await;
        // Mid-millisecond, where a timer for "now" would round up to the next tick.
        tokio::time::advance(Duration::from_micros(500)).await;
        let started = Instant::now();
        let batch = batches.next(|| Duration::ZERO).await.expect("a batch");
        assert_eq!(batch.len(), 1);
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "not even a millisecond tick"
        );
        drop(batch);
        let _ = caller.await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_at_once_and_abandoned_jobs_are_dropped() {
        let (queue, mut batches) = queue::<u32>(2, Duration::from_secs(60));
        let queue = std::sync::Arc::new(queue);
        let mut callers = Vec::new();
        for n in 0..3 {
            let queue = queue.clone();
            callers.push(tokio::spawn(async move { queue.embed(n).await }));
        }
        tokio::task::yield_now().await;
        let started = Instant::now();
        let full = batches
            .next(|| Duration::from_secs(1))
            .await
            .expect("a batch");
        assert_eq!(full.len(), 2);
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "a full batch does not wait"
        );
        // The third caller gives up before its batch is taken.
        callers[2].abort();
        let _ = (&mut callers[2]).await;
        drop(full);
        drop(queue);
        assert!(batches.next(|| Duration::from_millis(1)).await.is_none());
    }
}
