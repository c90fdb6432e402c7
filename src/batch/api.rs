//! The calls deja answers itself: `POST /v1/batches` (for an endpoint deja caches),
//! `GET /v1/batches` (the caller's batches made through deja), `GET /v1/batches/{id}` and
//! `POST /v1/batches/{id}/cancel` for deja's batch ids, `GET`/`DELETE /v1/files/{id}` and
//! `GET /v1/files/{id}/content` for deja's file ids, and `GET /v1/files` (with deja's files
//! in it). Everything else is relayed.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::lines::{Asker, Target};
use super::run::{self, Create, RunError};
use super::upstream::{self, call_headers};
use super::{BATCH_PREFIX, Batches, FILE_PREFIX, Kept};
use crate::app::App;
use crate::config::KeyConfig;
use crate::endpoints::cached_endpoint;
use crate::error::ApiError;
use crate::flow::control::{self, Controls};
use crate::managed::keys::{BILLING_HEADERS, CREDENTIAL_HEADERS};
use crate::managed::limits::insert_headers;
use crate::wire::body::{ProxyBody, full};

/// Whether deja answers `method path` (after `/v1`) itself.
pub fn owns(method: &Method, path: &str) -> bool {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::POST | &Method::GET, ["batches"]) | (&Method::GET, ["files"]) => true,
        (&Method::GET, ["batches", id]) | (&Method::POST, ["batches", id, "cancel"]) => {
            id.starts_with(BATCH_PREFIX)
        }
        (&Method::GET | &Method::DELETE, ["files", id])
        | (&Method::GET, ["files", id, "content"]) => id.starts_with(FILE_PREFIX),
        _ => false,
    }
}

/// Serves a call `owns` accepted; `suffix` is the path after `/v1` with its query.
pub async fn route(
    app: Arc<App>,
    store: Arc<Batches>,
    request: Request<Incoming>,
    path: &str,
    suffix: &str,
) -> Result<Response<ProxyBody>, ApiError> {
    let config = app.config().clone();
    let (mut parts, body) = request.into_parts();
    let key = if config.managed() {
        let key = app
            .keys()
            .authenticate(&parts.headers)
            .ok_or(ApiError::InvalidApiKey)?;
        for header in CREDENTIAL_HEADERS.iter().chain(&BILLING_HEADERS) {
            parts.headers.remove(header);
        }
        Some(key)
    } else {
        None
    };
    let served = serve(&app, &store, parts, body, key.as_ref(), path, suffix).await;
    let mut response = served.unwrap_or_else(ApiError::into_response);
    if let Some(key) = &key {
        let state = app.limits.state(key, app.now_ms());
        insert_headers(response.headers_mut(), &state);
    }
    Ok(response)
}

