//! The handler of every `/v1/*` request that deja does not cache: a faithful relay. The
//! request body streams up, the response (status, end-to-end headers, body) streams back as it
//! arrives (`crate::upstream::stream_response`), metered when the key has limits.
//! A streamed body cannot be sent twice, so only GET, HEAD and DELETE without a body are
//! retried here (`[upstream.retry]`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::header::{self, HeaderMap};
use http::{Method, Request, Response};
use http_body_util::BodyStream;
use hyper::body::{Body as _, Incoming};

use crate::app::App;
use crate::error::ApiError;
use crate::track::Tracker;
use crate::track::metering::metered;
use crate::upstream::{Outgoing, stream_response};
use crate::wire::body::{BoxError, ProxyBody};

/// Relays a request whose body is streamed (not buffered) to the upstream.
pub async fn relay(
    app: &App,
    request: Request<Incoming>,
    suffix: &str,
    tracker: &Tracker,
) -> Result<Response<ProxyBody>, ApiError> {
    let config = tracker.config().clone();
    let limit = config.server.max_body_bytes;
    let (parts, body) = request.into_parts();
    if declared_length(&parts.headers).is_some_and(|len| len > limit) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let out = Outgoing {
        method: &parts.method,
        suffix,
        headers: &parts.headers,
        parse_body: false,
    };
    if matches!(parts.method, Method::GET | Method::HEAD | Method::DELETE) && body.is_end_stream() {
        let sent = std::time::Instant::now();
        let result = app
            .upstream
            .send_retrying(&config.upstream, &out, Bytes::new())
            .await;
        tracker.upstream_call(sent, &result);
        return match result {
            Ok(sent) => Ok(stream_response(sent.response, None)),
            Err(failed) => {
                tracing::warn!(code = failed.error.code(), error = %failed.error, "relay failed");
                Err(failed.error)
            }
        };
    }
    // A call with a body may cost money: a key with limits reserves a JSON body's size / 4
    // tokens (an upload's bytes are not tokens), settled from the answer's `usage` when it is
    // JSON that has one. The model is not read here, so a budget needs the default price.
    let is_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let length = declared_length(&parts.headers)
        .filter(|_| is_json)
        .unwrap_or(0) as u64;
    tracker.reserve((length.div_ceil(4), 0)).await?;
    let exceeded = Arc::new(AtomicBool::new(false));
    let seen = AtomicUsize::new(0);
    let flag = exceeded.clone();
    let body_stream = BodyStream::new(body)
        .try_filter_map(|frame| async move { Ok(frame.into_data().ok()) })
        .map_err(|err| Box::new(err) as BoxError)
        .and_then(move |chunk: Bytes| {
            let total = seen.fetch_add(chunk.len(), Ordering::Relaxed) + chunk.len();
            let over = total > limit;
            if over {
                flag.store(true, Ordering::Relaxed);
            }
            async move {
                if over {
                    Err::<Bytes, BoxError>("request body over limit".into())
                } else {
                    Ok(chunk)
                }
            }
        });
    // A client that stops sending mid-body (slow-loris) is cut off after the body timeout.
    let idle = Duration::from_secs(config.server.body_timeout_secs);
    let stalled = Arc::new(AtomicBool::new(false));
    let stall_flag = stalled.clone();
    let body_stream = futures_util::stream::unfold(Some(Box::pin(body_stream)), move |body| {
        let stall_flag = stall_flag.clone();
        async move {
            let mut body = body?;
            match tokio::time::timeout(idle, body.next()).await {
                Ok(Some(item)) => Some((item, Some(body))),
                Ok(None) => None,
                Err(_) => {
                    stall_flag.store(true, Ordering::Relaxed);
                    Some((Err::<Bytes, BoxError>("request body stalled".into()), None))
                }
            }
        }
    });
    let sent = std::time::Instant::now();
    let result = app
        .upstream
        .send(
            &config.upstream,
            &out,
            reqwest::Body::wrap_stream(body_stream),
        )
        .await;
    tracker.update(|r| r.upstream_ms = Some(sent.elapsed().as_secs_f64() * 1000.0));
    match result {
        Ok(response) if tracker.limited() => {
            Ok(metered(stream_response(response, None), tracker, false))
        }
        Ok(response) => Ok(stream_response(response, None)),
        Err(_) if exceeded.load(Ordering::Relaxed) => Err(ApiError::BodyTooLarge { limit }),
        Err(_) if stalled.load(Ordering::Relaxed) => Err(ApiError::BodyTimeout {
            secs: idle.as_secs(),
        }),
        Err(err) => {
            tracing::warn!(code = err.code(), error = %err, "relay failed");
            Err(err)
        }
    }
}

fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
