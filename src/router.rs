//! Which handler serves a request. Everything under `/v1/` is relayed; the endpoints deja
//! caches go through the cache flow first.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::app::App;
use crate::body::{ProxyBody, full};
use crate::cached::{self, Endpoint};
use crate::chat::ChatCompletions;
use crate::error::ApiError;
use crate::relay::relay;

/// The cached endpoint for a `POST` path (after `/v1`), if any.
fn cached_endpoint(path: &str) -> Option<&'static dyn Endpoint> {
    match path {
        "/chat/completions" => Some(&ChatCompletions),
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
    if request.method() == Method::POST
        && let Some(endpoint) = cached_endpoint(rest)
    {
        return cached::handle(app, endpoint, request, suffix).await;
    }
    relay(&app, request, &suffix).await
}
