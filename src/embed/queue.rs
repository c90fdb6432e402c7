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
    #[cfg_attr(not(feature = "local-embeddings"), allow(dead_code))]
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
    use std::task::Poll;

    use futures_util::{FutureExt, poll};

    use super::*;

    /// Puts a job in the queue without waiting for its answer; the answer's end is returned
    /// (dropping it abandons the job).
    fn put(queue: &Queue<u32>, n: u32) -> oneshot::Receiver<Answer> {
        let (job, answer) = Job::new(n);
        assert!(queue.jobs.try_send(job).is_ok());
        answer
    }

    fn inputs(batch: &[Job<u32>]) -> Vec<u32> {
        batch.iter().map(|job| job.input).collect()
    }

    #[tokio::test]
    async fn a_job_that_comes_while_the_batch_waits_joins_it() {
        let (queue, mut batches) = queue::<u32>(2, Duration::from_secs(60));
        let _first = put(&queue, 1);
        let mut next = std::pin::pin!(batches.next(|| Duration::from_secs(60)));
        assert!(poll!(&mut next).is_pending(), "waiting for company");
        let _second = put(&queue, 2);
        match poll!(&mut next) {
            Poll::Ready(Some(batch)) => assert_eq!(inputs(&batch), [1, 2], "full: goes at once"),
            _ => panic!("the full batch did not go"),
        }
    }

    #[tokio::test]
    async fn a_batch_goes_when_its_wait_is_over() {
        let (queue, mut batches) = queue::<u32>(8, Duration::from_secs(60));
        let _first = put(&queue, 1);
        let wait = || Duration::from_millis(20);
        let batch = tokio::time::timeout(Duration::from_secs(10), batches.next(wait)).await;
        assert_eq!(inputs(&batch.expect("not stuck").expect("a batch")), [1]);
    }

    #[test]
    fn jobs_already_waiting_go_without_a_timer() {
        // No runtime, so no timer: a batch that needed one could not even be polled.
        let (queue, mut batches) = queue::<u32>(2, Duration::from_secs(60));
        let _answers = [put(&queue, 1), put(&queue, 2), put(&queue, 3)];
        let full = batches.next(|| Duration::from_secs(1)).now_or_never();
        assert_eq!(
            inputs(&full.flatten().expect("a full batch at once")),
            [1, 2]
        );
        // A zero wait sets none either (tokio would round it up to the next millisecond).
        let rest = batches.next(|| Duration::ZERO).now_or_never();
        assert_eq!(inputs(&rest.flatten().expect("the rest at once")), [3]);
    }

    #[test]
    fn abandoned_jobs_are_dropped() {
        let (queue, mut batches) = queue::<u32>(8, Duration::from_secs(60));
        drop(put(&queue, 1));
        let _kept = put(&queue, 2);
        let batch = batches.next_blocking().expect("a batch");
        assert_eq!(inputs(&batch), [2]);
        drop(put(&queue, 3));
        drop(queue);
        assert!(
            batches.next_blocking().is_none(),
            "nothing but an abandoned job was left"
        );
    }
}
