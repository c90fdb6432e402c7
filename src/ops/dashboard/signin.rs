//! The page's own routes on the admin listener: `GET /` and `GET /dashboard` (the page, or
//! the sign-in form without a session), `POST /dashboard/login` (form field `token`),
//! `POST /dashboard/logout`, and the static assets under `/dashboard/assets/`.

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::page;
use crate::app::App;
use crate::observe::board::session::{self, CSRF_HEADER};
use crate::ops::admin::constant_time_eq;
use crate::wire::body::ProxyBody;

/// A sign-in form is a few hundred bytes.
const MAX_FORM: usize = 8 * 1024;

/// True for the paths this module answers.
pub fn owns(path: &str) -> bool {
    path == "/" || path == "/dashboard" || path.starts_with("/dashboard/")
}

pub async fn route(app: &App, request: Request<Incoming>) -> Response<ProxyBody> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let config = app.config();
    let Some(token) = config.admin.token.as_ref().map(|t| t.expose().to_string()) else {
        return page::login(
            StatusCode::FORBIDDEN,
            "admin.token is not set, so the dashboard is off (set DEJA_ADMIN__TOKEN or admin.token_file).",
        );
    };
    let now = app.now_ms();
    let session = session::session_id(request.headers())
        .and_then(|id| Some((app.dashboard.sessions.check(&id, &token, now)?, id)));
    let secure = request
        .headers()
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    match (&method, path.as_str()) {
        (&Method::GET, "/") => page::see_other("/dashboard", None),
        (&Method::GET, "/dashboard") => match session {
            Some((csrf, _)) => page::dashboard(&csrf),
            None => page::login(StatusCode::OK, ""),
        },
        (&Method::POST, "/dashboard/login") => {
            let form = match Limited::new(request.into_body(), MAX_FORM).collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) => return page::login(StatusCode::PAYLOAD_TOO_LARGE, "Form too large."),
            };
            let presented = form_field(&form, "token").unwrap_or_default();
            if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
                tracing::info!("dashboard sign-in refused: wrong admin token");
                return page::login(StatusCode::UNAUTHORIZED, "Wrong admin token.");
            }
            match app.dashboard.sessions.open(&token, now) {
                Some((id, _)) => {
                    tracing::info!("dashboard sign-in");
                    page::see_other("/dashboard", Some(session::cookie(Some(&id), secure)))
                }
                None => page::login(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "No randomness for a session id.",
                ),
            }
        }
        (&Method::POST, "/dashboard/logout") => {
            let Some((csrf, id)) = session else {
                return page::see_other("/dashboard", Some(session::cookie(None, secure)));
            };
            let echoed = request
                .headers()
                .get(CSRF_HEADER)
                .map(HeaderValue::as_bytes)
                .unwrap_or_default();
            if !constant_time_eq(echoed, csrf.as_bytes()) {
                return crate::ops::admin::error(
                    StatusCode::FORBIDDEN,
                    "missing or wrong CSRF token",
                );
            }
            app.dashboard.sessions.close(&id);
            page::see_other("/dashboard", Some(session::cookie(None, secure)))
        }
        (&Method::GET, path) if path.starts_with("/dashboard/assets/") => {
            page::asset(&path["/dashboard/assets/".len()..])
                .unwrap_or_else(|| crate::ops::admin::error(StatusCode::NOT_FOUND, "no such asset"))
        }
        _ => {
            let mut response = crate::ops::admin::error(
                StatusCode::NOT_FOUND,
                &format!("no page {method} {path}"),
            );
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
    }
}

/// One field of an `application/x-www-form-urlencoded` body, decoded.
fn form_field(form: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(form).ok()?;
    let raw = text
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)?
        .1;
    let mut out = Vec::with_capacity(raw.len());
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn form_fields_decode() {
        let form = b"a=1&token=s%2Bcret+token%21&b=2";
        assert_eq!(
            super::form_field(form, "token").as_deref(),
            Some("s+cret token!")
        );
        assert_eq!(super::form_field(b"token=%4", "token"), Some("%4".into()));
        assert_eq!(super::form_field(b"x=1", "token"), None);
    }
}
