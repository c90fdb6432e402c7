//! The Batch API's Prometheus metrics, registered with deja's own (`crate::observe::metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LineLabel {
    /// `cached` (answered from the cache), `deduplicated` (the same request as a line sent),
    /// `upstream` (sent in the upstream batch).
    pub outcome: &'static str,
}

#[derive(Default)]
pub struct BatchMetrics {
    pub created: Counter,
    pub lines: Family<LineLabel, Counter>,
}

impl BatchMetrics {
    pub fn lines(&self, outcome: &'static str, count: usize) {
        self.lines
            .get_or_create(&LineLabel { outcome })
            .inc_by(count as u64);
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "deja_batches_created",
            "Batches created through deja",
            self.created.clone(),
        );
        r.register(
            "deja_batch_lines",
            "Batch input lines, by outcome (cached, deduplicated, upstream)",
            self.lines.clone(),
        );
    }
}
