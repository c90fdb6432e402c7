//! The one place where deja's own failures become HTTP responses, in OpenAI's error shape
//! `{"error":{"message","type","param","code"}}` so SDKs raise their usual exceptions.
//! `refusal`: why a managed key was refused (the 429s), as the limits report it.

pub mod refusal;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde_json::json;

use crate::error::refusal::{Refusal, duration_text};
use crate::wire::body::{ProxyBody, full};

/// Errors that deja answers itself (upstream errors are relayed verbatim instead).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("request body is larger than the {limit} bytes this proxy accepts")]
    BodyTooLarge { limit: usize },
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    #[error("the request body did not arrive within {secs} seconds")]
    BodyTimeout { secs: u64 },
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    #[error("upstream unreachable: {0}")]
    UpstreamUnreachable(String),
    #[error("upstream did not answer within {secs} seconds")]
    UpstreamTimeout { secs: f64 },
    #[error("no route for {0}: deja proxies paths under /v1/")]
    NotFound(String),
    #[error(
        "Incorrect API key provided. This deja proxy knows no such key; ask its operator for one."
    )]
    InvalidApiKey,
    #[error("{}", refusal_message(.0))]
    RateLimited(Refusal),
    /// A key with a budget asked for something deja has no price for, so it could not keep
    /// the budget.
    #[error(
        "This key has a budget, and deja has no price for {0}. Ask the operator to add it to \
         [pricing] (or a default price, [pricing.\"*\"])."
    )]
    Unpriced(String),
    /// A bug in deja (a handler panicked); the details are in deja's log.
    #[error("The server had an error while processing your request. Sorry about that!")]
    Internal,
}

fn refusal_message(refusal: &Refusal) -> String {
    let wait = duration_text(refusal.retry_ms());
    match refusal {
        Refusal::Requests { limit, .. } => format!(
            "Rate limit reached for requests per minute (RPM): limit {limit}. Please try again in {wait}."
        ),
        Refusal::Tokens {
            limit, requested, ..
        } if requested > limit => format!(
            "Request too large for tokens per minute (TPM): limit {limit}, requested {requested}. \
             Reduce the prompt or max_tokens."
        ),
        Refusal::Tokens {
            limit, requested, ..
        } => format!(
            "Rate limit reached for tokens per minute (TPM): limit {limit}, requested {requested}. \
             Please try again in {wait}."
        ),
        Refusal::Budget { budget_usd, .. } => format!(
            "You exceeded your budget of ${budget_usd:.2} for this period. It renews in {wait}."
        ),
    }
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyRead(_) | ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::UpstreamUnreachable(_) => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::InvalidApiKey => StatusCode::UNAUTHORIZED,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unpriced(_) => StatusCode::FORBIDDEN,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `type` field.
    fn kind(&self) -> &'static str {
        match self {
            ApiError::BodyTooLarge { .. }
            | ApiError::BodyRead(_)
            | ApiError::BodyTimeout { .. }
            | ApiError::InvalidRequest { .. }
            | ApiError::NotFound(_)
            | ApiError::InvalidApiKey
            | ApiError::Unpriced(_) => "invalid_request_error",
            ApiError::Internal => "server_error",
            ApiError::UpstreamUnreachable(_) | ApiError::UpstreamTimeout { .. } => "upstream_error",
            ApiError::RateLimited(Refusal::Requests { .. }) => "requests",
            ApiError::RateLimited(Refusal::Tokens { .. }) => "tokens",
            ApiError::RateLimited(Refusal::Budget { .. }) => "insufficient_quota",
        }
    }

    /// A short stable label, used as OpenAI's `code` and in logs.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BodyTooLarge { .. } => "request_too_large",
            ApiError::BodyRead(_) => "body_read_failed",
            ApiError::BodyTimeout { .. } => "request_timeout",
            ApiError::InvalidRequest { .. } => "invalid_request",
            ApiError::UpstreamUnreachable(_) => "upstream_unreachable",
            ApiError::UpstreamTimeout { .. } => "upstream_timeout",
            ApiError::NotFound(_) => "not_found",
            ApiError::InvalidApiKey => "invalid_api_key",
            ApiError::RateLimited(Refusal::Budget { .. }) => "insufficient_quota",
            ApiError::RateLimited(_) => "rate_limit_exceeded",
            ApiError::Unpriced(_) => "model_not_priced",
            ApiError::Internal => "internal_error",
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidRequest { param, .. } => *param,
            ApiError::Unpriced(_) => Some("model"),
            _ => None,
        }
    }

    /// The OpenAI-shaped error body (`{"error": {message, type, param, code}}`).
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.to_string(),
                "type": self.kind(),
                "param": self.param(),
                "code": self.code(),
            }
        })
    }

    pub fn into_response(self) -> http::Response<ProxyBody> {
        let body = self.body();
        let mut response = http::Response::new(full(Bytes::from(body.to_string())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let ApiError::RateLimited(refusal) = &self {
            let ms = refusal.retry_ms();
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(ms.div_ceil(1000).max(1)),
            );
            headers.insert("retry-after-ms", HeaderValue::from(ms));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn errors_have_openai_shape() {
        let response = ApiError::invalid("bad json", Some("messages")).into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["error"]["message"], "bad json");
        assert_eq!(value["error"]["type"], "invalid_request_error");
        assert_eq!(value["error"]["param"], "messages");
        assert_eq!(value["error"]["code"], "invalid_request");
    }

    #[test]
    fn statuses() {
        assert_eq!(
            ApiError::BodyTooLarge { limit: 1 }.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            ApiError::UpstreamTimeout { secs: 1.0 }.status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            ApiError::UpstreamUnreachable("x".into()).status(),
            StatusCode::BAD_GATEWAY
        );
    }
}
