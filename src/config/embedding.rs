//! `[embedding]`: how prompts become vectors for the semantic tier.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Secret, check_url, invalid};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingProvider {
    /// `POST {base_url}/embeddings` on an OpenAI-compatible API.
    Openai,
    /// In-process sentence-transformers model (BERT family) loaded from `model_dir`.
    Local,
}

/// How the `openai` provider asks for vectors (the API's `encoding_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingEncoding {
    /// Little-endian f32 bytes in base64: the same numbers, 4x less to parse than JSON floats
    /// (what the official SDKs ask for).
    Base64,
    /// JSON numbers, for OpenAI-compatible servers that refuse base64.
    Float,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddingConfig {
    pub provider: EmbeddingProvider,
    /// Embeddings endpoint base; empty means "the upstream's base_url".
    pub base_url: String,
    /// Embedding model name sent upstream.
    pub model: String,
    /// Key for the embeddings call; when unset, the upstream key or else the caller's key is used.
    pub api_key: Option<Secret>,
    /// Milliseconds an embedding may take before the request proceeds as a miss.
    pub timeout_ms: u64,
    /// `local`: folder with config.json, tokenizer.json, model.safetensors (and optionally the
    /// sentence-transformers files); relative paths are taken from the working directory.
    pub model_dir: PathBuf,
    /// Most prompts embedded together: in one forward pass (`local`), in one `/embeddings`
    /// call (`openai`).
    pub max_batch: usize,
    /// `openai`: milliseconds a prompt waits for others to share its `/embeddings` call
    /// (0: only those already waiting).
    pub batch_wait_ms: u64,
    /// `openai`: length of the vectors asked for (the API's `dimensions`, text-embedding-3
    /// models); unset means the model's own. Part of the embedder id.
    pub dimensions: Option<usize>,
    /// `openai`: `base64` (default) or `float`. A server that ignores it and sends floats
    /// works either way.
    pub encoding_format: EmbeddingEncoding,
    /// `local`: CPU threads for inference; 0 means one per available core.
    pub threads: usize,
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        Self {
            provider: EmbeddingProvider::Openai,
            base_url: String::new(),
            model: "text-embedding-3-small".into(),
            api_key: None,
            timeout_ms: 2000,
            model_dir: PathBuf::from("models/all-MiniLM-L6-v2"),
            max_batch: 32,
            batch_wait_ms: 2,
            dimensions: None,
            encoding_format: EmbeddingEncoding::Base64,
            threads: 0,
        }
    }
}

/// Longest vector `embedding.dimensions` may ask for (text-embedding-3-large has 3072).
const MAX_DIMENSIONS: usize = 16384;

impl EmbeddingConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.base_url.is_empty() {
            check_url("embedding.base_url", &self.base_url)?;
        }
        if !(1..=1024).contains(&self.max_batch) {
            return invalid("embedding.max_batch", "must be between 1 and 1024");
        }
        let wait = self.batch_wait_ms;
        if wait > 1000 || wait >= self.timeout_ms {
            return invalid(
                "embedding.batch_wait_ms",
                "must be at most 1000 and below embedding.timeout_ms",
            );
        }
        if let Some(dimensions) = self.dimensions {
            if self.provider != EmbeddingProvider::Openai {
                return invalid(
                    "embedding.dimensions",
                    "applies to provider = \"openai\" only",
                );
            }
            if !(1..=MAX_DIMENSIONS).contains(&dimensions) {
                return invalid(
                    "embedding.dimensions",
                    &format!("must be in 1..={MAX_DIMENSIONS}"),
                );
            }
        }
        if self.threads > 1024 {
            return invalid(
                "embedding.threads",
                "must be at most 1024 (0 = one per core)",
            );
        }
        if self.provider == EmbeddingProvider::Local && self.model_dir.as_os_str().is_empty() {
            return invalid(
                "embedding.model_dir",
                "must be set when provider = \"local\"",
            );
        }
        Ok(())
    }

    /// The embedder (and the vectors already stored) are made at start-up: the whole section
    /// needs a restart.
    pub(super) fn keep_start_up(&self, next: &mut Self, changed: &mut Vec<&'static str>) {
        keep!(self, next, changed, "embedding");
    }
}