async fn serve(
    app: &Arc<App>,
    store: &Arc<Batches>,
    parts: http::request::Parts,
    body: Incoming,
    key: Option<&Arc<KeyConfig>>,
    path: &str,
    suffix: &str,
) -> Result<Response<ProxyBody>, ApiError> {
    let config = app.config().clone();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let kept = Kept::now(app);
    let creating = parts.method == Method::POST && segments == ["batches"];
    // Every call counts one request of the key's `rpm`, as any call does; a create deja
    // handles counts the lines it sends instead (`charge`).
    if let Some(key) = key
        && !creating
    {
        admit_one(app, key).await?;
    }
    // Whose batch: the caller's credentials (also with `cache.shared`).
    let tenant = control::partition_for(&parts.headers, false, "", key.map(|k| &**k)).tenant;
    let headers = call_headers(&parts.headers);
    let method = parts.method.clone();
    let query = suffix.split_once('?').map(|(_, q)| q).unwrap_or_default();
    match (method, segments.as_slice()) {
        (Method::GET, ["batches"]) => list(store, &tenant, query, kept).await,
        (Method::GET, ["files"]) => {
            let caller = &parts.headers;
            Ok(super::files::list(app, store, caller, &headers, &tenant, suffix, kept).await)
        }
        (Method::POST, ["batches"]) => {
            let controls = Controls::from_headers(&parts.headers)?;
            let partition = control::partition_for(
                &parts.headers,
                config.cache.shared,
                &controls.namespace,
                key.map(|k| &**k),
            );
            let (raw, _) = crate::flow::read_checked(body, &parts.headers, &config.server).await?;
            let Some((create, target)) = read_create(app, &raw)? else {
                // A batch of an endpoint deja does not cache: the upstream's own.
                if let Some(key) = key {
                    admit_one(app, key).await?;
                }
                return Ok(
                    upstream::forward(app, &parts.headers, &Method::POST, suffix, raw).await,
                );
            };
            let snapshot = app.snapshot();
            let asker = Asker {
                app,
                snapshot: &snapshot,
                target,
                url: &create.endpoint.clone(),
                partition: &partition,
                controls: &controls,
                headers: &headers,
                key,
            };
            match run::create(store, &asker, tenant, create).await {
                // Relayed, its lines could not count against a key's limits: refused instead.
                Err(RunError::TooLarge) if key.is_some_and(|k| super::charge::has_limits(k)) => {
                    Err(ApiError::invalid(
                        "The batch input file is larger than this proxy reads \
                         (server.max_body_bytes), so its requests cannot be counted against \
                         your key's limits. Split it into smaller files.",
                        Some("input_file_id"),
                    ))
                }
                Err(RunError::TooLarge) => {
                    tracing::info!("batch input file larger than server.max_body_bytes; relayed");
                    Ok(upstream::forward(app, &parts.headers, &Method::POST, suffix, raw).await)
                }
                created => answer(created.map(|b| b.view())),
            }
        }
        (Method::GET, ["batches", id]) => {
            let Some(batch) = mine(store, &tenant, id, kept).await? else {
                return Ok(no_such_batch(id));
            };
            let refreshed = run::refresh(app, store, &headers, batch).await;
            answer(refreshed.map(|b| b.view()).map_err(RunError::Store))
        }
        (Method::POST, ["batches", id, "cancel"]) => {
            let Some(batch) = mine(store, &tenant, id, kept).await? else {
                return Ok(no_such_batch(id));
            };
            let status = batch.status.as_str();
            match run::cancel(app, store, &headers, batch).await {
                Ok(Some(batch)) => Ok(json_response(StatusCode::OK, &batch.view())),
                Ok(None) => Ok(error(
                    StatusCode::CONFLICT,
                    format!("Cannot cancel a batch with status '{status}'."),
                    None,
                )),
                Err(err) => answer(Err(err)),
            }
        }
        (Method::GET, ["files", id]) => {
            let (tenant, id) = (tenant.clone(), id.to_string());
            let found = store.blocking(move |s| s.file(&tenant, &id, kept)).await;
            Ok(match found {
                Ok(Some(file)) => json_response(StatusCode::OK, &file),
                Ok(None) => no_such_file(segments[1]),
                Err(err) => unavailable(&err),
            })
        }
        (Method::GET, ["files", id, "content"]) => {
            let (tenant, id) = (tenant.clone(), id.to_string());
            let found = store.blocking(move |s| s.content(&tenant, &id, kept)).await;
            Ok(match found {
                Ok(Some(content)) => content_response(content),
                Ok(None) => no_such_file(segments[1]),
                Err(err) => unavailable(&err),
            })
        }
        (Method::DELETE, ["files", id]) => {
            let (tenant, owned) = (tenant.clone(), id.to_string());
            let deleted = store
                .blocking(move |s| s.delete_file(&tenant, &owned, kept))
                .await;
            Ok(match deleted {
                Ok(true) => json_response(
                    StatusCode::OK,
                    &json!({"id": id, "object": "file", "deleted": true}),
                ),
                Ok(false) => no_such_file(id),
                Err(err) => unavailable(&err),
            })
        }
        _ => Err(ApiError::NotFound(format!("/v1{path}"))),
    }
}

/// One request of the key's requests per minute.
async fn admit_one(app: &App, key: &KeyConfig) -> Result<(), ApiError> {
    crate::track::admit::admit(app, key)
        .await
        .map(|_| ())
        .map_err(|refusal| {
            tracing::info!(key = %key.id, limit = refusal.limit_name(), "rate limited");
            ApiError::RateLimited(refusal)
        })
}

