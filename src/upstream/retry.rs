//! When and how long to wait before retrying an upstream call (`[upstream.retry]`):
//! exponential backoff with full jitter, at least what the upstream asks for in `Retry-After`
//! or `retry-after-ms`, within `max_attempts` and a deadline. The loop itself is
//! `Upstream::send_retrying`.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};

pub use crate::config::RetryConfig;

/// Why an upstream call was retried; `label` is a low-cardinality name for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryCause {
    /// The upstream answered with a retryable status (429, 500, 502, 503, 504).
    Status(u16),
    /// No connection could be made (refused, DNS, TLS, connect timeout).
    Connect,
    /// The connection was reset or closed before any response arrived.
    Closed,
}

impl RetryCause {
    pub fn label(&self) -> &'static str {
        match self {
            RetryCause::Status(429) => "429",
            RetryCause::Status(500) => "500",
            RetryCause::Status(502) => "502",
            RetryCause::Status(503) => "503",
            RetryCause::Status(504) => "504",
            RetryCause::Status(_) => "status",
            RetryCause::Connect => "connect",
            RetryCause::Closed => "closed",
        }
    }
}

impl std::fmt::Display for RetryCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Statuses that say "try again": rate limited, or a server-side failure that may pass.
pub fn retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504)
}

impl RetryConfig {
    pub fn deadline(&self) -> Duration {
        Duration::from_secs_f64(self.deadline_secs)
    }

    /// The largest backoff before retry number `retry` (0 = the first retry).
    pub fn backoff_cap(&self, retry: u32) -> Duration {
        let doubled = self
            .initial_backoff_ms
            .saturating_mul(1u64.checked_shl(retry).unwrap_or(u64::MAX));
        Duration::from_millis(doubled.min(self.max_backoff_ms))
    }

    /// Full jitter: uniformly random in [0, cap], so clients that failed together spread out.
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap = self.backoff_cap(retry).as_millis() as u64;
        Duration::from_millis(fastrand::u64(0..=cap))
    }

    /// How long to wait before the next attempt, or `None` to stop and keep the last outcome:
    /// `attempts` were made, `elapsed` since the first, and the upstream asked to wait
    /// `asked` (never less than that; if that would pass the deadline, stop).
    pub fn next_delay(
        &self,
        attempts: u32,
        elapsed: Duration,
        asked: Option<Duration>,
    ) -> Option<Duration> {
        if attempts >= self.max_attempts {
            return None;
        }
        let delay = self
            .backoff(attempts.saturating_sub(1))
            .max(asked.unwrap_or_default());
        (elapsed.saturating_add(delay) <= self.deadline()).then_some(delay)
    }
}

/// How long the upstream asks us to wait: OpenAI's `retry-after-ms` first (finer), then
/// `Retry-After` as seconds or an HTTP-date (a past date means now).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(seconds(ms / 1000.0));
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| seconds(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// A wait too long to represent is "forever" (past any deadline), not a panic.
fn seconds(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn retry_after_seconds_ms_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let secs = |pairs| retry_after(&headers(pairs), now);
        assert_eq!(secs(&[("retry-after", "3")]), Some(Duration::from_secs(3)));
        assert_eq!(secs(&[("retry-after", " 0 ")]), Some(Duration::ZERO));
        assert_eq!(
            secs(&[("retry-after-ms", "250")]),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            secs(&[("retry-after", "20"), ("retry-after-ms", "1500.5")]),
            Some(Duration::from_micros(1_500_500)),
            "retry-after-ms wins"
        );
        // A malformed retry-after-ms falls back to Retry-After.
        assert_eq!(
            secs(&[("retry-after", "2"), ("retry-after-ms", "soon")]),
            Some(Duration::from_secs(2))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(7));
        let mut map = HeaderMap::new();
        map.insert("retry-after", HeaderValue::from_str(&date).unwrap());
        assert_eq!(retry_after(&map, now), Some(Duration::from_secs(7)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(7));
        map.insert("retry-after", HeaderValue::from_str(&past).unwrap());
        assert_eq!(retry_after(&map, now), Some(Duration::ZERO));
        assert_eq!(secs(&[("retry-after", "1e30")]), Some(Duration::MAX));
        assert_eq!(
            secs(&[("retry-after-ms", "1e300")]),
            Some(Duration::MAX),
            "an absurd wait stops retries instead of panicking"
        );
        for bad in ["-1", "tomorrow", "NaN", "inf"] {
            let mut map = HeaderMap::new();
            map.insert("retry-after", HeaderValue::from_static(bad));
            assert_eq!(retry_after(&map, now), None, "{bad}");
        }
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn backoff_is_full_jitter_within_the_doubling_cap() {
        let policy = RetryConfig {
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            ..RetryConfig::default()
        };
        let caps: Vec<u64> = (0..6)
            .map(|n| policy.backoff_cap(n).as_millis() as u64)
            .collect();
        assert_eq!(caps, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(policy.backoff_cap(200), Duration::from_millis(1000));
        for retry in 0..6 {
            let cap = policy.backoff_cap(retry);
            let samples: Vec<Duration> = (0..2000).map(|_| policy.backoff(retry)).collect();
            assert!(samples.iter().all(|d| *d <= cap), "retry {retry}");
            // Full jitter spreads over the whole range, not just near the cap.
            assert!(samples.iter().any(|d| *d < cap / 4), "retry {retry}");
            assert!(samples.iter().any(|d| *d > cap * 3 / 4), "retry {retry}");
        }
    }

    #[test]
    fn stops_at_max_attempts_and_at_the_deadline() {
        let policy = RetryConfig {
            max_attempts: 3,
            initial_backoff_ms: 10,
            max_backoff_ms: 10,
            deadline_secs: 5.0,
        };
        let zero = Duration::ZERO;
        assert!(policy.next_delay(1, zero, None).unwrap() <= Duration::from_millis(10));
        assert!(policy.next_delay(2, zero, None).is_some());
        assert_eq!(policy.next_delay(3, zero, None), None);
        // The upstream's wait is a floor.
        let asked = Some(Duration::from_secs(2));
        assert_eq!(
            policy.next_delay(1, zero, asked),
            Some(Duration::from_secs(2))
        );
        // A wait that would end past the deadline stops the retries.
        assert_eq!(policy.next_delay(1, Duration::from_secs(4), asked), None);
        assert_eq!(
            policy.next_delay(1, zero, Some(Duration::from_secs(6))),
            None
        );
        let single = RetryConfig {
            max_attempts: 1,
            ..policy
        };
        assert_eq!(single.next_delay(1, zero, None), None);
    }

    #[test]
    fn statuses_and_labels() {
        for code in [429, 500, 502, 503, 504] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(retryable_status(status), "{code}");
            assert_eq!(RetryCause::Status(code).label(), code.to_string());
        }
        for code in [200, 400, 401, 404, 409, 501] {
            assert!(!retryable_status(StatusCode::from_u16(code).unwrap()));
        }
    }

    #[test]
    fn invalid_values_name_the_key() {
        RetryConfig::default().validate().unwrap();
        type Breaks = fn(&mut RetryConfig);
        let cases: [(&str, Breaks); 4] = [
            ("max_attempts", |c| c.max_attempts = 0),
            ("initial_backoff_ms", |c| c.initial_backoff_ms = 0),
            ("max_backoff_ms", |c| c.max_backoff_ms = 1),
            ("deadline_secs", |c| c.deadline_secs = f64::NAN),
        ];
        for (key, breaks) in cases {
            let mut config = RetryConfig::default();
            breaks(&mut config);
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("upstream.retry.{key}")), "{err}");
        }
    }
}
