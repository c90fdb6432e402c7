//! A batch against the caller's managed key: the lines it sends upstream count as their
//! synchronous calls would. At create, each line sent is one request of the key's `rpm`, and
//! their token estimates (prompt at ~4 bytes a token plus `max_tokens`, as `estimate_tokens`)
//! and their cost at the model's `[pricing]` price are reserved against `tpm` and the budget
//! in one go; a refusal is the synchronous call's 429 (or 403 for an unpriced model under a
//! budget), and no upstream batch is made. When the upstream batch has ended, the reservation
//! is settled from each line's real `usage`. Lines answered from the cache, repeats of a line
//! sent and lines deja refused cost nothing.
//!
//! The reservation lives in memory (`Batches::charges`), as the key's limits do: a restart
//! between create and merge leaves the estimate counted (in Redis, with `[redis]`).

use std::sync::Arc;

use serde_json::Value;

use super::Batches;
use super::lines::Spend;
use crate::app::App;
use crate::config::{Config, DEFAULT_PRICE, KeyConfig};
use crate::error::ApiError;
use crate::error::refusal::Refusal;
use crate::managed::limits::Reservation;

/// A create's reservation, settled when its batch is merged.
pub struct Charge {
    key: Arc<KeyConfig>,
    reservation: Reservation,
}

/// Whether the key has any limit a batch must count against.
pub fn has_limits(key: &KeyConfig) -> bool {
    key.rpm > 0 || key.tpm > 0 || key.budget_usd.is_some()
}

/// Counts the lines sent against `key`; `Ok(None)` when nothing needs settling later.
pub async fn reserve(
    app: &App,
    config: &Config,
    key: &Arc<KeyConfig>,
    sent: &[Spend],
) -> Result<Option<Charge>, ApiError> {
    if sent.is_empty() {
        return Ok(None);
    }
    admit_requests(app, key, sent.len()).await?;
    if key.tpm == 0 && key.budget_usd.is_none() {
        return Ok(None);
    }
    let mut tokens = 0;
    let mut cost = 0.0;
    for line in sent {
        let (prompt, completion) = line.estimate;
        tokens += prompt + completion;
        let model = line.model.as_deref().unwrap_or(DEFAULT_PRICE);
        match config.price(model) {
            Some(price) => cost += price.cost(prompt, completion),
            None if key.budget_usd.is_some() => {
                tracing::info!(key = %key.id, "batch refused: no price under a budget");
                return Err(ApiError::Unpriced(format!("the model {model}")));
            }
            None => {}
        }
    }
    match crate::track::admit::reserve(app, key, tokens, cost).await {
        Ok(reservation) => Ok(Some(Charge {
            key: key.clone(),
            reservation,
        })),
        Err(refusal) => Err(refused(key, refusal)),
    }
}

/// One request of the key's `rpm` per line sent. A batch needing more than the requests left
/// this minute is refused before any is taken (with `[redis]`, another replica may still take
/// some in between; those already taken stay counted, as a refused call's would).
async fn admit_requests(app: &App, key: &KeyConfig, lines: usize) -> Result<(), ApiError> {
    if key.rpm == 0 {
        return Ok(());
    }
    let now = app.now_ms();
    let left = app
        .limits
        .state(key, now)
        .requests
        .map_or(0, |w| w.remaining);
    if (lines as u64) > left {
        let short = lines as u64 - left;
        return Err(refused(
            key,
            Refusal::Requests {
                limit: key.rpm,
                retry_ms: (short * 60_000).div_ceil(key.rpm),
            },
        ));
    }
    for _ in 0..lines {
        crate::track::admit::admit(app, key)
            .await
            .map_err(|refusal| refused(key, refusal))?;
    }
    Ok(())
}

fn refused(key: &KeyConfig, refusal: Refusal) -> ApiError {
    tracing::info!(key = %key.id, limit = refusal.limit_name(), "batch rate limited");
    ApiError::RateLimited(refusal)
}

/// What the lines sent really used: the sum of their answers' `usage`, priced by the model
/// each answer names. Only successful lines cost (a failed call costs nothing).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Used {
    pub tokens: u64,
    pub cost_usd: f64,
}

impl Used {
    pub fn add(&mut self, config: &Config, body: &Value) {
        let usage = &body["usage"];
        let field = |a: &str, b: &str| usage.get(a).or_else(|| usage.get(b))?.as_u64();
        let Some(prompt) = field("prompt_tokens", "input_tokens") else {
            return;
        };
        let completion = field("completion_tokens", "output_tokens").unwrap_or(0);
        self.tokens += prompt + completion;
        let model = body["model"].as_str().unwrap_or(DEFAULT_PRICE);
        if let Some(price) = config.price(model) {
            self.cost_usd += price.cost(prompt, completion);
        }
    }
}

impl Batches {
    /// Keeps a create's reservation until its batch is merged.
    pub(super) fn hold(&self, batch_id: &str, charge: Option<Charge>) {
        if let Some(charge) = charge {
            self.charges.lock().insert(batch_id.to_string(), charge);
        }
    }

    /// Settles the batch's reservation (if this process holds one) with what it used.
    pub(super) fn settle(&self, app: &App, batch_id: &str, used: Used) {
        let Some(charge) = self.charges.lock().remove(batch_id) else {
            return;
        };
        let Charge { key, reservation } = charge;
        crate::track::admit::settle(
            app,
            &key,
            reservation,
            Some(used.tokens),
            Some(used.cost_usd),
        );
    }
}

/// Settles a reservation whose batch was never made (nothing was spent).
pub fn release(app: &App, charge: Option<Charge>) {
    if let Some(Charge { key, reservation }) = charge {
        crate::track::admit::settle(app, &key, reservation, Some(0), Some(0.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Price;
    use serde_json::json;

    #[test]
    fn usage_of_chat_and_responses_answers_is_priced_by_their_model() {
        let mut config = Config::default();
        let price = Price {
            input_per_mtok: 1_000_000.0,
            output_per_mtok: 2_000_000.0,
        };
        config.pricing.insert("gpt-4o-mini".into(), price);
        let mut used = Used::default();
        used.add(
            &config,
            &json!({"model": "gpt-4o-mini-2024-07-18",
                "usage": {"prompt_tokens": 3, "completion_tokens": 4}}),
        );
        used.add(
            &config,
            &json!({"model": "gpt-4o-mini", "usage": {"input_tokens": 5, "output_tokens": 1}}),
        );
        // Unpriced: its tokens count, its dollars cannot.
        used.add(
            &config,
            &json!({"model": "other", "usage": {"prompt_tokens": 10}}),
        );
        used.add(&config, &json!({"model": "gpt-4o-mini"}));
        assert_eq!(used.tokens, 3 + 4 + 5 + 1 + 10);
        assert!((used.cost_usd - (3.0 + 8.0 + 5.0 + 2.0)).abs() < 1e-9);
    }
}
