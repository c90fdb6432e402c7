//! The admin listener, separate from the one applications use (loopback by default):
//! `/healthz` and `/readyz` for probes, and behind `admin.token`: `/metrics` (Prometheus),
//! `/admin/stats`, `/admin/lookup`, `/admin/entries/{id}`, `/admin/purge`, `/admin/reload`,
//! and the dashboard (`crate::ops::dashboard`): its page at `/dashboard` and its JSON calls.
//! A dashboard session cookie stands in for the token; with it, calls other than GET must
//! carry the session's CSRF token.
//!
//! - `handlers`: what each call does
//! - `reload`: re-reading proxy.toml into the running proxy

// Handlers return a finished error response as their `Err`; boxing it would only add noise to
// a path that runs a few times a minute.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::App;
use crate::edge::connection;
use crate::observe::board::session::{self, CSRF_HEADER};
use crate::ops::dashboard::api as dashboard;
use crate::wire::body::{ProxyBody, full};

mod handlers;
pub mod reload;

/// Admin request bodies are small JSON documents.
const MAX_BODY: usize = 1024 * 1024;

/// Serves the admin API until `stopped` changes, then drains (briefly: admin calls are short).
pub async fn serve(listener: TcpListener, app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    // The same deadlines as the main listener: unused connections must not pile up here either.
    let builder = connection::builder(Duration::from_secs(10));
    let (drain, draining) = watch::channel(false);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let deadlines = connection::deadlines(&app.config().server);
                let app = app.clone();
                let handler = move |request| route(app.clone(), request);
                tokio::spawn(connection::serve(&builder, stream, None, deadlines, draining.clone(), handler));
            }
            _ = stopped.changed() => break,
        }
    }
    drop(listener);
    connection::drain(drain, draining, Duration::from_secs(5)).await;
}

async fn route(app: Arc<App>, request: Request<Incoming>) -> Response<ProxyBody> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => {
            return if app.draining.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining")
            } else {
                text(StatusCode::OK, "ready")
            };
        }
        _ => {}
    }
    // The dashboard's page and sign-in form authenticate themselves.
    if crate::ops::dashboard::signin::owns(&path) {
        return crate::ops::dashboard::signin::route(&app, request).await;
    }
    if let Err(response) = authorize(&app, &method, request.headers()) {
        return response;
    }
    let query = request.uri().query().map(str::to_string);
    let query = query.as_deref();
    let body = match read_json(request.into_body()).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    match (&method, path.as_str()) {
        (&Method::GET, "/metrics") => handlers::metrics(&app),
        (&Method::GET, "/admin/stats") => handlers::stats(&app),
        (&Method::POST, "/admin/lookup") => handlers::lookup(&app, body).await,
        (&Method::POST, "/admin/purge") => handlers::purge(&app, body).await,
        (&Method::POST, "/admin/reload") => handlers::reload(&app).await,
        // Feedback: the entry answered wrongly (crate::trust).
        (&Method::POST, path)
            if path.starts_with("/admin/entries/") && path.ends_with("/wrong") =>
        {
            match path["/admin/entries/".len()..path.len() - "/wrong".len()].parse::<u64>() {
                Ok(id) => match crate::trust::mark_wrong(&app.trust, &app.config(), id).await {
                    Ok(marked) => json_response(StatusCode::OK, marked),
                    Err((status, message)) => error(status, &message),
                },
                Err(_) => error(StatusCode::BAD_REQUEST, "entry ids are numbers"),
            }
        }
        (&Method::GET, "/admin/dashboard") => dashboard::overview(&app),
        (&Method::GET, "/admin/lookups") => dashboard::lookups(&app, query),
        (&Method::GET, "/admin/histograms") => dashboard::histograms(&app, query),
        (&Method::GET, "/admin/replay") => dashboard::replay(&app, query),
        (&Method::POST, "/admin/threshold") => dashboard::set_threshold(&app, body).await,
        (method, path) if path.starts_with("/admin/entries/") => {
            let id = path["/admin/entries/".len()..].parse::<u64>().ok();
            match (method, id) {
                (_, None) => error(StatusCode::BAD_REQUEST, "entry ids are numbers"),
                (&Method::GET, Some(id)) => handlers::entry(&app, id).await,
                (&Method::DELETE, Some(id)) => handlers::delete_entry(&app, id).await,
                _ => error(StatusCode::METHOD_NOT_ALLOWED, "use GET or DELETE"),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            &format!("no admin call {method} {path}"),
        ),
    }
}

/// Every call but the probes needs `Authorization: Bearer <admin.token>` or a dashboard
/// session (plus its CSRF token for anything but GET); without a configured token the admin
/// API refuses everything.
fn authorize(
    app: &App,
    method: &Method,
    headers: &http::HeaderMap,
) -> Result<(), Response<ProxyBody>> {
    let config = app.config();
    let Some(token) = &config.admin.token else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "admin.token is not set: the admin API is off (set DEJA_ADMIN__TOKEN or admin.token_file)",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(presented.as_bytes(), token.expose().as_bytes()) {
        return Ok(());
    }
    let csrf = session::session_id(headers).and_then(|id| {
        app.dashboard
            .sessions
            .check(&id, token.expose(), app.now_ms())
    });
    if let Some(csrf) = csrf {
        // A cookie rides along on any request the browser sends, a forged cross-site one too
        // (SameSite aside): changes must also show the token only the page can read.
        let echoed = headers
            .get(CSRF_HEADER)
            .map_or(&[][..], HeaderValue::as_bytes);
        if *method == Method::GET || constant_time_eq(echoed, csrf.as_bytes()) {
            return Ok(());
        }
        return Err(error(StatusCode::FORBIDDEN, "missing or wrong CSRF token"));
    }
    let mut response = error(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"deja-admin\""),
    );
    Err(response)
}

/// Compares without an early exit, so response time does not reveal how much matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut differ = a.len() ^ b.len();
    for (i, &byte) in b.iter().enumerate() {
        differ |= usize::from(byte ^ a.get(i).copied().unwrap_or(!byte));
    }
    differ == 0
}

async fn read_json(body: Incoming) -> Result<Value, Response<ProxyBody>> {
    let bytes: Bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(error(StatusCode::PAYLOAD_TOO_LARGE, "body over 1 MiB")),
    };
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes)
        .map_err(|err| error(StatusCode::BAD_REQUEST, &format!("body is not JSON: {err}")))
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
}

pub(crate) fn json_response(status: StatusCode, value: Value) -> Response<ProxyBody> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    json_response(
        status,
        json!({"error": {"message": message, "type": "admin_error", "code": status.as_u16()}}),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_comparison() {
        assert!(super::constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!super::constant_time_eq(b"secret-tokem", b"secret-token"));
        assert!(!super::constant_time_eq(b"secret", b"secret-token"));
        assert!(!super::constant_time_eq(b"", b"secret-token"));
    }
}
