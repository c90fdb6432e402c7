//! Caching `POST /v1/embeddings` for apps (deja's own prompt embedding is `embed`).
//!
//! Exact tier only, one entry per input string (an embedding of a similar text is not the same
//! embedding). The key is tenant + namespace + model + dimensions + encoding format + every
//! other request field + the text. A batch whose inputs are partly cached sends only the
//! missing inputs upstream and returns the merged list in the original order; `usage` counts
//! only what was sent.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use crate::app::App;
use crate::cache::Partition;
use crate::cache::key::{Hash32, KeyBuilder};
use crate::cache::store::StoreError;
use crate::cache::{NewEntry, Requirements};
use crate::error::ApiError;
use crate::flow::control::{self, Controls};
use crate::flow::models;
use crate::flow::{blocking, read_routed};
use crate::observe::usage::Outcome;
use crate::track::metering::metered;
use crate::track::{Tracker, estimate_tokens};
use crate::upstream::{Failed, Outgoing, cacheable_status, response_headers, stream_response};
use crate::wire::body::{ProxyBody, full};

/// Most inputs in one request, as the OpenAI API allows.
const MAX_INPUTS: usize = 2048;

/// The inputs of a cacheable embeddings request and their keys.
struct Batch {
    /// Whether `input` was a single string (answered as such upstream).
    single: bool,
    texts: Vec<String>,
    scope: Hash32,
    keys: Vec<Hash32>,
    model: String,
}

/// Reduces a request to per-input keys, or `None` when it must bypass (token arrays, no model).
fn batch(body: &Value, partition: &Partition) -> Option<Batch> {
    let object = body.as_object()?;
    let model = object.get("model")?.as_str()?.to_string();
    let (single, texts) = match object.get("input")? {
        Value::String(text) => (true, vec![text.clone()]),
        // Past OpenAI's own maximum the upstream refuses the batch: no per-input work for it.
        Value::Array(items) if !items.is_empty() && items.len() <= MAX_INPUTS => (
            false,
            items
                .iter()
                .map(|item| item.as_str().map(String::from))
                .collect::<Option<Vec<_>>>()?,
        ),
        _ => return None,
    };
    let mut scope = KeyBuilder::new("embeddings");
    scope
        .part(&partition.tenant)
        .part(&partition.namespace)
        .part(&model)
        .part(
            object
                .get("encoding_format")
                .and_then(Value::as_str)
                .unwrap_or("float"),
        );
    for (name, value) in object {
        // `user` identifies the caller only; the rest (e.g. `dimensions`) shapes the vector.
        if !matches!(
            name.as_str(),
            "model" | "input" | "encoding_format" | "user"
        ) {
            scope.json(name, value);
        }
    }
    let scope = scope.finish();
    let keys = texts
        .iter()
        .map(|text| {
            KeyBuilder::new("exact")
                .bytes(scope.as_bytes())
                .part(text)
                .finish()
        })
        .collect();
    Some(Batch {
        single,
        texts,
        scope,
        keys,
        model,
    })
}

pub async fn handle(
    app: Arc<App>,
    request: Request<Incoming>,
    suffix: String,
    tracker: &Tracker,
) -> Result<Response<ProxyBody>, ApiError> {
    let (parts, body) = request.into_parts();
    // Aliases only: another model's vectors would not be comparable, so no fallbacks here.
    let (bytes, json, controls, route) = read_routed(body, &parts, tracker, false).await?;
    let response = respond(app, parts, bytes, json, controls, suffix, tracker).await?;
    Ok(models::label(response, route.as_ref()))
}

