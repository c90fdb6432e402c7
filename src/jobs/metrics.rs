//! The queue's Prometheus metrics, registered with deja's own (`crate::observe::metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

pub struct JobMetrics {
    pub depth: Gauge,
    pub submitted: Counter,
    pub finished: Family<StatusLabel, Counter>,
    pub wait_seconds: Histogram,
    pub run_seconds: Histogram,
    /// Pauses of the whole queue asked for by the upstream (429, rate limit at zero).
    pub paused: Counter,
    pub webhook_attempts: Family<OutcomeLabel, Counter>,
}

impl Default for JobMetrics {
    fn default() -> Self {
        JobMetrics {
            depth: Gauge::default(),
            submitted: Counter::default(),
            finished: Family::default(),
            wait_seconds: Histogram::new(exponential_buckets(0.001, 4.0, 12)),
            run_seconds: Histogram::new(exponential_buckets(0.001, 4.0, 12)),
            paused: Counter::default(),
            webhook_attempts: Family::default(),
        }
    }
}

impl JobMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "deja_jobs_queued",
            "Jobs waiting to run",
            self.depth.clone(),
        );
        r.register(
            "deja_jobs_submitted",
            "Jobs accepted",
            self.submitted.clone(),
        );
        r.register(
            "deja_jobs_finished",
            "Jobs finished, by status (succeeded, failed, cancelled)",
            self.finished.clone(),
        );
        r.register(
            "deja_job_wait_seconds",
            "From submission to the start of a job's run",
            self.wait_seconds.clone(),
        );
        r.register(
            "deja_job_run_seconds",
            "One run of a job through the synchronous path",
            self.run_seconds.clone(),
        );
        r.register(
            "deja_jobs_paused",
            "Times the upstream paused the queue (429, or rate limit remaining at zero)",
            self.paused.clone(),
        );
        r.register(
            "deja_job_webhook_attempts",
            "Webhook delivery attempts, by outcome (delivered, failed)",
            self.webhook_attempts.clone(),
        );
    }
}
