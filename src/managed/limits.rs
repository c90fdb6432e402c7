//! Per-key limits in managed mode: requests per minute, tokens per minute and a spend budget
//! per period. Minute limits are token buckets that refill continuously (a key may burst up
//! to its limit, then gets one request per 60/rpm seconds), as OpenAI's limits behave.
//!
//! Tokens and dollars are reserved before the upstream call from an estimate and settled from
//! the real usage afterwards, so concurrent requests cannot overrun a limit by much. Cache
//! hits count toward requests per minute only. State lives in memory, per process; with
//! `[redis]` the same limits are also kept across replicas (`crate::replica::limits`).

use std::collections::HashMap;

use http::HeaderMap;
use http::header::HeaderValue;
use parking_lot::Mutex;

use crate::config::{BudgetPeriod, KeyConfig};
use crate::error::refusal::{Refusal, duration_text};

const MINUTE_MS: f64 = 60_000.0;

#[derive(Default)]
pub struct Limits {
    keys: Mutex<HashMap<String, KeyState>>,
}

#[derive(Default)]
struct KeyState {
    requests: Bucket,
    tokens: Bucket,
    spend: Spend,
}

/// A bucket holding up to `capacity` units, refilling `capacity` per minute. It starts full;
/// settlement may drive it below zero, which delays the next admission.
#[derive(Default)]
struct Bucket {
    used: f64,
    updated_ms: u64,
}

impl Bucket {
    /// Brings the bucket to `now_ms` and returns what is available.
    fn available(&mut self, capacity: f64, now_ms: u64) -> f64 {
        let elapsed = now_ms.saturating_sub(self.updated_ms) as f64;
        self.used = (self.used - capacity * elapsed / MINUTE_MS).max(0.0);
        self.updated_ms = now_ms.max(self.updated_ms);
        capacity - self.used
    }

    /// Milliseconds until `need` units are available.
    fn wait_ms(&self, capacity: f64, need: f64) -> u64 {
        let short = need - (capacity - self.used);
        if short <= 0.0 {
            0
        } else {
            (short / capacity * MINUTE_MS).ceil() as u64
        }
    }

    fn window(&self, capacity: u64) -> Window {
        Window {
            limit: capacity,
            remaining: (capacity as f64 - self.used).floor().max(0.0) as u64,
            reset_ms: (self.used.max(0.0) / capacity as f64 * MINUTE_MS).ceil() as u64,
        }
    }
}

#[derive(Default)]
struct Spend {
    window_start_ms: u64,
    spent_usd: f64,
}

impl Spend {
    fn roll(&mut self, period: BudgetPeriod, now_ms: u64) {
        let start = period_start_ms(period, now_ms);
        if start != self.window_start_ms {
            self.window_start_ms = start;
            self.spent_usd = 0.0;
        }
    }
}

/// One limit's state, for `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub limit: u64,
    pub remaining: u64,
    pub reset_ms: u64,
}

/// The request and token windows of a key (absent when unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateState {
    pub requests: Option<Window>,
    pub tokens: Option<Window>,
}

/// Tokens and dollars set aside for one upstream call.
#[derive(Debug, Clone)]
pub struct Reservation {
    key_id: String,
    tokens: u64,
    cost_usd: f64,
    window_start_ms: u64,
    /// Also set aside in Redis (`crate::replica::limits`), where it is settled too.
    shared: bool,
}

impl Reservation {
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    pub fn cost_usd(&self) -> f64 {
        self.cost_usd
    }

    /// Start (ms) of the budget period the dollars were set aside in.
    pub fn window_start_ms(&self) -> u64 {
        self.window_start_ms
    }

    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Marks a reservation the cluster's limits admitted (settled in Redis as well).
    pub fn shared(mut self) -> Reservation {
        self.shared = true;
        self
    }
}

impl Limits {
    /// Counts one request against the key's requests-per-minute limit.
    pub fn admit(&self, key: &KeyConfig, now_ms: u64) -> Result<RateState, Refusal> {
        let mut keys = self.keys.lock();
        let state = keys.entry(key.id.clone()).or_default();
        if key.rpm > 0 {
            let capacity = key.rpm as f64;
            if state.requests.available(capacity, now_ms) < 1.0 {
                return Err(Refusal::Requests {
                    limit: key.rpm,
                    retry_ms: state.requests.wait_ms(capacity, 1.0),
                });
            }
            state.requests.used += 1.0;
        }
        Ok(rate_state(key, state, now_ms))
    }

