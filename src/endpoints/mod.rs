//! The endpoints deja caches, one module each: what of a request is in its scope, and how a
//! stored answer is replayed (with the pieces in `crate::replay`); and `relay`, the handler of
//! every request deja does not cache.

pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod relay;
#[cfg(test)]
mod replay_reference;
pub mod responses;

use crate::config::Config;
use crate::flow::Endpoint;

/// The cached endpoint for a `POST` path (after `/v1`), if any.
pub fn cached_endpoint(config: &Config, path: &str) -> Option<&'static dyn Endpoint> {
    match path {
        "/chat/completions" => Some(&chat::ChatCompletions),
        "/completions" => Some(&completions::Completions),
        // Stored responses keep their upstream ids, which only the same organization can use.
        "/responses" if !config.cache.shared || config.cache.cache_stored_responses => {
            Some(&responses::RESPONSES_CACHING_STORED)
        }
        "/responses" => Some(&responses::RESPONSES),
        _ => None,
    }
}
