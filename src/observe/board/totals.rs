//! Per-minute totals of the last day (requests, hits by tier, tokens and dollars saved,
//! embedding cost, upstream errors and retries), from the same records as `/metrics` and the
//! usage log. 1440 fixed buckets: bounded memory whatever the traffic.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::observe::usage::{Outcome, Record};

const MINUTES: usize = 24 * 60;
const MINUTE_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Totals {
    pub requests: u64,
    pub hit_exact: u64,
    pub hit_semantic: u64,
    pub coalesced: u64,
    pub miss: u64,
    /// Tokens (prompt and completion) that hits did not send upstream.
    pub tokens_saved: u64,
    /// What those hits would have cost upstream.
    pub usd_saved: f64,
    /// What the prompt embeddings cost (`openai` provider; the local model costs nothing).
    pub usd_embedding: f64,
    /// What upstream calls cost.
    pub usd_spent: f64,
    /// Answers of 5xx, or no answer, from the upstream.
    pub upstream_errors: u64,
    pub retries: u64,
}

impl Totals {
    fn add(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.hit_exact += other.hit_exact;
        self.hit_semantic += other.hit_semantic;
        self.coalesced += other.coalesced;
        self.miss += other.miss;
        self.tokens_saved += other.tokens_saved;
        self.usd_saved += other.usd_saved;
        self.usd_embedding += other.usd_embedding;
        self.usd_spent += other.usd_spent;
        self.upstream_errors += other.upstream_errors;
        self.retries += other.retries;
    }

    /// One request's share; `usd_embedding` is priced by the caller.
    pub fn of(record: &Record, usd_embedding: f64) -> Totals {
        let hit = record.cache.is_hit();
        let tokens = record.prompt_tokens.unwrap_or(0) + record.completion_tokens.unwrap_or(0);
        Totals {
            requests: 1,
            hit_exact: u64::from(record.cache == Outcome::HitExact),
            hit_semantic: u64::from(record.cache == Outcome::HitSemantic),
            coalesced: u64::from(record.cache == Outcome::Coalesced),
            miss: u64::from(record.cache == Outcome::Miss),
            tokens_saved: if hit { tokens } else { 0 },
            usd_saved: record.saved_usd.unwrap_or(0.0),
            usd_embedding,
            usd_spent: record.cost_usd.unwrap_or(0.0),
            upstream_errors: u64::from(
                record.upstream_ms.is_some()
                    && (record.status >= 500 || record.cache == Outcome::Error),
            ),
            retries: u64::from(record.retries),
        }
    }
}

/// The two windows the page shows, with hit rates and net savings worked out.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    #[serde(flatten)]
    pub totals: Totals,
    /// Hits of each tier over cacheable requests (hits and misses).
    pub hit_rate: f64,
    pub hit_rate_exact: f64,
    pub hit_rate_semantic: f64,
    pub hit_rate_coalesced: f64,
    /// Saved minus what the embeddings cost.
    pub usd_saved_net: f64,
}

impl Window {
    fn of(totals: Totals) -> Window {
        let cacheable = totals.hit_exact + totals.hit_semantic + totals.coalesced + totals.miss;
        let rate = |n: u64| {
            if cacheable == 0 {
                0.0
            } else {
                n as f64 / cacheable as f64
            }
        };
        Window {
            hit_rate: rate(totals.hit_exact + totals.hit_semantic + totals.coalesced),
            hit_rate_exact: rate(totals.hit_exact),
            hit_rate_semantic: rate(totals.hit_semantic),
            hit_rate_coalesced: rate(totals.coalesced),
            usd_saved_net: totals.usd_saved - totals.usd_embedding,
            totals,
        }
    }
}

/// A minute's totals, for the page's time series.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MinutePoint {
    pub minute_ms: u64,
    pub requests: u64,
    pub hits: u64,
}

pub struct Minutes {
    /// `(minute number, totals)`; a slot is reused when its minute comes round again.
    buckets: Mutex<Vec<(u64, Totals)>>,
}

