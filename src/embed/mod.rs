//! Turning a prompt into a unit vector for the semantic tier.
//!
//! An enum rather than a trait object: each provider is one variant, and the rest of deja
//! only sees `embed` and `id`. The id names the model that made a vector; vectors of
//! different ids are never compared.
//!
//! - `openai`: the `/v1/embeddings` API of the upstream (or another OpenAI-compatible host)

mod openai;

use std::time::Duration;

use http::HeaderValue;

use crate::config::{Config, EmbeddingProvider};
pub use openai::OpenAiEmbedder;

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