async fn respond(
    app: Arc<App>,
    parts: http::request::Parts,
    bytes: Bytes,
    json: Value,
    controls: Controls,
    suffix: String,
    tracker: &Tracker,
) -> Result<Response<ProxyBody>, ApiError> {
    let partition = control::partition_for(
        &parts.headers,
        tracker.config().cache.shared,
        &controls.namespace,
        tracker.key(),
    );
    let out = Outgoing {
        method: &parts.method,
        suffix: &suffix,
        headers: &parts.headers,
        parse_body: true,
    };
    let send = |body: Bytes| async {
        // Embeddings have no completion; the prompt estimate is the body's size.
        tracker
            .reserve(estimate_tokens(&body, None))
            .await
            .map_err(|error| Failed {
                error,
                retries: Vec::new(),
            })?;
        let sent = Instant::now();
        let result = models::send(&app, tracker.config(), &out, body, None).await;
        tracker.upstream_call(sent, &result);
        result
    };
    let (Some(cache), Some(batch)) = (app.cache.clone(), batch(&json, &partition)) else {
        let reason = if app.cache.is_none() {
            "cache_off"
        } else {
            "unreadable"
        };
        tracker.update(|r| {
            r.cache = Outcome::Bypass;
            r.bypass_reason = Some(reason);
        });
        let sent = send(bytes).await.map_err(|failed| failed.error)?;
        return Ok(metered(
            stream_response(sent.response, Some("bypass")),
            tracker,
            false,
        ));
    };

    let mut cached = cached_items(&cache, &batch, &controls).await;
    let missing: Vec<usize> = (0..cached.len()).filter(|&i| cached[i].is_none()).collect();
    let hits = cached.len() - missing.len();
    tracker.outcome(if missing.is_empty() {
        Outcome::HitExact
    } else {
        Outcome::Miss
    });
    tracing::info!(endpoint = "embeddings", model = %batch.model, inputs = cached.len(), cached = hits, "request");
    if missing.is_empty() {
        let body = all_cached(cached, &batch.model);
        return Ok(answer(
            StatusCode::OK,
            http::HeaderMap::new(),
            body,
            "hit",
            hits,
            &batch,
        ));
    }

    // Ask upstream only for what is missing.
    let mut partial = json.clone();
    partial["input"] = if batch.single {
        json!(batch.texts[0])
    } else {
        json!(missing.iter().map(|&i| &batch.texts[i]).collect::<Vec<_>>())
    };
    let upstream = send(Bytes::from(partial.to_string()))
        .await
        .map_err(|failed| failed.error)?
        .response;
    let status = upstream.status();
    if !cacheable_status(status) {
        return Ok(stream_response(upstream, Some("miss")));
    }
    let headers = upstream.headers().clone();
    let body = upstream
        .bytes()
        .await
        .map_err(|err| ApiError::UpstreamUnreachable(err.to_string()))?;
    let Some(mut fresh) = fresh_items(&body, missing.len()) else {
        // Not the shape we expected: give the caller exactly what upstream said.
        let mut response = Response::new(full(body));
        *response.status_mut() = status;
        *response.headers_mut() = response_headers(&headers, Some("miss"));
        return Ok(response);
    };
    let parsed: Value = serde_json::from_slice(&body).unwrap_or_default();
    tracker.update(|r| r.take_usage(&parsed));
    if !controls.no_store {
        store(&cache, &batch, &missing, &fresh, partition.clone()).await;
    }
    for (&i, item) in missing.iter().zip(fresh.iter_mut()) {
        cached[i] = Some(std::mem::take(item));
    }
    let model = parsed["model"].as_str().unwrap_or(&batch.model);
    let usage = parsed.get("usage").cloned().unwrap_or(Value::Null);
    let merged = list(cached.into_iter().flatten().collect(), model, usage);
    Ok(answer(status, headers, merged, "miss", hits, &batch))
}

