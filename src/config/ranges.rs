//! Ranges of the numeric keys. A value serde accepts can still panic where it is used (a
//! `Duration` of 1e20 seconds, a semaphore of 3e18 permits), so every duration and count has
//! an upper bound as well as a lower one, checked at load with the key named.

use super::{Config, ConfigError, invalid};

/// The longest duration any key may set: a day.
const DAY_SECS: u64 = 86_400;
/// Far above what one process can serve, far below what a semaphore refuses.
const MAX_CONNECTIONS: u64 = 1_000_000;
/// A body is held in memory whole on the cached endpoints.
const MAX_BODY_BYTES: u64 = 1 << 30;

pub(super) fn check(config: &Config) -> Result<(), ConfigError> {
    let server = &config.server;
    count(
        "server.max_body_bytes",
        server.max_body_bytes as u64,
        1,
        MAX_BODY_BYTES,
    )?;
    count(
        "server.max_json_values",
        server.max_json_values as u64,
        1,
        u32::MAX as u64,
    )?;
    count(
        "server.max_connections",
        server.max_connections as u64,
        1,
        MAX_CONNECTIONS,
    )?;
    count(
        "server.header_timeout_secs",
        server.header_timeout_secs,
        1,
        DAY_SECS,
    )?;
    count(
        "server.idle_timeout_secs",
        server.idle_timeout_secs,
        1,
        DAY_SECS,
    )?;
    count(
        "server.body_timeout_secs",
        server.body_timeout_secs,
        1,
        DAY_SECS,
    )?;
    count(
        "server.write_timeout_secs",
        server.write_timeout_secs,
        1,
        DAY_SECS,
    )?;
    let upstream = &config.upstream;
    seconds(
        "upstream.connect_timeout_secs",
        upstream.connect_timeout_secs,
    )?;
    seconds("upstream.timeout_secs", upstream.timeout_secs)?;
    seconds("upstream.idle_timeout_secs", upstream.idle_timeout_secs)?;
    // The TTL only ever saturates (milliseconds since the epoch), so it has no upper bound.
    count("cache.ttl_secs", config.cache.ttl_secs, 1, u64::MAX)?;
    count(
        "cache.max_semantic_bytes",
        config.cache.max_semantic_bytes as u64,
        1,
        MAX_BODY_BYTES,
    )?;
    count(
        "cache.sweep_interval_secs",
        config.cache.sweep_interval_secs,
        1,
        DAY_SECS,
    )?;
    count(
        "embedding.timeout_ms",
        config.embedding.timeout_ms,
        1,
        DAY_SECS * 1000,
    )
}

/// An integer key in `min..=max`.
fn count(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else if max == u64::MAX {
        invalid(key, &format!("must be at least {min}, got {value}"))
    } else {
        invalid(key, &format!("must be in {min}..={max}, got {value}"))
    }
}

/// A duration in seconds in (0, a day].
fn seconds(key: &str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value > 0.0 && value <= DAY_SECS as f64 {
        Ok(())
    } else {
        invalid(
            key,
            &format!("must be a number of seconds in (0, {DAY_SECS}], got {value}"),
        )
    }
}
