//! The edge of a cached endpoint: reading the body (within the size limit and the body
//! timeout), parsing it as a JSON object, and the cache controls from the headers.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::Value;

use crate::config::Route;
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::flow::control::Controls;
use crate::flow::models;
use crate::observe::usage::Outcome;
use crate::track::Tracker;

/// Reads a request (`read_request`), resolves its model's alias (`models::apply`; fallbacks
/// only when `fallbacks`) and notes the model asked and the model routed to in the record.
/// An unreadable request is answered at once.
#[allow(clippy::result_large_err)] // the Err is the response itself
pub(crate) async fn read_routed(
    body: Incoming,
    parts: &http::request::Parts,
    tracker: &Tracker,
    fallbacks: bool,
) -> Result<(Bytes, Value, Controls, Option<Route>), ApiError> {
    let config = tracker.config().clone();
    let (body, json, controls) = match read_request(body, &parts.headers, &config.server).await {
        Ok(read) => read,
        Err(err) => {
            tracker.outcome(Outcome::Error);
            return Err(err);
        }
    };
    let model = json
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string);
    let (body, json, route) = models::apply(&config.routing, body, json, fallbacks);
    tracker.update(|r| {
        r.model_used = route.as_ref().map(|route| route.model().to_string());
        r.model_asked = model;
    });
    Ok((body, json, controls, route))
}

/// Reads a cached endpoint's request: the body (within the size limit and the body timeout),
/// parsed as a JSON object, and the cache controls from its headers.
pub(crate) async fn read_request(
    body: Incoming,
    headers: &http::HeaderMap,
    server: &ServerConfig,
) -> Result<(Bytes, Value, Controls), ApiError> {
    let (body, controls) = read_checked(body, headers, server).await?;
    let json = parse_object(&body, server.max_json_values)?;
    Ok((body, json, controls))
}

/// The body (within the size limit and the body timeout) and the cache controls.
pub(crate) async fn read_checked(
    body: Incoming,
    headers: &http::HeaderMap,
    server: &ServerConfig,
) -> Result<(Bytes, Controls), ApiError> {
    let secs = server.body_timeout_secs;
    // A client dripping its body (slow-loris) would otherwise hold a connection for ever.
    let body = tokio::time::timeout(
        Duration::from_secs(secs),
        read_body(body, server.max_body_bytes),
    )
    .await
    .map_err(|_| ApiError::BodyTimeout { secs })??;
    Ok((body, Controls::from_headers(headers)?))
}

/// The body as a JSON object, if it holds no more than `max_values` items (a tree costs about
/// 60 bytes per item: see `json_budget`).
pub(crate) fn parse_object(body: &[u8], max_values: usize) -> Result<Value, ApiError> {
    if !crate::wire::json_budget::within(body, max_values) {
        return Err(ApiError::invalid(
            format!(
                "the request body holds more than {max_values} JSON values, more than this \
                 proxy parses (server.max_json_values)"
            ),
            None,
        ));
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(Value::Object(map)),
        Ok(_) => Err(ApiError::invalid(
            "the request body must be a JSON object",
            None,
        )),
        Err(err) => Err(ApiError::invalid(
            format!("could not parse the JSON body of your request: {err}"),
            None,
        )),
    }
}

async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::BodyTooLarge { limit })
        }
        Err(err) => Err(ApiError::BodyRead(err.to_string())),
    }
}
