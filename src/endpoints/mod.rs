//! The endpoints deja caches, one module each: what of a request is in its scope, and how a
//! stored answer is replayed (with the pieces in `crate::replay`).

pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod responses;
