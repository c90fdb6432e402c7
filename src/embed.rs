//! Turning a prompt into a unit vector for the semantic tier.
//!
//! An enum rather than a trait object: each provider is one variant, and the rest of deja
//! only sees `embed` and `id`. The id names the model that made a vector; vectors of
//! different ids are never compared.

use std::time::Duration;

use http::HeaderValue;
use serde_json::{Value, json};

use crate::cache::index::normalize;
use crate::config::{Config, EmbeddingProvider, Secret};
use crate::upstream::http_client;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("embedding timed out after {0:?}")]
    Timeout(Duration),
    #[error("embedding request failed: {0}")]
    Transport(String),
    #[error("embedding endpoint answered {0}")]
    Status(u16),
    #[error("embedding response malformed: {0}")]
    Malformed(&'static str),
}

pub enum Embedder {
    OpenAi(OpenAiEmbedder),
}

impl Embedder {
    pub fn from_config(config: &Config) -> Result<Embedder, reqwest::Error> {
        match config.embedding.provider {
            EmbeddingProvider::Openai => Ok(Embedder::OpenAi(OpenAiEmbedder::new(config)?)),
        }
    }

    /// Identifies the vector space (provider and model).
    pub fn id(&self) -> String {
        match self {
            Embedder::OpenAi(e) => format!("openai:{}", e.model),
        }
    }

    /// Embeds `text` as a unit vector. `caller_auth` is the caller's `Authorization`, used when
    /// no key is configured for embeddings.
    pub async fn embed(
        &self,
        text: &str,
        caller_auth: Option<&HeaderValue>,
    ) -> Result<Vec<f32>, EmbedError> {
        match self {
            Embedder::OpenAi(e) => e.embed(text, caller_auth).await,
        }
    }
}

/// `POST /embeddings` on an OpenAI-compatible API (by default, the upstream itself).
pub struct OpenAiEmbedder {
    client: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<Secret>,
    timeout: Duration,
}

impl OpenAiEmbedder {
    fn new(config: &Config) -> Result<Self, reqwest::Error> {
        let timeout = Duration::from_millis(config.embedding.timeout_ms);
        Ok(OpenAiEmbedder {
            client: http_client(timeout, None)?,
            url: format!(
                "{}/embeddings",
                config.embedding_base_url().trim_end_matches('/')
            ),
            model: config.embedding.model.clone(),
            api_key: config
                .embedding
                .api_key
                .clone()
                .or_else(|| config.upstream.api_key.clone()),
            timeout,
        })
    }

    async fn embed(
        &self,
        text: &str,
        caller_auth: Option<&HeaderValue>,
    ) -> Result<Vec<f32>, EmbedError> {
        let mut request = self.client.post(&self.url).json(&json!({
            "model": self.model,
            "input": text,
            "encoding_format": "float",
        }));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key.expose());
        } else if let Some(auth) = caller_auth {
            request = request.header(http::header::AUTHORIZATION, auth.clone());
        }
        let call = async {
            let response = request
                .send()
                .await
                .map_err(|e| EmbedError::Transport(e.without_url().to_string()))?;
            if !response.status().is_success() {
                return Err(EmbedError::Status(response.status().as_u16()));
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
