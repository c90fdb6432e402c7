//! Every `x-deja-*` header name, in one place: the request headers a caller sets and the
//! response headers deja reports with. Declared as `HeaderName`s, so a hit parses none of them.

use http::HeaderName;

/// Request and response headers deja owns start with this; request headers with it are never
/// forwarded upstream.
pub const PREFIX: &str = "x-deja-";

// === request ===

/// Names a sub-cache; requests only hit entries stored with the same namespace.
pub const NAMESPACE: HeaderName = HeaderName::from_static("x-deja-namespace");
/// Raises the similarity threshold for this request (a lower value is ignored).
pub const THRESHOLD: HeaderName = HeaderName::from_static("x-deja-threshold");

// === response ===

/// `hit`, `miss` or `bypass`, on every cached-endpoint response.
pub const CACHE: HeaderName = HeaderName::from_static("x-deja-cache");
/// Hits: `exact`, `semantic` or `coalesced`.
pub const MATCH: HeaderName = HeaderName::from_static("x-deja-match");
/// Hits: the cosine similarity of the matched prompt.
pub const SIMILARITY: HeaderName = HeaderName::from_static("x-deja-similarity");
/// Hits: the id of the entry served.
pub const ENTRY: HeaderName = HeaderName::from_static("x-deja-entry");
/// Misses where a semantic search ran: the best near-miss score.
pub const BEST_SIMILARITY: HeaderName = HeaderName::from_static("x-deja-best-similarity");
/// Misses: how many candidates above the threshold verification turned down.
pub const VERIFY_REJECTED: HeaderName = HeaderName::from_static("x-deja-verify-rejected");
/// Misses that used the exact tier only, and why.
pub const SEMANTIC_SKIPPED: HeaderName = HeaderName::from_static("x-deja-semantic-skipped");
/// Embeddings: how many inputs came from the cache, e.g. `2/3`.
pub const CACHED_INPUTS: HeaderName = HeaderName::from_static("x-deja-cached-inputs");
/// Requests routed by `[routing]`: the model that answered.
pub const MODEL: HeaderName = HeaderName::from_static("x-deja-model");
/// A fallback model answered (the answer is not cached).
pub const FALLBACK: HeaderName = HeaderName::from_static("x-deja-fallback");
