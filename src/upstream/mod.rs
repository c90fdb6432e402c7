//! The upstream client: builds the outgoing request (URL, end-to-end headers, credentials),
//! retries what is safe to retry (`retry`), and maps transport failures to 502/504. Callers
//! decide what to do with the response; `stream_response` hands one on to the client as it
//! arrives. The relay of uncached requests (`crate::endpoints::relay`) and WebSocket tunnels
//! (`crate::edge::tunnel`) are built on it.

pub mod retry;

use std::io::ErrorKind;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::config::UpstreamConfig;
use crate::error::ApiError;
use crate::upstream::retry::{RetryCause, retry_after, retryable_status};
use crate::wire::body::{BoxError, ProxyBody, streaming};

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The outgoing client. Base URL, key, timeout and retry policy come from the configuration
/// passed with each request, so a reload applies to the next one; only the connection
/// settings of the client itself are fixed at start-up.
#[derive(Clone)]
pub struct Upstream {
    client: reqwest::Client,
    /// HTTP/1.1 only, without a read timeout: WebSocket upgrades (`crate::edge::tunnel`).
    upgrades: reqwest::Client,
}

/// One upstream request, minus its body.
pub struct Outgoing<'a> {
    pub method: &'a Method,
    /// The path after `/v1` plus the query, e.g. `/chat/completions?x=1`.
    pub suffix: &'a str,
    /// The client's headers (filtered by `forwardable`).
    pub headers: &'a HeaderMap,
    /// deja reads this response to cache it, so it asks for an uncompressed body.
    pub parse_body: bool,
}

/// An upstream response, possibly after retries and fallbacks. The response has not been
/// relayed yet; its status may still be an error (the last one, when retries ran out).
pub struct Sent {
    pub response: reqwest::Response,
    /// The cause of every retry, in order, across all models tried (for metrics).
    pub retries: Vec<RetryCause>,
    /// The model that answered, when the request was routed by model (`models::send`).
    pub model: Option<String>,
    /// True when `model` is a fallback, not the model the request resolved to.
    pub fallback: bool,
}

/// No response at all, after `retries`.
#[derive(Debug)]
pub struct Failed {
    pub error: ApiError,
    pub retries: Vec<RetryCause>,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Result<Upstream, reqwest::Error> {
        let client = http_client(
            Duration::from_secs_f64(config.connect_timeout_secs),
            Some(Duration::from_secs_f64(config.idle_timeout_secs)),
        )?;
        // An upgrade needs HTTP/1.1 (ALPN would pick HTTP/2 on https), and a tunnel may be
        // quiet for minutes, so no read timeout.
        let upgrades = http_client_builder(Duration::from_secs_f64(config.connect_timeout_secs))
            .http1_only()
            .build()?;
        Ok(Upstream { client, upgrades })
    }

