//! Embeddings from an OpenAI-compatible `/v1/embeddings` endpoint.
//!
//! The API refuses an input with more tokens than the model's window (8191 tokens for
//! text-embedding-3-small) with a 400; that answer becomes `EmbedError::TooLong`, so the
//! request uses the exact tier only, as with the local embedder.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use serde_json::{Value, json};

use super::EmbedError;
use crate::cache::index::normalize;
use crate::config::{Config, Secret};
use crate::upstream::http_client;

/// `POST /embeddings` on an OpenAI-compatible API (by default, the upstream itself).
pub struct OpenAiEmbedder {
    /// Model name, part of the embedder id.
    pub(super) model: String,
    client: reqwest::Client,
    /// Where and with which key to call; follows the upstream's on reload (`retarget`).
    target: ArcSwap<Target>,
    timeout: Duration,
}

struct Target {
    url: String,
    api_key: Option<Secret>,
}

impl Target {
    fn of(config: &Config) -> Target {
        Target {
            url: format!(
                "{}/embeddings",
                config.embedding_base_url().trim_end_matches('/')
            ),
            api_key: config
                .embedding
                .api_key
                .clone()
                .or_else(|| config.upstream.api_key.clone()),
        }
    }
}

impl OpenAiEmbedder {
    pub(super) fn new(config: &Config) -> Result<Self, reqwest::Error> {
        let timeout = Duration::from_millis(config.embedding.timeout_ms);
        Ok(OpenAiEmbedder {
            client: http_client(timeout, None)?,
            target: ArcSwap::from_pointee(Target::of(config)),
            model: config.embedding.model.clone(),
            timeout,
        })
    }

    /// Takes the upstream's address and key from a reloaded configuration (the embedding
    /// section's own settings need a restart and were kept).
    pub(super) fn retarget(&self, config: &Config) {
        self.target.store(Arc::new(Target::of(config)));
    }

    pub(super) async fn embed(
        &self,
        text: &str,
        caller_auth: Option<&HeaderValue>,
    ) -> Result<Vec<f32>, EmbedError> {
        let target = self.target.load();
        let mut request = self.client.post(&target.url).json(&json!({
            "model": self.model,
            "input": text,
            "encoding_format": "float",
        }));
        if let Some(key) = &target.api_key {
            request = request.bearer_auth(key.expose());
        } else if let Some(auth) = caller_auth {
            request = request.header(http::header::AUTHORIZATION, auth.clone());
        }
        let call = async {
            let response = request
                .send()
                .await
                .map_err(|e| EmbedError::Transport(e.without_url().to_string()))?;
            let status = response.status();
            if status == http::StatusCode::BAD_REQUEST {
                let body = response.json::<Value>().await.unwrap_or_default();
                return Err(if over_window(&body) {
                    EmbedError::TooLong
                } else {
                    EmbedError::Status(status.as_u16())
                });
            }
            if !status.is_success() {
                return Err(EmbedError::Status(status.as_u16()));
            }
            response
                .json::<Value>()
                .await
                .map_err(|_| EmbedError::Malformed("not JSON"))
        };
        let body = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| EmbedError::Timeout(self.timeout))??;
        let mut vector: Vec<f32> = body
            .pointer("/data/0/embedding")
            .and_then(Value::as_array)
            .ok_or(EmbedError::Malformed("no data[0].embedding"))?
            .iter()
            .map(|x| x.as_f64().map(|x| x as f32))
            .collect::<Option<_>>()
            .ok_or(EmbedError::Malformed("non-numeric embedding"))?;
        if !normalize(&mut vector) {
            return Err(EmbedError::Malformed("zero or non-finite vector"));
        }
        Ok(vector)
    }
}

/// Whether a 400 answer says the input has more tokens than the model reads (8191 for the
/// text-embedding-3 models). OpenAI says so in the message only ("This model's maximum context
/// length is 8192 tokens, however you requested ...", or "Invalid 'input': maximum context
/// length is 8192 tokens."), with `code` null; Azure and some others set
/// `code: "context_length_exceeded"`.
fn over_window(body: &Value) -> bool {
    let error = &body["error"];
    error["code"] == "context_length_exceeded"
        || error["message"]
            .as_str()
            .is_some_and(|m| m.contains("maximum context length"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_openai_window_errors() {
        let openai = json!({"error": {
            "message": "Invalid 'input': maximum context length is 8192 tokens.",
            "type": "invalid_request_error", "param": null, "code": null}});
        let azure = json!({"error": {"message": "too long", "code": "context_length_exceeded"}});
        let other = json!({"error": {"message": "Invalid 'model'", "code": null}});
        assert!(over_window(&openai) && over_window(&azure));
        assert!(!over_window(&other) && !over_window(&json!("not an error")));
    }
}