    /// Sets aside `tokens` and `cost_usd` before an upstream call; refused when the key's
    /// tokens per minute or budget cannot cover them.
    pub fn reserve(
        &self,
        key: &KeyConfig,
        tokens: u64,
        cost_usd: f64,
        now_ms: u64,
    ) -> Result<Reservation, Refusal> {
        let mut keys = self.keys.lock();
        let state = keys.entry(key.id.clone()).or_default();
        if key.tpm > 0 {
            let capacity = key.tpm as f64;
            let available = state.tokens.available(capacity, now_ms);
            // A request larger than the whole limit can never pass; say so at once.
            if tokens as f64 > capacity || available < tokens as f64 {
                return Err(Refusal::Tokens {
                    limit: key.tpm,
                    requested: tokens,
                    retry_ms: state.tokens.wait_ms(capacity, tokens as f64),
                });
            }
        }
        if let Some(budget) = key.budget_usd {
            state.spend.roll(key.budget_period, now_ms);
            if state.spend.spent_usd + cost_usd > budget || state.spend.spent_usd >= budget {
                return Err(Refusal::Budget {
                    budget_usd: budget,
                    retry_ms: period_end_ms(key.budget_period, now_ms).saturating_sub(now_ms),
                });
            }
        }
        Ok(take(key, state, tokens, cost_usd, now_ms))
    }

    /// Sets aside what another authority (the cluster's limits in Redis) has admitted,
    /// without checking: this replica's count is only a part of the key's.
    pub fn count(&self, key: &KeyConfig, tokens: u64, cost_usd: f64, now_ms: u64) -> Reservation {
        let mut keys = self.keys.lock();
        let state = keys.entry(key.id.clone()).or_default();
        if key.tpm > 0 {
            state.tokens.available(key.tpm as f64, now_ms);
        }
        take(key, state, tokens, cost_usd, now_ms)
    }

    /// Replaces a reservation's estimate with what the call really used (when known).
    pub fn settle(&self, reservation: Reservation, tokens: Option<u64>, cost_usd: Option<f64>) {
        let mut keys = self.keys.lock();
        let Some(state) = keys.get_mut(&reservation.key_id) else {
            return;
        };
        if let Some(tokens) = tokens {
            state.tokens.used += tokens as f64 - reservation.tokens as f64;
        }
        if let Some(cost) = cost_usd
            && state.spend.window_start_ms == reservation.window_start_ms
        {
            state.spend.spent_usd = (state.spend.spent_usd + cost - reservation.cost_usd).max(0.0);
        }
    }

    /// The key's windows now, for response headers.
    pub fn state(&self, key: &KeyConfig, now_ms: u64) -> RateState {
        let mut keys = self.keys.lock();
        let state = keys.entry(key.id.clone()).or_default();
        rate_state(key, state, now_ms)
    }

    /// Dollars the key has spent in its current budget period.
    pub fn spent_usd(&self, key: &KeyConfig, now_ms: u64) -> f64 {
        let mut keys = self.keys.lock();
        let state = keys.entry(key.id.clone()).or_default();
        state.spend.roll(key.budget_period, now_ms);
        state.spend.spent_usd
    }
}

/// Adds a reservation to the key's state (its limits checked, or not, by the caller).
fn take(
    key: &KeyConfig,
    state: &mut KeyState,
    tokens: u64,
    cost_usd: f64,
    now_ms: u64,
) -> Reservation {
    if key.budget_usd.is_some() {
        state.spend.roll(key.budget_period, now_ms);
        state.spend.spent_usd += cost_usd;
    }
    if key.tpm > 0 {
        state.tokens.used += tokens as f64;
    }
    Reservation {
        key_id: key.id.clone(),
        tokens,
        cost_usd,
        window_start_ms: state.spend.window_start_ms,
        shared: false,
    }
}

fn rate_state(key: &KeyConfig, state: &mut KeyState, now_ms: u64) -> RateState {
    let window = |limit: u64, bucket: &mut Bucket| {
        (limit > 0).then(|| {
            bucket.available(limit as f64, now_ms);
            bucket.window(limit)
        })
    };
    RateState {
        requests: window(key.rpm, &mut state.requests),
        tokens: window(key.tpm, &mut state.tokens),
    }
}

/// OpenAI's `x-ratelimit-*` headers for the windows that exist.
pub fn insert_headers(headers: &mut HeaderMap, state: &RateState) {
    for (name, window) in [("requests", state.requests), ("tokens", state.tokens)] {
        let Some(window) = window else { continue };
        let pairs = [
            (
                format!("x-ratelimit-limit-{name}"),
                window.limit.to_string(),
            ),
            (
                format!("x-ratelimit-remaining-{name}"),
                window.remaining.to_string(),
            ),
            (
                format!("x-ratelimit-reset-{name}"),
                duration_text(window.reset_ms),
            ),
        ];
        for (header, value) in pairs {
            if let (Ok(header), Ok(value)) = (
                http::HeaderName::try_from(header),
                HeaderValue::try_from(value),
            ) {
                headers.insert(header, value);
            }
        }
    }
}

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

