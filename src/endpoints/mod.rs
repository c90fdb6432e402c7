//! The endpoints deja caches, one module each (what of a request is in its scope, and how a
//! stored answer is replayed), and what their replays share.

pub mod chat;
pub mod chunks;
pub mod completions;
pub mod embeddings;
pub mod json_splice;
pub mod lazy_replay;
#[cfg(test)]
mod replay_reference;
pub mod responses;
pub mod text;