/// Each input's cached item (`None`: not cached, or `Cache-Control: no-cache`). A failed
/// lookup is a miss.
async fn cached_items(
    cache: &Arc<crate::cache::Cache>,
    batch: &Batch,
    controls: &Controls,
) -> Vec<Option<Value>> {
    let mut cached: Vec<Option<Value>> = vec![None; batch.texts.len()];
    if controls.no_cache {
        return cached;
    }
    let needs = Requirements {
        max_age_ms: controls.max_age_secs.map(|s| s.saturating_mul(1000)),
        needs_usage: false,
    };
    let keys = batch.keys.clone();
    let found = blocking(cache, move |c| {
        keys.iter()
            .map(|key| c.lookup_exact(key, needs))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .unwrap_or_default();
    for (slot, hit) in cached.iter_mut().zip(found) {
        *slot = hit.and_then(|hit| serde_json::from_str(&hit.entry.response).ok());
    }
    cached
}

/// The answer to a request whose every input was cached (nothing was sent, so no usage).
fn all_cached(cached: Vec<Option<Value>>, model: &str) -> Value {
    let data = cached.into_iter().flatten().collect();
    list(data, model, json!({"prompt_tokens": 0, "total_tokens": 0}))
}

/// The Batch API's use of this cache (`crate::batch`): a batch line is looked up and stored
/// with the same keys and entries as the synchronous call.
pub(crate) mod for_batches {
    use super::*;
    use serde::{Deserialize, Serialize};

    /// What a line sent upstream needs for its answer to be stored per input.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct InputKeys {
        scope: [u8; 32],
        keys: Vec<[u8; 32]>,
        model: String,
    }

    pub enum Looked {
        /// Every input is cached: the synchronous call's answer to the line.
        Answered(Value),
        /// Some input is not: send the line; `Some` to store its answer.
        Missing(Option<InputKeys>),
        /// Not cacheable (token inputs, no model): sent as it is.
        Bypass,
    }

    /// Looks the line's request up as the synchronous call would.
    pub async fn lookup(
        cache: &Arc<crate::cache::Cache>,
        json: &Value,
        partition: &Partition,
        controls: &Controls,
    ) -> Looked {
        let Some(batch) = batch(json, partition) else {
            return Looked::Bypass;
        };
        let cached = cached_items(cache, &batch, controls).await;
        if cached.iter().all(Option::is_some) {
            return Looked::Answered(all_cached(cached, &batch.model));
        }
        let keys = (!controls.no_store).then(|| InputKeys {
            scope: batch.scope.0,
            keys: batch.keys.iter().map(|key| key.0).collect(),
            model: batch.model.clone(),
        });
        Looked::Missing(keys)
    }

    /// Stores a line's successful answer per input; false when it is not one item per input.
    pub async fn store_answer(
        cache: &Arc<crate::cache::Cache>,
        keys: &InputKeys,
        owner: Partition,
        answer: &Value,
    ) -> bool {
        let Some(fresh) = fresh_items(answer.to_string().as_bytes(), keys.keys.len()) else {
            return false;
        };
        let batch = Batch {
            single: false,
            texts: Vec::new(),
            scope: Hash32(keys.scope),
            keys: keys.keys.iter().copied().map(Hash32).collect(),
            model: keys.model.clone(),
        };
        let all: Vec<usize> = (0..fresh.len()).collect();
        store(cache, &batch, &all, &fresh, owner).await;
        true
    }
}

/// The `data` items of an upstream answer, ordered by `index`, without it; `None` unless
/// there is exactly one per input sent.
fn fresh_items(body: &[u8], expected: usize) -> Option<Vec<Value>> {
    let parsed: Value = serde_json::from_slice(body).ok()?;
    let mut items: Vec<(u64, Value)> = parsed
        .get("data")?
        .as_array()?
        .iter()
        .map(|item| {
            let index = item.get("index")?.as_u64()?;
            let mut item = item.as_object()?.clone();
            item.remove("index");
            Some((index, Value::Object(item)))
        })
        .collect::<Option<_>>()?;
    items.sort_by_key(|(index, _)| *index);
    let in_order = items
        .iter()
        .enumerate()
        .all(|(i, (index, _))| *index == i as u64);
    (items.len() == expected && in_order).then(|| items.into_iter().map(|(_, v)| v).collect())
}

/// Stores the fresh items before the answer goes out, so a repeat sent after it hits.
async fn store(
    cache: &Arc<crate::cache::Cache>,
    batch: &Batch,
    missing: &[usize],
    fresh: &[Value],
    owner: Partition,
) {
    let entries: Vec<NewEntry> = missing
        .iter()
        .zip(fresh)
        .map(|(&i, item)| NewEntry {
            scope: batch.scope,
            exact: batch.keys[i],
            model: batch.model.clone(),
            response: item.to_string(),
            has_usage: false,
            vector: None,
            prompt: None,
            owner: owner.clone(),
        })
        .collect();
    let cache = cache.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for entry in entries {
            match cache.insert(entry) {
                Ok(_) | Err(StoreError::Oversized) => {}
                // Disk trouble is warned about once, by the cache itself.
                Err(StoreError::WritesOff) => return,
                Err(err) => {
                    tracing::warn!(error = %err, "cache store failed; embedding not cached");
                    return;
                }
            }
        }
    })
    .await;
}

