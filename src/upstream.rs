//! The upstream client: builds the outgoing request (URL, end-to-end headers, credentials) and
//! maps transport failures to 502/504. Callers decide what to do with the response.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use crate::config::{Secret, UpstreamConfig};
use crate::error::ApiError;

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

/// Prefix of deja's own request headers (cache controls); they stop here.
pub const DEJA_HEADER_PREFIX: &str = "x-deja-";

#[derive(Clone)]
pub struct Upstream {
    client: reqwest::Client,
    base_url: String,
    api_key: Option<Secret>,
    timeout: Duration,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Result<Upstream, reqwest::Error> {
        let client = http_client(
            Duration::from_secs_f64(config.connect_timeout_secs),
            Some(Duration::from_secs_f64(config.idle_timeout_secs)),
        )?;
        Ok(Upstream {
            client,
            base_url: config.base_url.trim_end_matches('/').to_string(),
            api_key: config.api_key.clone(),
            timeout: Duration::from_secs_f64(config.timeout_secs),
        })
    }

    /// `suffix` is the path after `/v1` plus the query, e.g. `/chat/completions?x=1`.
    pub fn url(&self, suffix: &str) -> String {
        format!("{}{}", self.base_url, suffix)
    }

    /// Sends a request and waits for the response headers (not the body).
    pub async fn send(
        &self,
        method: Method,
        suffix: &str,
        client_headers: &HeaderMap,
        body: reqwest::Body,
        parse_body: bool,
    ) -> Result<reqwest::Response, ApiError> {
        let mut headers = forwardable(client_headers);
        if let Some(key) = &self.api_key {
            let value = HeaderValue::try_from(format!("Bearer {}", key.expose()))
                .map_err(|_| ApiError::UpstreamUnreachable("invalid upstream.api_key".into()))?;
            headers.insert(header::AUTHORIZATION, value);
        }
        if parse_body {
            // deja must read this body to cache it; ask for it uncompressed.
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
            headers.remove(header::CONTENT_LENGTH);
        }
        let request = self
            .client
            .request(method, self.url(suffix))
            .headers(headers)
            .body(body);
        match tokio::time::timeout(self.timeout, request.send()).await {
            Err(_) => Err(ApiError::UpstreamTimeout {
                secs: self.timeout.as_secs_f64(),
            }),
            Ok(Err(err)) if err.is_timeout() => Err(ApiError::UpstreamTimeout {
                secs: self.timeout.as_secs_f64(),
            }),
            Ok(Err(err)) => Err(ApiError::UpstreamUnreachable(describe(&err))),
            Ok(Ok(response)) => Ok(response),
        }
    }
}

/// A reqwest client with rustls on ring (installed once per process).
pub fn http_client(
    connect_timeout: Duration,
    read_timeout: Option<Duration>,
) -> Result<reqwest::Client, reqwest::Error> {
    // Err means a provider is already installed, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true);
    if let Some(read_timeout) = read_timeout {
        builder = builder.read_timeout(read_timeout);
    }
    builder.build()
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
        .filter(|name| name.as_str().starts_with(DEJA_HEADER_PREFIX))
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

/// Whether a response status may be stored.
pub fn cacheable_status(status: StatusCode) -> bool {
    status == StatusCode::OK
}

#[cfg(test)]
mod tests {
    use super::*;

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
        headers.insert("x-deja-namespace", HeaderValue::from_static("n"));
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
