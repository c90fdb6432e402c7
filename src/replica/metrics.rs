//! The replication series in `/metrics`: whether Redis answers, and what moved through it.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Replica;
use std::sync::atomic::Ordering;

#[derive(Default)]
pub struct ReplicaMetrics {
    up: Gauge,
    applied: Counter,
    published: Counter,
    failures: Counter,
    resyncs: Counter,
    local_limits: Counter,
    takeovers: Counter,
}

impl ReplicaMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "deja_redis_up",
            "1 while Redis answers ([redis] set), 0 while this replica serves local entries only",
            self.up.clone(),
        );
        r.register(
            "deja_replica_applied",
            "Entries and deletes applied from other replicas",
            self.applied.clone(),
        );
        r.register(
            "deja_replica_published",
            "Stores and deletes written to the shared log",
            self.published.clone(),
        );
        r.register(
            "deja_redis_failures",
            "Redis commands that failed or timed out",
            self.failures.clone(),
        );
        r.register(
            "deja_replica_resyncs",
            "Full loads of the entries in Redis (joining, or the log trimmed past this replica)",
            self.resyncs.clone(),
        );
        r.register(
            "deja_limits_local_fallback",
            "Limit checks (rpm; a call's tokens and budget) made on this replica alone (Redis unreachable)",
            self.local_limits.clone(),
        );
        r.register(
            "deja_replica_lease_takeovers",
            "In-flight misses this replica took over after the replica leading them failed or died",
            self.takeovers.clone(),
        );
    }

    /// Catches the series up with the replica's totals (called when scraped).
    pub fn update(&self, replica: Option<&Replica>) {
        let Some(replica) = replica else {
            return;
        };
        self.up.set(i64::from(replica.redis_up()));
        let stats = &replica.stats;
        for (counter, total) in [
            (&self.applied, &stats.applied),
            (&self.published, &stats.published),
            (&self.failures, &stats.failures),
            (&self.resyncs, &stats.resyncs),
            (&self.local_limits, &stats.local_limits),
            (&self.takeovers, &stats.takeovers),
        ] {
            let total = total.load(Ordering::Relaxed);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }
}
