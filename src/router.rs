//! Which handler serves a request. Everything under `/v1/` is relayed; the endpoints deja
//! caches go through the cache flow first.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::app::App;
use crate::body::{ProxyBody, full};
use crate::cached::{self, Endpoint};
use crate::chat::ChatCompletions;
use crate::completions::Completions;
use crate::embeddings;
use crate::error::ApiError;
use crate::relay::relay;
use crate::responses::{RESPONSES, RESPONSES_CACHING_STORED};

/// The cached endpoint for a `POST` path (after `/v1`), if any.
fn cached_endpoint(app: &App, path: &str) -> Option<&'static dyn Endpoint> {
    match path {
        "/chat/completions" => Some(&ChatCompletions),
        "/completions" => Some(&Completions),
        "/responses" if app.config().cache.cache_stored_responses => {
            Some(&RESPONSES_CACHING_STORED)
        }
        "/responses" => Some(&RESPONSES),
        _ => None,
    }
}

pub async fn route(app: Arc<App>, request: Request<Incoming>) -> Response<ProxyBody> {
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
    let suffix = match request.uri().query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_string(),
    };
    if request.method() == Method::POST {
        if let Some(endpoint) = cached_endpoint(&app, rest) {
            return cached::handle(app, endpoint, request, suffix).await;
        }
        if rest == "/embeddings" {
            return embeddings::handle(app, request, suffix).await;
        }
    }
    relay(&app, request, &suffix).await
}
