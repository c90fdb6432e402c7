//! Whether cache writes are on. A full or read-only disk, or any other write error, turns them
//! off: requests keep being answered (from upstream, and from entries the store still holds),
//! the outage is warned about once, and every failed write is counted. After a backoff one
//! write goes through as a probe, on a freshly opened store because sled keeps its first I/O
//! error for the rest of an instance's life (its later writes fail, or are only accepted in
//! memory and lost). A probe that succeeds turns writes back on.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

/// First wait before a probe; doubled after each failed probe, up to `MAX_BACKOFF_MS`.
pub const FIRST_BACKOFF_MS: u64 = 5_000;
pub const MAX_BACKOFF_MS: u64 = 300_000;

/// What a writer may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Writes are on.
    Write,
    /// Writes are off and the backoff has passed: reopen the store, write, and make it durable
    /// before calling `succeeded` (only one caller at a time gets this).
    Probe,
    /// Writes are off; skip the write.
    Skip,
}

#[derive(Debug, Default)]
pub struct WriteHealth {
    /// Fast path: true while writes are on (no lock taken).
    enabled: AtomicBool,
    failures: AtomicU64,
    skipped: AtomicU64,
    outage: Mutex<Outage>,
}

#[derive(Debug, Default)]
struct Outage {
    retry_at_ms: u64,
    backoff_ms: u64,
    probing: bool,
}

impl WriteHealth {
    pub fn new() -> WriteHealth {
        WriteHealth {
            enabled: AtomicBool::new(true),
            ..WriteHealth::default()
        }
    }

    pub fn writes_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Writes that failed (probes included) since start-up.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Writes skipped because writes were off.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    pub fn permit(&self, now_ms: u64) -> Permit {
        if self.writes_enabled() {
            return Permit::Write;
        }
        let mut outage = self.outage.lock();
        if self.writes_enabled() {
            return Permit::Write; // a probe succeeded meanwhile
        }
        if outage.probing || now_ms < outage.retry_at_ms {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return Permit::Skip;
        }
        outage.probing = true;
        Permit::Probe
    }

    /// A write (or probe) failed: writes go off until the backoff has passed.
    pub fn failed(&self, now_ms: u64, error: &dyn Display) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut outage = self.outage.lock();
        let was_on = self.enabled.swap(false, Ordering::AcqRel);
        outage.backoff_ms = if was_on {
            FIRST_BACKOFF_MS
        } else {
            (outage.backoff_ms * 2).clamp(FIRST_BACKOFF_MS, MAX_BACKOFF_MS)
        };
        outage.retry_at_ms = now_ms.saturating_add(outage.backoff_ms);
        outage.probing = false;
        if was_on {
            tracing::warn!(
                %error,
                retry_in_ms = outage.backoff_ms,
                "cache writes failed; turning them off (answers still served, not stored)"
            );
        } else {
            tracing::debug!(%error, retry_in_ms = outage.backoff_ms, "cache write probe failed");
        }
    }

    /// A probe made its write durable: writes are on again.
    pub fn succeeded(&self) {
        let mut outage = self.outage.lock();
        outage.probing = false;
        if !self.enabled.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                failures = self.failures(),
                skipped = self.skipped(),
                "cache writes resumed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_after_a_failure_then_one_probe_after_the_backoff() {
        let health = WriteHealth::new();
        assert_eq!(health.permit(0), Permit::Write);
        health.failed(1_000, &"disk full");
        assert!(!health.writes_enabled());
        assert_eq!(health.failures(), 1);
        assert_eq!(health.permit(1_000 + FIRST_BACKOFF_MS - 1), Permit::Skip);
        assert_eq!(health.permit(1_000 + FIRST_BACKOFF_MS), Permit::Probe);
        assert_eq!(
            health.permit(1_000 + FIRST_BACKOFF_MS),
            Permit::Skip,
            "one probe at a time"
        );
        assert_eq!(health.skipped(), 2);
        health.succeeded();
        assert!(health.writes_enabled());
        assert_eq!(health.permit(0), Permit::Write);
    }

    #[test]
    fn failed_probes_back_off_exponentially_up_to_a_cap() {
        let health = WriteHealth::new();
        health.failed(0, &"x");
        let mut now = 0;
        for wait in [
            5_000, 10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000,
        ] {
            assert_eq!(health.permit(now + wait - 1), Permit::Skip, "{wait}");
            now += wait;
            assert_eq!(health.permit(now), Permit::Probe, "{wait}");
            health.failed(now, &"still full");
        }
        assert_eq!(health.failures(), 9);
    }
}
