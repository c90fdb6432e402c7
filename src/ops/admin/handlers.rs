//! The admin calls. Cache work runs on the blocking pool; a missing cache (caching off or the
//! store failed to open) is a 503, not a crash.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::{error, json_response};
use crate::app::App;
use crate::cache::Cache;
use crate::cache::admin::{Neighbour, Selector};
use crate::endpoints::cached_endpoint;
use crate::flow::control::partition_for;
use crate::flow::{Ask, Decision, Planning, Vectors, decide, plan_request};
use crate::observe::metrics::CacheGauges;
use crate::wire::body::ProxyBody;

/// Neighbours listed by `/admin/lookup` when the call does not say.
const DEFAULT_K: usize = 5;
const MAX_K: usize = 100;

pub fn metrics(app: &App) -> Response<ProxyBody> {
    let gauges = app
        .cache
        .as_ref()
        .map_or_else(CacheGauges::default, |cache| {
            let backlog = cache.index_backlog();
            CacheGauges {
                entries: cache.entries() as u64,
                indexed: cache.indexed() as u64,
                write_failures: cache.write_failures(),
                writes_skipped: cache.writes_skipped(),
                writes_enabled: cache.writes_enabled(),
                oversized_skipped: cache.oversized_skipped(),
                index_pending: backlog.pending as u64,
                index_deferred: backlog.deferred as u64,
                index_deferred_total: cache.index_deferred_total(),
            }
        });
    app.replica_metrics.update(app.replica.get().map(|r| &**r)); // `[redis]` series
    let mut response = Response::new(crate::wire::body::full(app.trust.metrics(
        &app.config(),
        app.metrics.render(gauges, app.usage.dropped()),
    )));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

pub fn stats(app: &App) -> Response<ProxyBody> {
    let config = app.config();
    let now = app.now_ms();
    let keys: Vec<Value> = config
        .keys
        .iter()
        .map(|key| {
            let state = app.limits.state(key, now);
            json!({
                "id": key.id,
                "tenant": key.tenant(),
                "rpm": key.rpm,
                "tpm": key.tpm,
                "remaining_requests": state.requests.map(|w| w.remaining),
                "remaining_tokens": state.tokens.map(|w| w.remaining),
                "budget_usd": key.budget_usd,
                "spent_usd": key.budget_usd.map(|_| app.limits.spent_usd(key, now)),
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({
            "cache": app.cache.as_ref().map(|cache| json!({
                "entries": cache.entries(),
                "indexed": cache.indexed(),
                "writes_enabled": cache.writes_enabled(),
                "write_failures": cache.write_failures(),
            })),
            "similarity_threshold": config.cache.similarity_threshold,
            "model_thresholds": config.cache.model_thresholds,
            "ttl_secs": config.cache.ttl_secs,
            "managed": config.managed(),
            "keys": keys,
            "usage_log_dropped": app.usage.dropped(),
            "trust": app.trust.stats(&config),
        }),
    )
}

/// What a request would get, and its nearest neighbours with their similarities:
/// `{"path": "/v1/chat/completions", "body": {...}, "key_id" | "authorization", "namespace",
/// "k"}`. The request is planned and decided by the proxy's own code (`flow::decide`,
/// without joining twins in flight), so this explains what a request really gets.
pub async fn lookup(app: &Arc<App>, call: Value) -> Response<ProxyBody> {
    let Some(cache) = app.cache.clone() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "caching is off");
    };
    let snapshot = app.snapshot();
    let config = snapshot.config.clone();
    let path = call["path"].as_str().unwrap_or("/v1/chat/completions");
    let Some(endpoint) = path
        .strip_prefix("/v1")
        .and_then(|p| cached_endpoint(&config, p))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("{path} is not a cached endpoint"),
        );
    };
    let body = call["body"].clone();
    if !body.is_object() {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be the request's JSON object",
        );
    }
    let key = match call["key_id"].as_str() {
        Some(id) => match config.keys.iter().find(|k| k.id == id) {
            Some(key) => Some(key.clone()),
            None => return error(StatusCode::NOT_FOUND, &format!("no key with id {id}")),
        },
        None => None,
    };
    let mut headers = HeaderMap::new();
    if let Some(auth) = call["authorization"].as_str() {
        match HeaderValue::from_str(auth) {
            Ok(value) => headers.insert(header::AUTHORIZATION, value),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "authorization is not a header value",
                );
            }
        };
    }
    let namespace = call["namespace"].as_str().unwrap_or("");
    let k = call["k"]
        .as_u64()
        .map_or(DEFAULT_K, |k| (k as usize).clamp(1, MAX_K));
    let partition = partition_for(&headers, config.cache.shared, namespace, key.as_ref());
    let raw = bytes::Bytes::from(body.to_string());
    let planned = match plan_request(app, &snapshot, endpoint, &partition, raw) {
        Ok(Planning::Cache(planned)) => planned,
        Ok(Planning::Bypass(_, reason)) => {
            return json_response(
                StatusCode::OK,
                json!({"endpoint": endpoint.name(), "cacheable": false, "reason": reason}),
            );
        }
        Err(err) => return error(StatusCode::BAD_REQUEST, &err.to_string()),
    };
    let lookup = &planned.lookup;
    let auth = headers.get(header::AUTHORIZATION);
    let vectors = match &app.embedder {
        Some(embedder) => Vectors::Embedder(embedder, auth),
        None => Vectors::None,
    };
    // As the proxy asks for a request without cache-control headers.
    let threshold = config.cache.threshold_for(&lookup.model);
    let decided = decide(Ask {
        cache: &cache,
        lookup,
        needs: lookup.needs(None),
        threshold,
        no_cache: false,
        embed: config.cache.semantic,
        vectors,
        inflight: None,
        inline: false,
    })
    .await;
    let now = app.now_ms();
    let (exact, would_hit, explained) = match &decided.decision {
        Decision::Hit { hit, .. } => {
            let found = json!({"id": hit.id, "age_secs": hit.entry.age_secs(now)});
            let explained = json!({"cache": "hit", "match": if hit.semantic { "semantic" } else { "exact" },
                "entry": hit.id, "similarity": hit.similarity});
            match hit.semantic {
                true => (Value::Null, Some(hit.id), explained),
                false => (found, None, explained),
            }
        }
        Decision::Miss { near, .. } => {
            if let Some(err) = &near.embed_failed {
                return error(StatusCode::BAD_GATEWAY, &format!("embedding failed: {err}"));
            }
            let explained = json!({"cache": "miss", "best_similarity": near.best,
                "verify_rejected": near.rejected, "semantic_skipped": near.skipped});
            (Value::Null, None, explained)
        }
        // Neither happens without twins or controls; reported as they are all the same.
        Decision::Coalesced(_) => (
            Value::Null,
            None,
            json!({"cache": "hit", "match": "coalesced"}),
        ),
        Decision::Bypass(reason) => (
            Value::Null,
            None,
            json!({"cache": "bypass", "reason": reason}),
        ),
    };
    // The neighbours list is for tuning: it needs the prompt's vector, which an exact hit
    // did not make.
    let vector = match (decided.vector, &lookup.semantic_text, &app.embedder) {
        (Some(vector), _, _) => Some(vector),
        (None, Some(text), Some(embedder)) if matches!(decided.decision, Decision::Hit { .. }) => {
            match embedder.embed(text, auth).await {
                Ok(vector) => Some(vector),
                Err(err) => {
                    return error(StatusCode::BAD_GATEWAY, &format!("embedding failed: {err}"));
                }
            }
        }
        _ => None,
    };
    let mut semantic = Value::Null;
    if let Some(vector) = vector {
        let scope = lookup.scope;
        let query = lookup.semantic_text.clone().unwrap_or_default();
        let needs = lookup.needs(None);
        let found = blocking(&cache, move |c| {
            c.neighbours(&scope, &vector, &query, k, needs)
        })
        .await;
        let neighbours = match found {
            Ok(neighbours) => neighbours,
            Err(response) => return response,
        };
        semantic = json!({
            "would_hit": would_hit,
            "neighbours": neighbours.iter().map(|n| describe(n, now)).collect::<Vec<_>>(),
        });
    }
    json_response(
        StatusCode::OK,
        json!({
            "endpoint": endpoint.name(),
            "cacheable": true,
            "model": lookup.model,
            "scope": lookup.scope.short(),
            "threshold": threshold,
            "decision": explained,
            "exact": exact,
            "semantic": semantic,
        }),
    )
}