fn list(items: Vec<Value>, model: &str, usage: Value) -> Value {
    let data: Vec<Value> = items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let mut item: Map<String, Value> = item.as_object().cloned().unwrap_or_default();
            item.insert("index".into(), json!(index));
            Value::Object(item)
        })
        .collect();
    json!({"object": "list", "data": data, "model": model, "usage": usage})
}

fn answer(
    status: StatusCode,
    upstream_headers: http::HeaderMap,
    body: Value,
    outcome: &'static str,
    hits: usize,
    batch: &Batch,
) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let mut headers = response_headers(&upstream_headers, Some(outcome));
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        crate::wire::headers::CACHE,
        HeaderValue::from_static(outcome),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("{hits}/{}", batch.texts.len())) {
        headers.insert(crate::wire::headers::CACHED_INPUTS, value);
    }
    *response.headers_mut() = headers;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition() -> Partition {
        Partition::of_tenant("t")
    }

    #[test]
    fn keys_depend_on_everything_but_user() {
        let base = json!({"model": "e", "input": ["a", "b"], "dimensions": 256});
        let a = batch(&base, &partition()).unwrap();
        assert_eq!(a.keys.len(), 2);
        assert_ne!(a.keys[0], a.keys[1]);
        let mut with_user = base.clone();
        with_user["user"] = json!("u1");
        assert_eq!(batch(&with_user, &partition()).unwrap().keys, a.keys);
        let mut other_dims = base.clone();
        other_dims["dimensions"] = json!(512);
        assert_ne!(batch(&other_dims, &partition()).unwrap().keys[0], a.keys[0]);
        let mut base64 = base.clone();
        base64["encoding_format"] = json!("base64");
        assert_ne!(batch(&base64, &partition()).unwrap().keys[0], a.keys[0]);
        let single = batch(
            &json!({"model": "e", "input": "a", "dimensions": 256}),
            &partition(),
        )
        .unwrap();
        assert!(single.single);
        assert_eq!(
            single.keys[0], a.keys[0],
            "a string and a one-item list share entries"
        );
    }

    #[test]
    fn token_inputs_bypass() {
        assert!(batch(&json!({"model": "e", "input": [[1, 2]]}), &partition()).is_none());
        assert!(batch(&json!({"model": "e", "input": []}), &partition()).is_none());
        assert!(batch(&json!({"input": "a"}), &partition()).is_none());
    }

    #[test]
    fn fresh_items_are_ordered_and_counted() {
        let body = br#"{"data":[{"index":1,"embedding":[2]},{"index":0,"embedding":[1]}]}"#;
        let items = fresh_items(body, 2).unwrap();
        assert_eq!(items[0], json!({"embedding": [1]}));
        assert!(fresh_items(body, 3).is_none());
    }
}
