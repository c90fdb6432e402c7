//! The HTTP calls under `/v1/async/`: submit, poll, cancel. A submission is read and
//! checked as the synchronous call reads it (same 400s, at once); who may see a job is the
//! caller's tenant, so another tenant's job id is a 404.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::Jobs;
use super::record::{Callback, Job, Status, Submitted};
use super::webhook;
use crate::app::App;
use crate::config::KeyConfig;
use crate::error::ApiError;
use crate::flow::control;
use crate::flow::read_request;
use crate::wire::body::{ProxyBody, full};

/// The header that names a job's callback URL.
pub const CALLBACK_HEADER: &str = "x-deja-callback-url";

/// Paths (after `/v1/async`) that queue their synchronous twin.
const ENDPOINTS: [&str; 4] = [
    "/chat/completions",
    "/responses",
    "/completions",
    "/embeddings",
];

/// Request headers a job does not keep: the connection's own, and the callback.
const NOT_KEPT: [&str; 8] = [
    "host",
    "content-length",
    "connection",
    "transfer-encoding",
    "keep-alive",
    "upgrade",
    "te",
    CALLBACK_HEADER,
];

/// Serves `/v1/async{rest}`.
pub async fn route(
    app: Arc<App>,
    jobs: Option<Arc<Jobs>>,
    request: Request<Incoming>,
    rest: &str,
) -> Result<Response<ProxyBody>, ApiError> {
    let Some(jobs) = jobs else {
        return Err(ApiError::NotFound(format!("/v1/async{rest}")));
    };
    let key = if app.config().managed() {
        match app.keys().authenticate(request.headers()) {
            Some(key) => Some(key),
            None => return Err(ApiError::InvalidApiKey),
        }
    } else {
        None
    };
    let tenant = control::partition_for(request.headers(), false, "", key.as_deref()).tenant;
    let method = request.method().clone();
    if let Some(id) = rest.strip_prefix("/jobs/") {
        return Ok(match method {
            Method::GET => poll(&jobs, &tenant, id).await,
            Method::DELETE => cancel(&app, &jobs, &tenant, id).await,
            _ => not_allowed(&method, rest),
        });
    }
    if ENDPOINTS.contains(&rest) {
        return match method {
            Method::POST => submit(&app, jobs, request, rest, tenant, key.as_deref()).await,
            _ => Ok(not_allowed(&method, rest)),
        };
    }
    Err(ApiError::NotFound(format!("/v1/async{rest}")))
}

async fn submit(
    app: &Arc<App>,
    jobs: Arc<Jobs>,
    request: Request<Incoming>,
    endpoint: &str,
    tenant: String,
    _key: Option<&KeyConfig>,
) -> Result<Response<ProxyBody>, ApiError> {
    let (parts, body) = request.into_parts();
    let callback = match parts.headers.get(CALLBACK_HEADER) {
        None => None,
        Some(value) => {
            let url = value.to_str().unwrap_or_default().trim().to_string();
            if !webhook::allowed(&url, &app.config().jobs.callback_allow) {
                return Err(ApiError::invalid(
                    format!(
                        "{CALLBACK_HEADER} must be an http(s) URL under one of the prefixes \
                         in jobs.callback_allow"
                    ),
                    Some(CALLBACK_HEADER),
                ));
            }
            Some(Callback {
                url,
                delivered: false,
                attempts: Vec::new(),
            })
        }
    };
    // The synchronous call's own reading: size, body timeout, JSON object, x-deja-* controls.
    let server = app.config().server.clone();
    let (body, _json, _controls) = read_request(body, &parts.headers, &server).await?;
    let body = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::invalid("the request body must be UTF-8 JSON", None))?;
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| !NOT_KEPT.contains(&name.as_str()))
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect();
    let now = app.now_ms();
    let job = Job {
        id: format!("job_{:032x}", fastrand::u128(..)),
        tenant,
        endpoint: endpoint.to_string(),
        seq: 0,
        status: Status::Queued,
        created_at: now / 1000,
        created_ms: now,
        started_at: None,
        finished_at: None,
        runs: 0,
        request: Some(Submitted { headers, body }),
        answer: None,
        error: None,
        callback,
    };
    // Accepted means kept: on disk (or acknowledged by Redis) before the 202.
    let kept = jobs.store.submit(job).await;
    jobs.store_health(&kept);
    let job = match kept {
        Ok(job) => job,
        Err(err) => {
            tracing::warn!(error = %err, "job not accepted: store");
            return Ok(unavailable());
        }
    };
    jobs.metrics.submitted.inc();
    jobs.note_depth();
    jobs.wake.notify_one();
    let mut response = json_response(StatusCode::ACCEPTED, &job.view());
    if let Ok(location) = HeaderValue::from_str(&job.poll_url()) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn poll(jobs: &Jobs, tenant: &str, id: &str) -> Response<ProxyBody> {
    match jobs.store.load(id).await {
        Ok(Some(job)) if job.tenant == tenant => json_response(StatusCode::OK, &job.view()),
        Ok(_) => no_such_job(id),
        Err(err) => {
            tracing::warn!(error = %err, "job store");
            unavailable()
        }
    }
}

async fn cancel(app: &App, jobs: &Jobs, tenant: &str, id: &str) -> Response<ProxyBody> {
    let now = app.now_ms() / 1000;
    let updated = jobs
        .update(id, &mut |job| {
            if job.tenant != tenant || job.status != Status::Queued {
                return false;
            }
            job.status = Status::Cancelled;
            job.finished_at = Some(now);
            job.request = None;
            true
        })
        .await;
    match updated {
        Ok(Some((job, _))) if job.tenant != tenant => no_such_job(id),
        Ok(Some((job, true))) => {
            jobs.metrics
                .finished
                .get_or_create(&super::metrics::StatusLabel {
                    status: "cancelled",
                })
                .inc();
            json_response(StatusCode::OK, &job.view())
        }
        Ok(Some((job, false))) => error(
            StatusCode::CONFLICT,
            format!(
                "Job {id} is {}; only a queued job can be cancelled.",
                job.status.as_str()
            ),
            "job_not_cancellable",
        ),
        Ok(None) => no_such_job(id),
        Err(err) => {
            tracing::warn!(error = %err, "job store");
            unavailable()
        }
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<ProxyBody> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: String, code: &str) -> Response<ProxyBody> {
    json_response(
        status,
        &json!({"error": {
            "message": message,
            "type": "invalid_request_error",
            "param": null,
            "code": code,
        }}),
    )
}

fn no_such_job(id: &str) -> Response<ProxyBody> {
    error(
        StatusCode::NOT_FOUND,
        format!("No job found with id '{id}'."),
        "job_not_found",
    )
}

fn unavailable() -> Response<ProxyBody> {
    let mut response = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "The job store is unavailable. Nothing was changed; retry shortly.".into(),
        "job_store_unavailable",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn not_allowed(method: &Method, rest: &str) -> Response<ProxyBody> {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not supported on /v1/async{rest}."),
        "method_not_allowed",
    )
}