fn describe(n: &Neighbour, now_ms: u64) -> Value {
    json!({
        "id": n.id,
        "similarity": n.similarity,
        "verified": n.verified,
        "usable": n.usable,
        "model": n.entry.model,
        "prompt": n.entry.prompt,
        "age_secs": n.entry.age_secs(now_ms),
    })
}

pub async fn entry(app: &App, id: u64) -> Response<ProxyBody> {
    let Some(cache) = app.cache.clone() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "caching is off");
    };
    let now = app.now_ms();
    match blocking(&cache, move |c| {
        Ok(c.get(id)?.map(|e| (e, c.hit_count(id))))
    })
    .await
    {
        Ok(Some((entry, hits))) => json_response(
            StatusCode::OK,
            json!({
                "id": id,
                "hits": hits,
                "model": entry.model,
                "tenant": entry.owner.tenant,
                "namespace": entry.owner.namespace,
                "prompt": entry.prompt,
                "age_secs": entry.age_secs(now),
                "expires_in_secs": entry.expires_ms.saturating_sub(now) / 1000,
                "has_usage": entry.has_usage,
                "response": serde_json::from_str::<Value>(&entry.response).unwrap_or(Value::Null),
            }),
        ),
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no entry {id}")),
        Err(response) => response,
    }
}