    /// Sends a WebSocket upgrade request (`GET` with the client's `Sec-WebSocket-*` headers)
    /// once, and waits for the response head: `101` to tunnel, or an answer to relay.
    pub async fn upgrade(
        &self,
        config: &UpstreamConfig,
        suffix: &str,
        client_headers: &HeaderMap,
    ) -> Result<reqwest::Response, ApiError> {
        let mut headers = outgoing_headers(config, client_headers)?;
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let url = upstream_url(&config.base_url, suffix)?;
        let request = self.upgrades.get(url).headers(headers).send();
        let timeout = Duration::try_from_secs_f64(config.timeout_secs)
            .unwrap_or(Duration::from_secs(u32::MAX.into()));
        match tokio::time::timeout(timeout, request).await {
            Err(_) => Err(ApiError::UpstreamTimeout {
                secs: timeout.as_secs_f64(),
            }),
            Ok(Err(err)) => Err(ApiError::UpstreamUnreachable(describe(&err))),
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// Sends a request once and waits for the response headers (not the body).
    pub async fn send(
        &self,
        config: &UpstreamConfig,
        out: &Outgoing<'_>,
        body: reqwest::Body,
    ) -> Result<reqwest::Response, ApiError> {
        self.attempt(config, out, Some(body))
            .await
            .map_err(|(error, _)| error)
    }

    /// Sends a request held in memory, retrying per `config.retry` on 429/500/502/503/504 and
    /// on connection failures before any response. Only the status is looked at, so nothing
    /// has reached the client when a retry starts. Our own timeout (504) is not retried: that
    /// request may still be running upstream.
    pub async fn send_retrying(
        &self,
        config: &UpstreamConfig,
        out: &Outgoing<'_>,
        body: Bytes,
    ) -> Result<Sent, Failed> {
        let started = Instant::now();
        let mut retries = Vec::new();
        let sent = |response, retries| Sent {
            response,
            retries,
            model: None,
            fallback: false,
        };
        loop {
            // An empty body (GET, HEAD, DELETE relays) is sent as no body at all.
            let attempt_body = (!body.is_empty()).then(|| reqwest::Body::from(body.clone()));
            let (cause, asked, outcome) = match self.attempt(config, out, attempt_body).await {
                Ok(response) if retryable_status(response.status()) => (
                    RetryCause::Status(response.status().as_u16()),
                    retry_after(response.headers(), SystemTime::now()),
                    Ok(response),
                ),
                Err((error, Some(cause))) => (cause, None, Err(error)),
                Ok(response) => return Ok(sent(response, retries)),
                Err((error, None)) => return Err(Failed { error, retries }),
            };
            let attempts = retries.len() as u32 + 1;
            let Some(delay) = config.retry.next_delay(attempts, started.elapsed(), asked) else {
                return match outcome {
                    Ok(response) => Ok(sent(response, retries)),
                    Err(error) => Err(Failed { error, retries }),
                };
            };
            let path = out.suffix.split('?').next().unwrap_or_default();
            tracing::warn!(
                path,
                attempt = attempts,
                cause = cause.label(),
                delay_ms = delay.as_millis() as u64,
                "upstream failed; retrying"
            );
            retries.push(cause);
            drop(outcome);
            tokio::time::sleep(delay).await;
        }
    }

    /// One attempt; an error carries its retry cause when a retry is safe (no response came,
    /// and the request never reached the upstream or was cut before any answer).
    async fn attempt(
        &self,
        config: &UpstreamConfig,
        out: &Outgoing<'_>,
        body: Option<reqwest::Body>,
    ) -> Result<reqwest::Response, (ApiError, Option<RetryCause>)> {
        let mut headers = outgoing_headers(config, out.headers).map_err(|error| (error, None))?;
        if out.parse_body {
            // deja must read this body to cache it; ask for it uncompressed.
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
            headers.remove(header::CONTENT_LENGTH);
        }
        let url = upstream_url(&config.base_url, out.suffix).map_err(|error| (error, None))?;
        let mut request = self
            .client
            .request(out.method.clone(), url)
            .headers(headers);
        if let Some(body) = body {
            request = request.body(body);
        }
        // Validated positive; a value too large to represent means no limit.
        let timeout = Duration::try_from_secs_f64(config.timeout_secs)
            .unwrap_or(Duration::from_secs(u32::MAX.into()));
        let timed_out = || ApiError::UpstreamTimeout {
            secs: timeout.as_secs_f64(),
        };
        match tokio::time::timeout(timeout, request.send()).await {
            Err(_) => Err((timed_out(), None)),
            // A connect timeout never reached the upstream, so it may be retried.
            Ok(Err(err)) if err.is_timeout() => Err((timed_out(), connect_cause(&err))),
            Ok(Err(err)) => Err((
                ApiError::UpstreamUnreachable(describe(&err)),
                connect_cause(&err),
            )),
            Ok(Ok(response)) => Ok(response),
        }
    }
}

/// The client's end-to-end headers, with deja's upstream key when one is configured.
fn outgoing_headers(config: &UpstreamConfig, client: &HeaderMap) -> Result<HeaderMap, ApiError> {
    let mut headers = forwardable(client);
    if let Some(key) = &config.api_key {
        let value = HeaderValue::try_from(format!("Bearer {}", key.expose()))
            .map_err(|_| ApiError::UpstreamUnreachable("invalid upstream.api_key".into()))?;
        headers.insert(header::AUTHORIZATION, value);
    }
    Ok(headers)
}

/// The upstream URL for `suffix`, refused (400) unless it stays on `base_url`'s scheme, host,
/// port and path: deja's own key must reach only the API it was configured for. The router
/// refuses dot segments already; this holds whatever the URL parser makes of a path.
pub(crate) fn upstream_url(base_url: &str, suffix: &str) -> Result<reqwest::Url, ApiError> {
    let base_text = base_url.trim_end_matches('/');
    let outside = || ApiError::invalid("The URL path leaves the upstream API's base path.", None);
    let base = reqwest::Url::parse(base_text)
        .map_err(|_| ApiError::UpstreamUnreachable("invalid upstream.base_url".into()))?;
    let url = reqwest::Url::parse(&format!("{base_text}{suffix}")).map_err(|_| outside())?;
    let base_path = base.path().trim_end_matches('/');
    let under_base = url.path() == base_path
        || url
            .path()
            .strip_prefix(base_path)
            .is_some_and(|rest| rest.starts_with('/'));
    let same_origin = url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default();
    if same_origin && under_base {
        Ok(url)
    } else {
        Err(outside())
    }
}

/// Whether a failed send may be retried: the connection could not be made, or it was reset
/// or closed before any response (a stale pooled connection, an upstream restarting).
fn connect_cause(err: &reqwest::Error) -> Option<RetryCause> {
    if err.is_connect() {
        return Some(RetryCause::Connect);
    }
    if err.is_body() || err.is_decode() || err.is_timeout() {
        return None;
    }
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(hyper) = cause.downcast_ref::<hyper::Error>()
            && hyper.is_incomplete_message()
        {
            return Some(RetryCause::Closed);
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
            )
        {
            return Some(RetryCause::Closed);
        }
        source = cause.source();
    }
    None
}

/// A reqwest client with rustls on ring (installed once per process).
pub fn http_client(
    connect_timeout: Duration,
    read_timeout: Option<Duration>,
) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = http_client_builder(connect_timeout);
    if let Some(read_timeout) = read_timeout {
        builder = builder.read_timeout(read_timeout);
    }
    builder.build()
}