impl Default for Minutes {
    fn default() -> Minutes {
        Minutes {
            buckets: Mutex::new(vec![(u64::MAX, Totals::default()); MINUTES]),
        }
    }
}

impl Minutes {
    pub fn add(&self, now_ms: u64, share: &Totals) {
        let minute = now_ms / MINUTE_MS;
        let mut buckets = self.buckets.lock();
        let slot = &mut buckets[(minute % MINUTES as u64) as usize];
        if slot.0 != minute {
            *slot = (minute, Totals::default());
        }
        slot.1.add(share);
    }

    /// The minutes that hold anything, to keep across a restart.
    pub fn saved(&self) -> Vec<(u64, Totals)> {
        let buckets = self.buckets.lock();
        buckets
            .iter()
            .filter(|(minute, totals)| *minute != u64::MAX && totals.requests > 0)
            .copied()
            .collect()
    }

    /// Adds minutes kept by an earlier run (older than a day fall out as the slots turn over).
    pub fn restore(&self, saved: &[(u64, Totals)]) {
        for (minute, totals) in saved {
            self.add(minute * MINUTE_MS, totals);
        }
    }

    /// Totals of the last `minutes` minutes, this one included.
    pub fn window(&self, now_ms: u64, minutes: u64) -> Window {
        let now = now_ms / MINUTE_MS;
        let mut sum = Totals::default();
        for (minute, totals) in self.buckets.lock().iter() {
            if *minute <= now && now - *minute < minutes {
                sum.add(totals);
            }
        }
        Window::of(sum)
    }

    /// The last `minutes` minutes, oldest first, empty minutes included.
    pub fn series(&self, now_ms: u64, minutes: u64) -> Vec<MinutePoint> {
        let now = now_ms / MINUTE_MS;
        let buckets = self.buckets.lock();
        (0..minutes.min(MINUTES as u64))
            .rev()
            .filter_map(|back| now.checked_sub(back))
            .map(|minute| {
                let (at, totals) = buckets[(minute % MINUTES as u64) as usize];
                let totals = if at == minute {
                    totals
                } else {
                    Totals::default()
                };
                MinutePoint {
                    minute_ms: minute * MINUTE_MS,
                    requests: totals.requests,
                    hits: totals.hit_exact + totals.hit_semantic + totals.coalesced,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(outcome: Outcome) -> Totals {
        let mut record = Record::new(crate::wire::endpoint::EndpointName::ChatCompletions, 0);
        record.cache = outcome;
        record.prompt_tokens = Some(10);
        record.completion_tokens = Some(5);
        record.saved_usd = outcome.is_hit().then_some(0.5);
        Totals::of(&record, 0.01)
    }

    #[test]
    fn windows_sum_their_minutes_only() {
        let minutes = Minutes::default();
        let now = 100 * 24 * 60 * MINUTE_MS;
        minutes.add(now - 2 * 60 * MINUTE_MS, &share(Outcome::Miss)); // two hours ago
        minutes.add(now - MINUTE_MS, &share(Outcome::HitExact));
        minutes.add(now, &share(Outcome::HitSemantic));
        minutes.add(now, &share(Outcome::Miss));
        let hour = minutes.window(now, 60);
        assert_eq!(hour.totals.requests, 3);
        assert_eq!(hour.totals.tokens_saved, 30);
        assert!((hour.hit_rate - 2.0 / 3.0).abs() < 1e-9);
        assert!((hour.usd_saved_net - (1.0 - 0.03)).abs() < 1e-9);
        assert_eq!(minutes.window(now, 24 * 60).totals.requests, 4);
        // A day later the same slots hold nothing of today.
        assert_eq!(
            minutes
                .window(now + 24 * 60 * MINUTE_MS, 60)
                .totals
                .requests,
            0
        );
        let series = minutes.series(now, 3);
        assert_eq!(
            series.iter().map(|p| p.requests).collect::<Vec<_>>(),
            [0, 1, 2]
        );
    }
}
