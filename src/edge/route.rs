//! Which handler serves a request. Everything under `/v1/` is relayed; the endpoints deja
//! caches go through the cache flow first.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::app::App;
use crate::batch::Batches;
use crate::config::KeyConfig;
use crate::edge::request_path;
use crate::edge::tunnel;
use crate::endpoints::relay::relay;
use crate::endpoints::{cached_endpoint, embeddings};
use crate::error::ApiError;
use crate::flow;
use crate::jobs::Jobs;
use crate::managed::keys::{BILLING_HEADERS, CREDENTIAL_HEADERS};
use crate::managed::limits::insert_headers;
use crate::observe::usage::Outcome;
use crate::track::Tracker;
use crate::wire::body::{ProxyBody, full};
use crate::wire::endpoint::EndpointName;

/// What every request is routed with, made once at start-up: the state every handler shares,
/// and the services above it that own their stores.
pub struct Proxy {
    pub app: Arc<App>,
    /// The job queue (`/v1/async/...`); `None` when `jobs.enabled` is off or its store could
    /// not be opened.
    pub jobs: Option<Arc<Jobs>>,
    /// Batches answered from the cache first (`/v1/batches`); `None` without a cache, or
    /// when their store could not be opened (then batch calls are relayed).
    pub batches: Option<Arc<Batches>>,
}

pub async fn route(proxy: Arc<Proxy>, mut request: Request<Incoming>) -> Response<ProxyBody> {
    let app = &proxy.app;
    let path = request.uri().path().to_string();
    if path == "/healthz" {
        let mut response = Response::new(full("ok"));
        *response.status_mut() = StatusCode::OK;
        return response;
    }
    let Some(rest) = path
        .strip_prefix("/v1")
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
    else {
        return ApiError::NotFound(path).into_response();
    };
    if let Err(refused) = request_path::check(&path) {
        return refused.into_response();
    }
    // Jobs (`crate::jobs`): queued calls, polled or called back later.
    if let Some(async_rest) = rest.strip_prefix("/async")
        && (async_rest.is_empty() || async_rest.starts_with('/'))
    {
        return Box::pin(crate::jobs::api::route(
            app.clone(),
            proxy.jobs.clone(),
            request,
            async_rest,
        ))
        .await
        .unwrap_or_else(ApiError::into_response);
    }
    let suffix = match request.uri().query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_string(),
    };
    // Batches answered from the cache first (`crate::batch`); other batch calls are relayed.
    if let Some(batches) = proxy.batches.clone()
        && crate::batch::api::owns(request.method(), rest)
    {
        return Box::pin(crate::batch::api::route(
            app.clone(),
            batches,
            request,
            rest,
            &suffix,
        ))
        .await
        .unwrap_or_else(ApiError::into_response);
    }
    // The configuration this request runs under, from here to its last byte.
    let snapshot = app.snapshot();
    let config = snapshot.config.clone();
    let cached = (request.method() == Method::POST)
        .then(|| cached_endpoint(&config, rest))
        .flatten();
    let embeddings = request.method() == Method::POST && rest == "/embeddings";
    let name = match (cached, embeddings) {
        (Some(endpoint), _) => endpoint.name(),
        (None, true) => EndpointName::Embeddings,
        _ => EndpointName::Relay,
    };

    // Managed mode: a known deja key or 401. Its credentials never travel further, and
    // neither do the headers that choose which organization or project deja's key bills.
    let key = if config.managed() {
        let Some(key) = app.keys().authenticate(request.headers()) else {
            let tracker = Tracker::new(app.clone(), config, name, None);
            tracker.outcome(Outcome::Unauthorized);
            return tracker.attach(ApiError::InvalidApiKey.into_response());
        };
        for header in CREDENTIAL_HEADERS.iter().chain(&BILLING_HEADERS) {
            request.headers_mut().remove(header);
        }
        Some(key)
    } else {
        None
    };
    let tracker = Tracker::new(app.clone(), config, name, key.clone());
    if let Some(key) = &key
        // `[redis]`: rpm counted across replicas, then locally as before.
        && let Err(refusal) = Box::pin(crate::track::admit::admit(app, key)).await
    {
        let refused = tracker.refused(refusal).into_response();
        return finish(app, tracker, Some(key), refused);
    }

    // Only the cached endpoints' future is kept inline: the others are boxed so the task
    // spawned per request (and copied into its cell) stays the size the hit path needs.
    let handled = match (cached, embeddings) {
        (Some(endpoint), _) => {
            flow::handle(app.clone(), snapshot, endpoint, request, suffix, &tracker).await
        }
        (None, true) => Box::pin(embeddings::handle(app.clone(), request, suffix, &tracker)).await,
        _ if tunnel::is_websocket(&request) => {
            Box::pin(tunnel::tunnel(app, request, &suffix, &tracker)).await
        }
        _ => Box::pin(relay(app, request, &suffix, &tracker)).await,
    };
    // The one place where a handler's error becomes its OpenAI-shaped answer.
    let response = handled.unwrap_or_else(ApiError::into_response);
    finish(app, tracker, key.as_deref(), response)
}

/// Adds the key's rate-limit headers and hands the response to the tracker.
fn finish(
    app: &App,
    tracker: Tracker,
    key: Option<&KeyConfig>,
    mut response: Response<ProxyBody>,
) -> Response<ProxyBody> {
    if let Some(key) = key {
        insert_headers(response.headers_mut(), &app.limits.state(key, app.now_ms()));
    }
    tracker.attach(response)
}
