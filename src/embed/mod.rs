//! Turning a prompt into a unit vector for the semantic tier.
//!
//! An enum rather than a trait object: each provider is one variant, and the rest of deja
//! only sees `embed` and `id`. The id names the model that made a vector; vectors of
//! different ids are never compared.
//!
//! - `openai`: the `/v1/embeddings` API of the upstream (or another OpenAI-compatible host)
//! - `local`: a sentence-transformers model run in-process with candle (feature
//!   `local-embeddings`, on by default)
//!
//! Both batch: prompts waiting at the same time are embedded together (`queue.rs`).

#[cfg(feature = "local-embeddings")]
mod local;
mod openai;
mod queue;

use std::time::Duration;

use http::HeaderValue;

use crate::config::{Config, EmbeddingProvider};
#[cfg(feature = "local-embeddings")]
pub use local::LocalEmbedder;
pub use openai::OpenAiEmbedder;

/// Clone: one failed call answers every prompt of its batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EmbedError {
    #[error("embedding timed out after {0:?}")]
    Timeout(Duration),
    #[error("embedding request failed: {0}")]
    Transport(String),
    #[error("embedding endpoint answered {0}")]
    Status(u16),
    #[error("embedding response malformed: {0}")]
    Malformed(&'static str),
    #[error("local embedding failed: {0}")]
    Local(String),
    /// The embedder's batching task or thread is gone (deja is shutting down).
    #[error("the embedder has stopped")]
    Stopped,
    /// The prompt has more tokens than the model reads. Its vector would stand for a prefix
    /// only (prompts that differ after it would look identical), so it gets none: the request
    /// uses the exact tier only.
    #[error("the prompt is longer than the embedding model's window")]
    TooLong,
}

/// Why an embedder could not be built (deja then refuses to start).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("building the embeddings HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// The local model could not be loaded; the message names `embedding.model_dir` and says
    /// how to fetch the default model.
    #[error("{0}")]
    Model(String),
    #[error("embedding.provider = \"local\" needs deja built with the `local-embeddings` feature")]
    LocalNotBuilt,
}

pub enum Embedder {
    OpenAi(OpenAiEmbedder),
    #[cfg(feature = "local-embeddings")]
    Local(LocalEmbedder),
}

impl Embedder {
    /// Builds the configured provider. `local` loads its model here (blocking, ~100 MB read):
    /// call off the async workers.
    pub fn from_config(config: &Config) -> Result<Embedder, BuildError> {
        match config.embedding.provider {
            EmbeddingProvider::Openai => Ok(Embedder::OpenAi(OpenAiEmbedder::new(config)?)),
            #[cfg(feature = "local-embeddings")]
            EmbeddingProvider::Local => Ok(Embedder::Local(LocalEmbedder::new(config)?)),
            #[cfg(not(feature = "local-embeddings"))]
            EmbeddingProvider::Local => Err(BuildError::LocalNotBuilt),
        }
    }

    /// Identifies the vector space (provider, model and, if asked for, the vectors' length).
    pub fn id(&self) -> String {
        match self {
            Embedder::OpenAi(e) => e.id(),
            #[cfg(feature = "local-embeddings")]
            Embedder::Local(e) => e.id.clone(),
        }
    }

    /// Follows a reloaded configuration: the upstream's address and key, which an `openai`
    /// embedder without its own uses.
    pub fn retarget(&self, config: &Config) {
        match self {
            Embedder::OpenAi(e) => e.retarget(config),
            #[cfg(feature = "local-embeddings")]
            Embedder::Local(_) => {}
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
            #[cfg(feature = "local-embeddings")]
            Embedder::Local(e) => e.embed(text).await,
        }
    }
}
