//! deja's calls to the upstream's Files and Batches API, made with the caller's own
//! credentials as a relayed call would be (`upstream.api_key` replaces them when set), with
//! the usual retries. An upstream refusal comes back as it was, to be relayed.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use serde_json::Value;

use crate::app::App;
use crate::error::ApiError;
use crate::upstream::Outgoing;
use crate::wire::body::{ProxyBody, full};

/// Why an upstream call gave no usable answer.
#[derive(Debug)]
pub enum CallError {
    /// The upstream answered with an error: relayed to the caller as it is.
    Refused { status: StatusCode, body: Bytes },
    /// No answer (502/504), or an answer that was not what the API returns.
    Failed(ApiError),
}

impl CallError {
    pub fn into_response(self) -> Response<ProxyBody> {
        match self {
            CallError::Refused { status, body } => {
                let mut response = Response::new(full(body));
                *response.status_mut() = status;
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            CallError::Failed(error) => error.into_response(),
        }
    }
}

/// The caller's headers for a call deja makes on its behalf: its credentials and account
/// selectors, without the headers that described its own request's body.
pub fn call_headers(caller: &HeaderMap) -> HeaderMap {
    let mut headers = caller.clone();
    for name in [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::ACCEPT,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    headers
}

async fn call(
    app: &App,
    headers: &HeaderMap,
    method: Method,
    suffix: &str,
    content_type: Option<&str>,
    body: Bytes,
) -> Result<Bytes, CallError> {
    let config = app.config().clone();
    let mut headers = headers.clone();
    if let Some(content_type) = content_type.and_then(|t| HeaderValue::from_str(t).ok()) {
        headers.insert(header::CONTENT_TYPE, content_type);
    }
    let out = Outgoing {
        method: &method,
        suffix,
        headers: &headers,
        parse_body: true,
    };
    let sent = app
        .upstream
        .send_retrying(&config.upstream, &out, body)
        .await
        .map_err(|failed| CallError::Failed(failed.error))?;
    let status = sent.response.status();
    let bytes = sent.response.bytes().await.map_err(|err| {
        CallError::Failed(ApiError::UpstreamUnreachable(format!(
            "reading the response failed: {err}"
        )))
    })?;
    if status.is_success() {
        Ok(bytes)
    } else {
        Err(CallError::Refused {
            status,
            body: bytes,
        })
    }
}

async fn call_json(
    app: &App,
    headers: &HeaderMap,
    method: Method,
    suffix: &str,
    body: Option<&Value>,
) -> Result<Value, CallError> {
    let (content_type, body) = match body {
        Some(body) => (Some("application/json"), Bytes::from(body.to_string())),
        None => (None, Bytes::new()),
    };
    let bytes = call(app, headers, method, suffix, content_type, body).await?;
    serde_json::from_slice::<Value>(&bytes)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| {
            CallError::Failed(ApiError::UpstreamUnreachable(format!(
                "the upstream's answer to {suffix} is not a JSON object"
            )))
        })
}

/// `GET {suffix}`, a JSON object (a list).
pub async fn get_json(app: &App, headers: &HeaderMap, suffix: &str) -> Result<Value, CallError> {
    call_json(app, headers, Method::GET, suffix, None).await
}

/// `GET /files/{id}/content`.
pub async fn file_content(app: &App, headers: &HeaderMap, id: &str) -> Result<Bytes, CallError> {
    let suffix = format!("/files/{}/content", path_segment(id)?);
    call(app, headers, Method::GET, &suffix, None, Bytes::new()).await
}

/// `GET /files/{id}`: the file's size in bytes (`None` if the object does not say).
pub async fn file_size(app: &App, headers: &HeaderMap, id: &str) -> Result<Option<u64>, CallError> {
    let suffix = format!("/files/{}", path_segment(id)?);
    let file = call_json(app, headers, Method::GET, &suffix, None).await?;
    Ok(file["bytes"].as_u64())
}

/// `POST /files` (multipart, purpose `batch`): the id of the new file.
pub async fn upload(app: &App, headers: &HeaderMap, jsonl: Bytes) -> Result<String, CallError> {
    let boundary = format!("deja-{:032x}", fastrand::u128(..));
    let mut body = Vec::with_capacity(jsonl.len() + 512);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
             filename=\"deja-batch.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&jsonl);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let bytes = call(
        app,
        headers,
        Method::POST,
        "/files",
        Some(&content_type),
        Bytes::from(body),
    )
    .await?;
    let file: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    match file["id"].as_str() {
        Some(id) => Ok(id.to_string()),
        None => Err(CallError::Failed(ApiError::UpstreamUnreachable(
            "the upstream's file object has no id".into(),
        ))),
    }
}

/// `POST /batches`.
pub async fn create_batch(
    app: &App,
    headers: &HeaderMap,
    request: &Value,
) -> Result<Value, CallError> {
    call_json(app, headers, Method::POST, "/batches", Some(request)).await
}

/// `GET /batches/{id}`.
pub async fn get_batch(app: &App, headers: &HeaderMap, id: &str) -> Result<Value, CallError> {
    let suffix = format!("/batches/{}", path_segment(id)?);
    call_json(app, headers, Method::GET, &suffix, None).await
}

/// `POST /batches/{id}/cancel`.
pub async fn cancel_batch(app: &App, headers: &HeaderMap, id: &str) -> Result<Value, CallError> {
    let suffix = format!("/batches/{}/cancel", path_segment(id)?);
    call_json(app, headers, Method::POST, &suffix, None).await
}

/// An id as one path segment: ids the upstream or a caller gave must not change the path.
fn path_segment(id: &str) -> Result<&str, CallError> {
    let plain = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        Ok(id)
    } else {
        Err(CallError::Failed(ApiError::invalid(
            format!("'{id}' is not a valid id."),
            None,
        )))
    }
}

/// Relays a request deja read but does not handle itself (a batch for an endpoint deja does
/// not cache), with the body it read and the caller's headers, and the answer as it comes.
pub async fn forward(
    app: &App,
    headers: &HeaderMap,
    method: &Method,
    suffix: &str,
    body: Bytes,
) -> Response<ProxyBody> {
    let config = app.config().clone();
    let out = Outgoing {
        method,
        suffix,
        headers,
        parse_body: false,
    };
    match app
        .upstream
        .send_retrying(&config.upstream, &out, body)
        .await
    {
        Ok(sent) => crate::upstream::stream_response(sent.response, None),
        Err(failed) => failed.error.into_response(),
    }
}