/// The create call's body; `None` when its endpoint is not one deja caches.
fn read_create(app: &App, raw: &Bytes) -> Result<Option<(Create, Target)>, ApiError> {
    let json: Value = serde_json::from_slice(raw)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| ApiError::invalid("The request body must be a JSON object.", None))?;
    let text = |name: &'static str| match json[name].as_str() {
        Some(value) => Ok(value.to_string()),
        None => Err(ApiError::invalid(
            format!("Missing required parameter: '{name}'."),
            Some(name),
        )),
    };
    let endpoint = text("endpoint")?;
    let config = app.config();
    let target = match endpoint.strip_prefix("/v1") {
        Some("/embeddings") => Target::Embeddings,
        Some(path) => match cached_endpoint(&config, path) {
            Some(cached) => Target::Flow(cached),
            None => return Ok(None),
        },
        None => return Ok(None),
    };
    let metadata = match &json["metadata"] {
        Value::Null | Value::Object(_) => json["metadata"].clone(),
        _ => {
            return Err(ApiError::invalid(
                "Invalid type for 'metadata': expected an object.",
                Some("metadata"),
            ));
        }
    };
    let create = Create {
        input_file_id: text("input_file_id")?,
        completion_window: text("completion_window")?,
        endpoint,
        metadata,
    };
    if create.completion_window != "24h" {
        return Err(ApiError::invalid(
            "Invalid value for 'completion_window': only '24h' is supported.",
            Some("completion_window"),
        ));
    }
    Ok(Some((create, target)))
}

async fn mine(
    store: &Arc<Batches>,
    tenant: &str,
    id: &str,
    kept: Kept,
) -> Result<Option<super::record::Batch>, ApiError> {
    let owned = id.to_string();
    match store.blocking(move |s| s.load(&owned, kept)).await {
        Ok(found) => Ok(found.filter(|batch| batch.tenant == tenant)),
        Err(err) => {
            tracing::warn!(error = %err, "batch store");
            Err(ApiError::Internal)
        }
    }
}

/// `GET /v1/batches?after=&limit=`: newest first, as OpenAI pages it.
async fn list(
    store: &Arc<Batches>,
    tenant: &str,
    query: &str,
    kept: Kept,
) -> Result<Response<ProxyBody>, ApiError> {
    let mut after = None;
    let mut limit = 20;
    for (name, value) in query.split('&').filter_map(|p| p.split_once('=')) {
        match name {
            "after" => after = Some(value.to_string()),
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=100).contains(l))
                    .ok_or_else(|| {
                        ApiError::invalid("limit must be between 1 and 100.", Some("limit"))
                    })?
            }
            _ => {}
        }
    }
    let owned = tenant.to_string();
    let all = match store.blocking(move |s| s.of_tenant(&owned, kept)).await {
        Ok(all) => all,
        Err(err) => return Ok(unavailable(&err)),
    };
    let start = match &after {
        Some(after) => all
            .iter()
            .position(|b| &b.id == after)
            .map_or(all.len(), |i| i + 1),
        None => 0,
    };
    let page: Vec<Value> = all
        .iter()
        .skip(start)
        .take(limit)
        .map(|b| b.view())
        .collect();
    let body = json!({
        "object": "list",
        "first_id": page.first().map(|b| b["id"].clone()),
        "last_id": page.last().map(|b| b["id"].clone()),
        "has_more": all.len() > start + page.len(),
        "data": page,
    });
    Ok(json_response(StatusCode::OK, &body))
}

fn answer(result: Result<Value, RunError>) -> Result<Response<ProxyBody>, ApiError> {
    match result {
        Ok(view) => Ok(json_response(StatusCode::OK, &view)),
        Err(RunError::Upstream(err)) => Ok(err.into_response()),
        Err(RunError::Store(err)) => Ok(unavailable(&err)),
        Err(RunError::Refused(err)) => Err(err),
        // Only creating reads the input file; `route` relays that case.
        Err(RunError::TooLarge) => Err(ApiError::Internal),
    }
}

pub(super) fn json_response(status: StatusCode, body: &Value) -> Response<ProxyBody> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn content_response(content: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(full(content));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

fn error(status: StatusCode, message: String, param: Option<&str>) -> Response<ProxyBody> {
    json_response(
        status,
        &json!({"error": {
            "message": message,
            "type": "invalid_request_error",
            "param": param,
            "code": null,
        }}),
    )
}

fn no_such_batch(id: &str) -> Response<ProxyBody> {
    error(
        StatusCode::NOT_FOUND,
        format!("No batch found with id '{id}'."),
        None,
    )
}

fn no_such_file(id: &str) -> Response<ProxyBody> {
    error(
        StatusCode::NOT_FOUND,
        format!("No such File object: {id}"),
        Some("id"),
    )
}

fn unavailable(err: &super::StoreError) -> Response<ProxyBody> {
    tracing::warn!(error = %err, "batch store");
    let mut response = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "The batch store is unavailable. Retry shortly.".into(),
        None,
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}
