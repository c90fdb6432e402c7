//! The page itself: HTML, CSS and JavaScript compiled into the binary, with uPlot (the chart
//! library, MIT, vendored from npm at a pinned version: `assets/vendor/README.md`). Nothing is
//! fetched from elsewhere at run time, and the Content-Security-Policy says so to the browser.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::wire::body::{ProxyBody, full};

const LOGIN: &str = include_str!("assets/login.html");
const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &[u8] = include_bytes!("assets/app.js");
const APP_CSS: &[u8] = include_bytes!("assets/app.css");
const UPLOT_JS: &[u8] = include_bytes!("assets/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &[u8] = include_bytes!("assets/vendor/uPlot.min.css");

/// Scripts and styles from this origin only; no framing (clickjacking), no form posts
/// elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A static asset by its name under `/dashboard/assets/`.
pub fn asset(name: &str) -> Option<Response<ProxyBody>> {
    let (body, kind) = match name {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "uplot.js" => (UPLOT_JS, "text/javascript; charset=utf-8"),
        "uplot.css" => (UPLOT_CSS, "text/css; charset=utf-8"),
        _ => return None,
    };
    Some(with_headers(Response::new(full(body)), kind))
}

/// The sign-in form, with `message` (already plain text) above it.
pub fn login(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let html = LOGIN.replace("{{MESSAGE}}", &escape(message));
    let mut response = with_headers(Response::new(full(html)), "text/html; charset=utf-8");
    *response.status_mut() = status;
    response
}

/// The dashboard for a signed-in session; `csrf` goes into a `<meta>` the script reads.
pub fn dashboard(csrf: &str) -> Response<ProxyBody> {
    let html = INDEX.replace("{{CSRF}}", &escape(csrf));
    with_headers(Response::new(full(html)), "text/html; charset=utf-8")
}

/// A 303 to `location` (after a form post), optionally setting a cookie.
pub fn see_other(location: &'static str, cookie: Option<String>) -> Response<ProxyBody> {
    let mut response = Response::new(full(""));
    *response.status_mut() = StatusCode::SEE_OTHER;
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(location));
    if let Some(cookie) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    no_store(response)
}

fn with_headers(response: Response<ProxyBody>, kind: &'static str) -> Response<ProxyBody> {
    let mut response = no_store(response);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

pub fn no_store(mut response: Response<ProxyBody>) -> Response<ProxyBody> {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
