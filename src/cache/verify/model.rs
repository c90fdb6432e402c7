//! The model stage of verification (`[cache.verify.model]`): a cross-encoder reads the query
//! and a candidate's prompt together and scores whether one answer serves both. The rules
//! (numbers, negation, word order) catch word swaps; real wrong hits are mostly the same
//! question about another place, product or year, which only a model that reads both texts
//! can tell apart.
//!
//! It runs only on candidates that passed the threshold and the rules, so a lookup pays for
//! it only when there is a candidate to serve. It fails closed: a model that did not load, an
//! inference error, a full queue or a verdict later than `timeout_ms` rejects the candidate
//! (a miss costs one upstream call; a wrong hit serves a wrong answer).
//!
//! The model lives on one dedicated thread; a lookup (already on a blocking thread) hands the
//! pair over a bounded channel and waits at most `timeout_ms` for the score.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use crate::config::ModelVerifyConfig;

/// Pairs waiting for the model at most; past that a candidate is rejected at once rather
/// than queued behind work that would miss its deadline anyway.
#[cfg_attr(not(any(test, feature = "local-embeddings")), allow(dead_code))]
const QUEUE: usize = 32;

/// Why a pair got no score.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JudgeError {
    #[error("verifier model unavailable: {0}")]
    Unavailable(String),
    #[error("verifier busy")]
    Busy,
    #[error("verifier timed out")]
    TimedOut,
    #[error("verifier failed: {0}")]
    Failed(String),
}

struct Job {
    query: String,
    candidate: String,
    deadline: Instant,
    reply: SyncSender<Result<f32, String>>,
}

/// A loaded (or failed) model stage. Dropping it ends its thread once the queue drains.
pub struct ModelJudge {
    config: ModelVerifyConfig,
    /// `Err` when the model could not be loaded: every judged candidate is then rejected.
    queue: Result<SyncSender<Job>, String>,
}

impl ModelJudge {
    /// Loads the model of `config.dir` on its own thread. A model that cannot be loaded is
    /// logged and kept as a judge that rejects everything (fail closed), never an error that
    /// stops the proxy.
    pub fn start(config: &ModelVerifyConfig) -> ModelJudge {
        let queue = spawn(config).inspect_err(|err| {
            tracing::error!(
                dir = %config.dir.display(),
                error = %err,
                "verifier model not loaded; semantic candidates it would judge are misses"
            );
        });
        ModelJudge {
            config: config.clone(),
            queue,
        }
    }

    /// Why the model did not load, if it did not.
    pub fn load_error(&self) -> Option<&str> {
        self.queue.as_ref().err().map(String::as_str)
    }

    pub fn config(&self) -> &ModelVerifyConfig {
        &self.config
    }

    /// The lowest similarity a lookup at `threshold` considers, when `configured` is the
    /// threshold the configuration sets for this model: `lower_bound`, unless the request
    /// raised its threshold above the configured one.
    pub fn floor(&self, threshold: f32, configured: f32) -> f32 {
        match self.config.lower_bound {
            Some(bound) if threshold <= configured => bound.min(threshold),
            _ => threshold,
        }
    }

    /// Whether the model accepts `candidate` as answering `query`; any failure is a no.
    pub fn accepts(&self, query: &str, candidate: &str) -> bool {
        match self.score(query, candidate) {
            Ok(score) => score >= self.config.accept,
            Err(err) => {
                tracing::warn!(error = %err, "verifier gave no verdict; candidate rejected");
                false
            }
        }
    }

    /// The model's score (0..1) for serving `candidate`'s answer to `query`.
    pub fn score(&self, query: &str, candidate: &str) -> Result<f32, JudgeError> {
        let queue = self
            .queue
            .as_ref()
            .map_err(|e| JudgeError::Unavailable(e.clone()))?;
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let (reply, answer) = sync_channel(1);
        let job = Job {
            query: query.to_owned(),
            candidate: candidate.to_owned(),
            deadline: Instant::now() + timeout,
            reply,
        };
        queue.try_send(job).map_err(|err| match err {
            TrySendError::Full(_) => JudgeError::Busy,
            TrySendError::Disconnected(_) => JudgeError::Unavailable("thread ended".into()),
        })?;
        match answer.recv_timeout(timeout) {
            Ok(Ok(score)) if score.is_finite() => Ok(score),
            Ok(Ok(score)) => Err(JudgeError::Failed(format!("score {score}"))),
            Ok(Err(err)) => Err(JudgeError::Failed(err)),
            Err(_) => Err(JudgeError::TimedOut),
        }
    }
}

/// The model stage as a lookup sees it: the judge (when on) and the thresholds the
/// configuration sets, to tell a lowered floor from a threshold a request raised.
#[derive(Default)]
pub struct ModelStage {
    pub judge: Option<Arc<ModelJudge>>,
    threshold: f32,
    model_thresholds: BTreeMap<String, f32>,
}

impl ModelStage {
    /// The stage for `cache`'s configuration, keeping `previous`'s model when its settings
    /// did not change (a reload does not load the weights again).
    pub fn new(cache: &crate::config::CacheConfig, previous: Option<&ModelStage>) -> ModelStage {
        let wanted = &cache.verify.model;
        let judge = (cache.verify.enabled && wanted.enabled).then(|| {
            previous
                .and_then(|p| p.judge.clone())
                .filter(|judge| judge.config() == wanted)
                .unwrap_or_else(|| Arc::new(ModelJudge::start(wanted)))
        });
        ModelStage {
            judge,
            threshold: cache.similarity_threshold,
            model_thresholds: cache.model_thresholds.clone(),
        }
    }