fn http_client_builder(connect_timeout: Duration) -> reqwest::ClientBuilder {
    // Err means a provider is already installed, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
}

/// The error chain without URLs or bodies (they could hold secrets), for logs and 502 bodies.
fn describe(err: &reqwest::Error) -> String {
    let mut text = if err.is_connect() {
        "connection failed".to_string()
    } else if err.is_body() {
        "request body failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The end-to-end headers of a client request: hop-by-hop headers, those the `Connection`
/// header names, `Host` and deja's own headers removed.
pub fn forwardable(headers: &HeaderMap) -> HeaderMap {
    let mut out = strip_hop_by_hop(headers);
    out.remove(header::HOST);
    let own: Vec<HeaderName> = out
        .keys()
        .filter(|name| name.as_str().starts_with(crate::wire::headers::PREFIX))
        .cloned()
        .collect();
    for name in own {
        out.remove(name);
    }
    out
}

/// A copy of `headers` without hop-by-hop headers (also used on responses).
pub fn strip_hop_by_hop(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let lower = name.as_str();
        if HOP_BY_HOP.contains(&lower) || named.iter().any(|n| n == lower) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// The upstream's response as ours, body streamed chunk by chunk.
pub fn stream_response(
    upstream: reqwest::Response,
    cache_status: Option<&'static str>,
) -> Response<ProxyBody> {
    let mut response = Response::builder().status(upstream.status());
    if let Some(headers) = response.headers_mut() {
        *headers = response_headers(upstream.headers(), cache_status);
    }
    let body = upstream
        .bytes_stream()
        .map_err(|err| Box::new(err) as BoxError);
    response
        .body(streaming(body))
        .unwrap_or_else(|_| ApiError::UpstreamUnreachable("bad response".into()).into_response())
}

/// Upstream response headers minus hop-by-hop ones, plus `x-deja-cache` when given.
pub fn response_headers(upstream: &HeaderMap, cache_status: Option<&'static str>) -> HeaderMap {
    let mut headers = strip_hop_by_hop(upstream);
    if let Some(status) = cache_status {
        headers.insert(
            crate::wire::headers::CACHE,
            HeaderValue::from_static(status),
        );
    }
    headers
}

/// Whether a response status may be stored.
pub fn cacheable_status(status: StatusCode) -> bool {
    status == StatusCode::OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_stay_under_the_base_path() {
        let base = "http://127.0.0.1:9000/v1/";
        for suffix in ["", "/chat/completions", "/models?limit=2", "/a/./b"] {
            let url = upstream_url(base, suffix).unwrap();
            assert!(url.path().starts_with("/v1"), "{suffix}: {url}");
        }
        for suffix in [
            "/../x",
            "/%2e%2e/x",
            "/%2E./admin",
            "/a/../../x",
            "@evil/x",
            ".evil/x",
        ] {
            assert!(upstream_url(base, suffix).is_err(), "{suffix}");
        }
        assert!(upstream_url("http://127.0.0.1:9000", "/anything").is_ok());
    }

    #[test]
    fn drops_hop_by_hop_and_own_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-custom-hop"),
        );
        headers.insert("x-custom-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("host", HeaderValue::from_static("localhost:8080"));
        headers.insert(
            crate::wire::headers::NAMESPACE,
            HeaderValue::from_static("n"),
        );
        headers.insert("authorization", HeaderValue::from_static("Bearer sk-1"));
        headers.insert("openai-organization", HeaderValue::from_static("org"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        let out = forwardable(&headers);
        let names: Vec<&str> = out.keys().map(|n| n.as_str()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(out["authorization"], "Bearer sk-1");
        assert_eq!(out["openai-organization"], "org");
        assert_eq!(out.get_all("x-multi").iter().count(), 2);
    }
}
