//! Follows one request from arrival to the last byte of its response, then settles it: cost
//! and savings from the pricing table, the key's token/budget reservation, the metrics and the
//! usage log. The handle is shared (a stream's pump task fills in the tokens after the
//! handler has returned); the record is finished when the last holder lets go, which for a
//! response is when its body has been sent or dropped.
//!
//! Every request goes through this folder whatever its endpoint (cached, relayed, tunnelled,
//! batched): `admit` checks a managed key's limits before it goes on, `metering` reads the
//! real usage from the answer, and the `Tracker` settles both.

pub mod admit;
pub mod metering;

use std::sync::Arc;

use http::Response;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use serde_json::Value;

use crate::app::App;
use crate::config::{Config, DEFAULT_PRICE, KeyConfig};
use crate::error::ApiError;
use crate::error::refusal::Refusal;
use crate::managed::limits::Reservation;
use crate::observe::usage::{Outcome, Record};
use crate::wire::body::ProxyBody;
use crate::wire::endpoint::EndpointName;

#[derive(Clone)]
pub struct Tracker(Arc<Inner>);

struct Inner {
    app: Arc<App>,
    /// The configuration the request runs under (prices, upstream, cache settings): taken
    /// once, so a reload mid-request cannot mix two.
    config: Arc<Config>,
    key: Option<Arc<KeyConfig>>,
    record: Mutex<Record>,
    reservation: Mutex<Option<Reservation>>,
}

impl Tracker {
    pub fn new(
        app: Arc<App>,
        config: Arc<Config>,
        endpoint: EndpointName,
        key: Option<Arc<KeyConfig>>,
    ) -> Tracker {
        let mut record = Record::new(endpoint, app.now_ms());
        if let Some(key) = &key {
            record.key_id = Some(key.id.clone());
            record.tenant = Some(key.tenant().to_string());
        }
        Tracker(Arc::new(Inner {
            app,
            config,
            key,
            record: Mutex::new(record),
            reservation: Mutex::new(None),
        }))
    }

    /// The configuration this request runs under.
    pub fn config(&self) -> &Arc<Config> {
        &self.0.config
    }

    /// The managed key the request came with.
    pub fn key(&self) -> Option<&KeyConfig> {
        self.0.key.as_deref()
    }

    pub fn update(&self, change: impl FnOnce(&mut Record)) {
        change(&mut self.0.record.lock());
    }

    /// Notes an upstream call: its time and the retries it took (whatever its result).
    pub fn upstream_call(
        &self,
        started: std::time::Instant,
        result: &Result<crate::upstream::Sent, crate::upstream::Failed>,
    ) {
        let retries = match result {
            Ok(sent) => &sent.retries,
            Err(failed) => &failed.retries,
        };
        self.update(|r| {
            r.upstream_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            r.retries = retries.len() as u32;
            r.retry_causes = retries.iter().map(|cause| cause.label()).collect();
        });
    }

    pub fn outcome(&self, outcome: Outcome) {
        self.update(|r| r.cache = outcome);
    }

    /// True for a managed key with a tokens-per-minute limit or a budget: its upstream calls
    /// must be settled from what they really used.
    pub fn limited(&self) -> bool {
        self.0
            .key
            .as_ref()
            .is_some_and(|key| key.tpm > 0 || key.budget_usd.is_some())
    }

    /// Before an upstream call: sets aside the tokens and dollars the request may use
    /// (`estimate_tokens`). Only managed keys have limits; a refusal marks the record. A key
    /// with a budget may not call a model deja has no price for (nor, without a default
    /// price, a relayed path, whose model deja does not read).
    /// With `[redis]`, the limits are the cluster's (`crate::track::admit`).
    pub async fn reserve(&self, estimate: (u64, u64)) -> Result<(), ApiError> {
        let Some(key) = &self.0.key else {
            return Ok(());
        };
        if !self.limited() {
            return Ok(());
        }
        let (prompt, completion) = estimate;
        let model = {
            let record = self.0.record.lock();
            record
                .model_used
                .clone()
                .or_else(|| record.model_asked.clone())
        };
        let price = self
            .0
            .config
            .price(model.as_deref().unwrap_or(DEFAULT_PRICE));
        if key.budget_usd.is_some() && price.is_none() {
            let what = model.map_or_else(
                || "calls deja relays without reading".to_string(),
                |model| format!("the model {model}"),
            );
            tracing::info!(key = %key.id, "refused: no price under a budget");
            self.update(|r| r.cache = Outcome::Error);
            return Err(ApiError::Unpriced(what));
        }
        let cost = price.map_or(0.0, |price| price.cost(prompt, completion));
        let reserved = crate::track::admit::reserve(&self.0.app, key, prompt + completion, cost);
        match reserved.await {
            Ok(reservation) => {
                *self.0.reservation.lock() = Some(reservation);
                Ok(())
            }
            Err(refusal) => Err(self.refused(refusal)),
        }
    }