    /// The lowest similarity any candidate of a lookup at `threshold` may have.
    pub fn lowest(&self, threshold: f32) -> f32 {
        let bound = self.judge.as_ref().and_then(|j| j.config.lower_bound);
        bound.map_or(threshold, |bound| bound.min(threshold))
    }

    /// The lowest similarity for a candidate stored for `model` (the query's model: it is
    /// part of the scope).
    pub fn floor(&self, threshold: f32, model: &str) -> f32 {
        let configured = self
            .model_thresholds
            .get(model)
            .copied()
            .unwrap_or(self.threshold);
        self.judge
            .as_ref()
            .map_or(threshold, |judge| judge.floor(threshold, configured))
    }
}

#[cfg(feature = "local-embeddings")]
fn spawn(config: &ModelVerifyConfig) -> Result<SyncSender<Job>, String> {
    let model = super::cross_encoder::CrossEncoder::load(&config.dir)?;
    let (queue, jobs) = sync_channel(QUEUE);
    std::thread::Builder::new()
        .name("deja-verifier".into())
        .spawn(move || serve(jobs, |q, c| model.score(q, c)))
        .map_err(|e| format!("cannot start the verifier thread: {e}"))?;
    Ok(queue)
}

#[cfg(not(feature = "local-embeddings"))]
fn spawn(_: &ModelVerifyConfig) -> Result<SyncSender<Job>, String> {
    Err("deja was built without the `local-embeddings` feature (candle)".into())
}

/// Scores jobs until every sender is gone; a job whose caller has given up is skipped.
#[cfg_attr(not(any(test, feature = "local-embeddings")), allow(dead_code))]
fn serve(jobs: Receiver<Job>, score: impl Fn(&str, &str) -> Result<f32, String>) {
    for job in jobs {
        if Instant::now() >= job.deadline {
            continue;
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            score(&job.query, &job.candidate)
        }))
        .unwrap_or_else(|_| Err("inference panicked".into()));
        let _ = job.reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(lower_bound: Option<f32>) -> ModelJudge {
        ModelJudge {
            config: ModelVerifyConfig {
                lower_bound,
                ..Default::default()
            },
            queue: Err("none".into()),
        }
    }

    #[test]
    fn floor_lowers_the_configured_threshold_but_keeps_a_raised_one() {
        assert_eq!(judge(None).floor(0.9, 0.9), 0.9);
        assert_eq!(judge(Some(0.8)).floor(0.9, 0.9), 0.8);
        // The request raised its threshold to 0.97: the model does not undo that.
        assert_eq!(judge(Some(0.8)).floor(0.97, 0.9), 0.97);
        // A bound above the threshold never raises it.
        assert_eq!(judge(Some(0.95)).floor(0.9, 0.9), 0.9);
    }

    /// A judge whose "model" is `score`, on its own thread as the real one.
    fn judge_with(
        timeout_ms: u64,
        score: impl Fn(&str, &str) -> Result<f32, String> + Send + 'static,
    ) -> ModelJudge {
        let (queue, jobs) = sync_channel(QUEUE);
        std::thread::spawn(move || serve(jobs, score));
        ModelJudge {
            config: ModelVerifyConfig {
                enabled: true,
                timeout_ms,
                ..Default::default()
            },
            queue: Ok(queue),
        }
    }

    #[test]
    fn a_late_verdict_rejects() {
        let slow = judge_with(20, |_, _| {
            std::thread::sleep(Duration::from_millis(500));
            Ok(1.0)
        });
        assert_eq!(slow.score("a", "a"), Err(JudgeError::TimedOut));
        assert!(!slow.accepts("a", "a"));
    }

    #[test]
    fn an_error_or_a_panic_rejects_and_the_thread_lives_on() {
        let flaky = judge_with(5_000, |q, _| match q {
            "panic" => panic!("bad input"),
            "error" => Err("no".into()),
            "nan" => Ok(f32::NAN),
            _ => Ok(0.9),
        });
        assert!(!flaky.accepts("panic", "x"));
        assert!(!flaky.accepts("error", "x"));
        assert!(!flaky.accepts("nan", "x"));
        assert!(
            flaky.accepts("fine", "x"),
            "the thread survived and answers"
        );
        let picky = ModelJudge {
            config: ModelVerifyConfig {
                accept: 0.95,
                ..flaky.config.clone()
            },
            queue: flaky.queue.clone(),
        };
        assert!(!picky.accepts("fine", "x"), "0.9 is under accept = 0.95");
    }

    #[test]
    fn a_missing_model_rejects() {
        let judge = judge(None);
        assert!(matches!(
            judge.score("a", "b"),
            Err(JudgeError::Unavailable(_))
        ));
        assert!(!judge.accepts("a", "a"));
        assert_eq!(judge.load_error(), Some("none"));
    }

    #[test]
    fn check_names_the_bad_value() {
        let bad = ModelVerifyConfig {
            accept: 1.5,
            ..Default::default()
        };
        assert_eq!(bad.check().unwrap_err().0, "cache.verify.model.accept");
        let bad = ModelVerifyConfig {
            lower_bound: Some(2.0),
            ..Default::default()
        };
        assert_eq!(bad.check().unwrap_err().0, "cache.verify.model.lower_bound");
        assert!(ModelVerifyConfig::default().check().is_ok());
    }
}