pub fn period_start_ms(period: BudgetPeriod, now_ms: u64) -> u64 {
    match period {
        BudgetPeriod::Hour => now_ms / HOUR_MS * HOUR_MS,
        BudgetPeriod::Day => now_ms / DAY_MS * DAY_MS,
        // 1970-01-01 was a Thursday; weeks start on Monday.
        BudgetPeriod::Week => (now_ms / DAY_MS + 3) / 7 * 7 * DAY_MS - 3 * DAY_MS,
        BudgetPeriod::Month => {
            let (year, month, _) = civil_from_days((now_ms / DAY_MS) as i64);
            days_from_civil(year, month, 1) as u64 * DAY_MS
        }
    }
}

pub fn period_end_ms(period: BudgetPeriod, now_ms: u64) -> u64 {
    let start = period_start_ms(period, now_ms);
    match period {
        BudgetPeriod::Hour => start + HOUR_MS,
        BudgetPeriod::Day => start + DAY_MS,
        BudgetPeriod::Week => start + 7 * DAY_MS,
        BudgetPeriod::Month => {
            let (year, month, _) = civil_from_days((start / DAY_MS) as i64);
            let (year, month) = if month == 12 {
                (year + 1, 1)
            } else {
                (year, month + 1)
            };
            days_from_civil(year, month, 1) as u64 * DAY_MS
        }
    }
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rpm: u64, tpm: u64, budget: Option<f64>) -> KeyConfig {
        KeyConfig {
            id: "k".into(),
            hash: String::new(),
            tenant: None,
            namespace: None,
            rpm,
            tpm,
            budget_usd: budget,
            budget_period: BudgetPeriod::Day,
        }
    }

    #[test]
    fn requests_refill_continuously() {
        let limits = Limits::default();
        let key = key(60, 0, None);
        for _ in 0..60 {
            limits.admit(&key, 0).unwrap();
        }
        let refusal = limits.admit(&key, 0).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::Requests {
                limit: 60,
                retry_ms: 1000
            }
        );
        assert!(limits.admit(&key, 999).is_err());
        let state = limits.admit(&key, 1000).unwrap();
        assert_eq!(state.requests.unwrap().remaining, 0);
    }

    #[test]
    fn tokens_are_reserved_then_settled() {
        let limits = Limits::default();
        let key = key(0, 1000, None);
        let first = limits.reserve(&key, 600, 0.0, 0).unwrap();
        assert!(matches!(
            limits.reserve(&key, 600, 0.0, 0),
            Err(Refusal::Tokens { requested: 600, .. })
        ));
        // The call used far less than estimated: the difference comes back.
        limits.settle(first, Some(100), None);
        limits.reserve(&key, 600, 0.0, 0).unwrap();
        // Larger than the whole limit: refused even when idle.
        assert!(limits.reserve(&key, 1001, 0.0, 10 * 60_000).is_err());
    }

    #[test]
    fn what_the_cluster_admitted_is_counted_without_a_check() {
        let limits = Limits::default();
        let key = key(0, 1000, Some(1.0));
        // Past both limits: counted anyway (the cluster's limits in Redis decided).
        let counted = limits.count(&key, 1500, 1.5, 0);
        assert!(!counted.is_shared());
        assert!(counted.shared().is_shared());
        assert_eq!(limits.state(&key, 0).tokens.unwrap().remaining, 0);
        assert!((limits.spent_usd(&key, 0) - 1.5).abs() < 1e-9);
        assert!(limits.reserve(&key, 1, 0.0, 0).is_err());
    }

    #[test]
    fn budget_resets_with_its_period() {
        let limits = Limits::default();
        let key = key(0, 0, Some(1.0));
        let r = limits.reserve(&key, 0, 0.4, 1000).unwrap();
        limits.settle(r, None, Some(0.9));
        assert!((limits.spent_usd(&key, 1000) - 0.9).abs() < 1e-9);
        let refusal = limits.reserve(&key, 0, 0.2, 2000).unwrap_err();
        assert_eq!(refusal.limit_name(), "budget");
        assert_eq!(refusal.retry_ms(), DAY_MS - 2000);
        limits.reserve(&key, 0, 0.2, DAY_MS).unwrap();
    }

    #[test]
    fn period_boundaries() {
        // 2026-11-28T15:00:00Z is a Saturday.
        let now = days_from_civil(2026, 11, 28) as u64 * DAY_MS + 15 * HOUR_MS;
        assert_eq!(
            civil_from_days(days_from_civil(2026, 11, 28)),
            (2026, 11, 28)
        );
        let monday = days_from_civil(2026, 11, 23) as u64 * DAY_MS;
        assert_eq!(period_start_ms(BudgetPeriod::Week, now), monday);
        assert_eq!(
            period_start_ms(BudgetPeriod::Month, now),
            days_from_civil(2026, 11, 1) as u64 * DAY_MS
        );
        assert_eq!(
            period_end_ms(BudgetPeriod::Month, now),
            days_from_civil(2026, 12, 1) as u64 * DAY_MS
        );
    }
}
