//! WebSocket upgrades (the Realtime API, `client.realtime.connect()`): a `GET` with
//! `Upgrade: websocket` under `/v1/` is sent to the upstream over HTTP/1.1 (TLS for https),
//! and when the upstream switches protocols, bytes are copied both ways until either side
//! closes. deja does not read the frames: nothing is cached. The managed-key rules apply as
//! for any request (the router has checked the caller's key and removed it; deja's own key
//! goes upstream).

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::app::App;
use crate::edge::connection::Slot;
use crate::error::ApiError;
use crate::track::Tracker;
use crate::upstream::{response_headers, stream_response};
use crate::wire::body::{ProxyBody, full};

/// Whether `request` asks to become a WebSocket.
pub fn is_websocket(request: &Request<Incoming>) -> bool {
    request.method() == Method::GET
        && has_token(request.headers(), header::CONNECTION, "upgrade")
        && has_token(request.headers(), header::UPGRADE, "websocket")
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// Opens the upstream WebSocket and answers `101` with the upstream's handshake headers, then
/// tunnels in the background. Any other upstream answer (401, 404...) is relayed as it is.
pub async fn tunnel(
    app: &App,
    mut request: Request<Incoming>,
    suffix: &str,
    tracker: &Tracker,
) -> Result<Response<ProxyBody>, ApiError> {
    let config = tracker.config();
    let sent = std::time::Instant::now();
    let result = app
        .upstream
        .upgrade(&config.upstream, suffix, request.headers())
        .await;
    tracker.update(|r| r.upstream_ms = Some(sent.elapsed().as_secs_f64() * 1000.0));
    let upstream = match result {
        Ok(upstream) if upstream.status() == StatusCode::SWITCHING_PROTOCOLS => upstream,
        Ok(upstream) => return Ok(stream_response(upstream, None)),
        Err(err) => {
            tracing::warn!(code = err.code(), error = %err, "websocket upgrade failed");
            return Err(err);
        }
    };
    let mut response = Response::new(full(""));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *response.headers_mut() = response_headers(upstream.headers(), None);
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    response
        .headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    // The tunnel keeps the connection's `max_connections` slot: hyper lets go of the
    // connection once it is upgraded.
    let slot = request.extensions().get::<Slot>().cloned();
    let client = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let _slot = slot;
        match (client.await, upstream.upgrade().await) {
            (Ok(client), Ok(mut upstream)) => {
                let mut client = TokioIo::new(client);
                match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    Ok((up, down)) => tracing::debug!(up, down, "websocket closed"),
                    Err(err) => tracing::debug!(error = %err, "websocket ended with an error"),
                }
            }
            (Err(err), _) => tracing::debug!(error = %err, "client upgrade failed"),
            (_, Err(err)) => tracing::debug!(error = %err, "upstream upgrade failed"),
        }
    });
    Ok(response)
}