    /// A per-key limit turned the request down: logged, marked in the record, and the 429.
    pub fn refused(&self, refusal: Refusal) -> ApiError {
        let key = self.0.key.as_ref().map_or("", |key| key.id.as_str());
        tracing::info!(key, limit = refusal.limit_name(), "rate limited");
        self.update(|r| {
            r.cache = Outcome::RateLimited;
            r.limit = Some(refusal.limit_name());
        });
        ApiError::RateLimited(refusal)
    }

    /// Keeps the request open until `response`'s body has been sent (or dropped), and
    /// records its status.
    pub fn attach(self, mut response: Response<ProxyBody>) -> Response<ProxyBody> {
        let status = response.status().as_u16();
        self.update(|r| r.status = status);
        let body = std::mem::replace(response.body_mut(), crate::wire::body::full(""));
        let holder = self;
        *response.body_mut() = body
            .map_frame(move |frame| {
                let _keep_open = &holder;
                frame
            })
            .boxed_unsync();
        response
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let mut record =
            std::mem::replace(self.record.get_mut(), Record::new(EndpointName::Relay, 0));
        record.latency_ms = record.started.elapsed().as_secs_f64() * 1000.0;
        if record.model_used.is_none() {
            record.model_used = record.model_asked.clone();
        }
        let model = record.model_used.as_ref().or(record.model_asked.as_ref());
        let price = self
            .config
            .price(model.map_or(DEFAULT_PRICE, String::as_str));
        let cost = match (price, record.prompt_tokens) {
            (Some(price), Some(prompt)) => {
                Some(price.cost(prompt, record.completion_tokens.unwrap_or(0)))
            }
            _ => None,
        };
        if record.cache.is_hit() {
            record.saved_usd = cost;
        } else if record.upstream_ms.is_some() && record.status < 400 {
            record.cost_usd = cost;
        }
        if let (Some(reservation), Some(key)) = (self.reservation.get_mut().take(), &self.key) {
            let tokens = record
                .prompt_tokens
                .map(|p| p + record.completion_tokens.unwrap_or(0));
            // A failed call costs nothing; an unknown usage keeps the estimate.
            let cost = if record.status >= 400 {
                Some(0.0)
            } else {
                record.cost_usd
            };
            let tokens = if record.status >= 400 {
                Some(0)
            } else {
                tokens
            };
            crate::track::admit::settle(&self.app, key, reservation, tokens, cost);
        }
        self.app.metrics.observe(&record);
        self.app.usage.write(&record);
        // The dashboard's totals, recent lookups and threshold replay (src/ops/dashboard/).
        self.app.dashboard.record(record, &self.config);
    }
}

/// Tokens a request may use: its prompt at ~4 bytes a token (the body's size, an upper bound
/// that needs no tokenizer) and its `max_tokens` (or `max_completion_tokens`,
/// `max_output_tokens`; 0 when absent, settled from the real usage afterwards).
pub fn estimate_tokens(body: &[u8], json: Option<&Value>) -> (u64, u64) {
    let prompt = (body.len() as u64).div_ceil(4);
    let completion = json
        .and_then(|json| {
            ["max_completion_tokens", "max_tokens", "max_output_tokens"]
                .iter()
                .find_map(|field| json.get(field)?.as_u64())
        })
        .unwrap_or(0);
    (prompt, completion)
}