pub async fn delete_entry(app: &App, id: u64) -> Response<ProxyBody> {
    let Some(cache) = app.cache.clone() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "caching is off");
    };
    match blocking(&cache, move |c| c.remove(id)).await {
        Ok(true) => {
            tracing::info!(entry = id, "entry deleted by admin");
            json_response(StatusCode::OK, json!({"deleted": 1}))
        }
        Ok(false) => error(StatusCode::NOT_FOUND, &format!("no entry {id}")),
        Err(response) => response,
    }
}

/// `{"key_id" | "tenant", "namespace", "model"}` (all that are given must match), or
/// `{"all": true}`.
pub async fn purge(app: &App, call: Value) -> Response<ProxyBody> {
    let Some(cache) = app.cache.clone() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "caching is off");
    };
    let config = app.config();
    let text = |field: &str| call[field].as_str().map(str::to_string);
    let mut selector = Selector {
        tenant: text("tenant"),
        namespace: text("namespace"),
        model: text("model"),
    };
    if let Some(id) = call["key_id"].as_str() {
        let Some(key) = config.keys.iter().find(|k| k.id == id) else {
            return error(StatusCode::NOT_FOUND, &format!("no key with id {id}"));
        };
        selector.tenant = Some(format!("key:{}", key.tenant()));
    }
    let everything =
        selector.tenant.is_none() && selector.namespace.is_none() && selector.model.is_none();
    if everything && call["all"] != Value::Bool(true) {
        return error(
            StatusCode::BAD_REQUEST,
            "say what to purge (key_id, tenant, namespace, model) or {\"all\": true}",
        );
    }
    let log = format!("{selector:?}");
    match blocking(&cache, move |c| c.purge(&selector)).await {
        Ok(deleted) => {
            tracing::info!(deleted, selector = %log, "entries purged by admin");
            json_response(StatusCode::OK, json!({"deleted": deleted}))
        }
        Err(response) => response,
    }
}

pub async fn reload(app: &Arc<App>) -> Response<ProxyBody> {
    let app = app.clone();
    match tokio::task::spawn_blocking(move || super::reload::reload(&app)).await {
        Ok(Ok(report)) => json_response(
            StatusCode::OK,
            json!({"reloaded": true, "needs_restart": report.needs_restart}),
        ),
        Ok(Err(err)) => error(StatusCode::BAD_REQUEST, &err.to_string()),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
    }
}

async fn blocking<T, F>(cache: &Arc<Cache>, work: F) -> Result<T, Response<ProxyBody>>
where
    T: Send + 'static,
    F: FnOnce(&Cache) -> Result<T, crate::cache::store::StoreError> + Send + 'static,
{
    let cache = cache.clone();
    match tokio::task::spawn_blocking(move || work(&cache)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("cache: {err}"),
        )),
        Err(err) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string())),
    }
}
