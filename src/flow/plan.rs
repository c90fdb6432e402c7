//! Planning: what a request body is to the cache. The remembered plan of a repeated body,
//! else parse, resolve the model's alias and let the endpoint plan it (scope and exact keys,
//! the text to embed) or bypass it.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::read::parse_object;
use super::{Endpoint, Plan};
use crate::app::plans::{self, Planned, Routed};
use crate::app::{App, Snapshot};
use crate::cache::Partition;
use crate::config::Config;
use crate::error::ApiError;
use crate::flow::models;
use crate::track::estimate_tokens;

/// What planning made of a request.
pub(crate) enum Planning {
    Cache(Arc<Planned>),
    Bypass(Routed, &'static str),
}

impl Planning {
    pub(crate) fn routed(&self) -> &Routed {
        match self {
            Planning::Cache(planned) => &planned.routed,
            Planning::Bypass(routed, _) => routed,
        }
    }
}

/// Plans a request body as the proxy does. `/admin/lookup` runs this too, so it explains
/// the very key a request gets.
pub(crate) fn plan_request(
    app: &App,
    snapshot: &Snapshot,
    endpoint: &'static dyn Endpoint,
    partition: &Partition,
    raw: Bytes,
) -> Result<Planning, ApiError> {
    let epoch = snapshot.plans_epoch;
    if let Some(planned) = app.plans.get(epoch, endpoint.name(), partition, &raw) {
        return Ok(Planning::Cache(planned));
    }
    // Its own allocation: a body read from the socket may share a larger buffer, which the
    // memo would otherwise keep alive.
    let raw = if raw.len() <= plans::MAX_BODY {
        Bytes::copy_from_slice(&raw)
    } else {
        raw
    };
    let (routed, json) = route_fresh(&snapshot.config, &raw, true)?;
    match endpoint.plan(json, partition) {
        Plan::Cache(mut lookup) => {
            // Embedding and verifying a long text costs seconds and hundreds of MB.
            let longest = snapshot.config.cache.max_semantic_bytes;
            lookup.semantic_text.take_if(|text| text.len() > longest);
            let planned = Arc::new(Planned { routed, lookup });
            app.plans
                .remember(epoch, endpoint.name(), partition, raw, planned.clone());
            Ok(Planning::Cache(planned))
        }
        Plan::Bypass { reason, .. } => Ok(Planning::Bypass(routed, reason)),
    }
}

/// Parses the body and resolves its model's alias: before the cache key is computed, so an
/// alias shares its model's entries. `fallbacks`: whether the route keeps the alias's
/// fallback models (a batch line goes out once, to one model).
pub(crate) fn route_fresh(
    config: &Config,
    raw: &Bytes,
    fallbacks: bool,
) -> Result<(Routed, Value), ApiError> {
    let json = parse_object(raw, config.server.max_json_values)?;
    let model_asked = json
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string);
    let (body, json, route) = models::apply(&config.routing, raw.clone(), json, fallbacks);
    let estimate = estimate_tokens(&body, Some(&json));
    let routed = Routed {
        body,
        route,
        estimate,
        model_asked,
    };
    Ok((routed, json))
}
