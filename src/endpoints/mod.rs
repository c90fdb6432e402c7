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
