//! Per-key limits as enforced on a request: across replicas when `[redis]` is set and Redis
//! answers (`crate::replica::limits`), and always locally (`limits`). Redis down or slow:
//! the local limits alone apply.

use crate::app::App;
use crate::config::KeyConfig;
use crate::error::refusal::Refusal;
use crate::managed::limits::{RateState, Reservation, period_end_ms, period_start_ms};

/// Counts one request against the key's rpm: across replicas when `[redis]` is set and Redis
/// answers, and always locally (as before).
pub async fn admit(app: &App, key: &KeyConfig) -> Result<RateState, Refusal> {
    if key.rpm > 0
        && let Some(replica) = app.replica.get()
        && let Ok(Some(retry_ms)) = crate::replica::limits::take(replica, key).await
    {
        return Err(Refusal::Requests {
            limit: key.rpm,
            retry_ms,
        });
    }
    app.limits.admit(key, app.now_ms())
}

/// Sets aside a call's tokens and dollars (`Tracker::reserve`): across replicas when Redis
/// answers, and always locally.
pub async fn reserve(
    app: &App,
    key: &KeyConfig,
    tokens: u64,
    cost_usd: f64,
) -> Result<Reservation, Refusal> {
    if (key.tpm > 0 || key.budget_usd.is_some())
        && let Some(replica) = app.replica.get()
    {
        let now_ms = app.now_ms();
        let period = key.budget_period;
        let (start, end) = (
            period_start_ms(period, now_ms),
            period_end_ms(period, now_ms),
        );
        let shared =
            crate::replica::limits::reserve(replica, key, tokens, cost_usd, now_ms, start, end);
        match shared.await {
            Ok(Ok(())) => return Ok(app.limits.count(key, tokens, cost_usd, now_ms).shared()),
            Ok(Err(refusal)) => return Err(refusal),
            Err(_) => {}
        }
    }
    app.limits.reserve(key, tokens, cost_usd, app.now_ms())
}

/// Replaces a reservation's estimate with what the call used (when known): locally at once,
/// in Redis off the caller's path (called when a response ends). A settlement Redis misses
/// leaves the estimate counted there until the bucket refills or the period ends.
pub fn settle(
    app: &App,
    key: &KeyConfig,
    reservation: Reservation,
    tokens: Option<u64>,
    cost_usd: Option<f64>,
) {
    if reservation.is_shared()
        && let Some(replica) = app.replica.get()
    {
        let token_delta = tokens.map_or(0, |t| t as i64 - reservation.tokens() as i64);
        let cost_delta = cost_usd.map_or(0.0, |c| c - reservation.cost_usd());
        if token_delta != 0 || cost_delta != 0.0 {
            let window = reservation.window_start_ms();
            crate::replica::limits::settle(replica, key, window, token_delta, cost_delta);
        }
    }
    app.limits.settle(reservation, tokens, cost_usd);
}
