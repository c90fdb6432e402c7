//! What one cached answer is, as stored.

use serde::{Deserialize, Serialize};

use super::key::Hash32;

/// A stored answer. `response` is the endpoint's non-streaming form (e.g. a
/// `chat.completion` object), from which both JSON and SSE hits are rendered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Everything but the last user message; a semantic hit must share it.
    pub scope: [u8; 32],
    /// The scope plus the last user message; a repeat finds the entry by this alone.
    pub exact: [u8; 32],
    /// Model the request named (for per-model thresholds and invalidation).
    pub model: String,
    /// Milliseconds since the epoch when upstream's answer was stored (for `Age`, `max-age`).
    pub created_ms: u64,
    /// Never served at or after this instant.
    pub expires_ms: u64,
    /// True when `response` carries token usage (a stream stored without
    /// `include_usage` does not, and cannot serve a request that asks for it).
    pub has_usage: bool,
    /// The response JSON text.
    pub response: String,
    /// The prompt text that was embedded, so a semantic candidate can be verified against a
    /// new query (`verify`). `None` for exact-only entries.
    #[serde(default)]
    pub prompt: Option<String>,
    /// Whose entry this is, for administration (purge a tenant or a namespace). Lookups never
    /// read it: the scope already contains both.
    #[serde(default)]
    pub owner: Owner,
}

/// The partition an entry was stored from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub tenant: String,
    pub namespace: String,
}

impl Owner {
    pub fn of(partition: &crate::cached::Partition) -> Owner {
        Owner {
            tenant: partition.tenant.clone(),
            namespace: partition.namespace.clone(),
        }
    }
}

impl Entry {
    pub fn scope(&self) -> Hash32 {
        Hash32(self.scope)
    }

    pub fn exact(&self) -> Hash32 {
        Hash32(self.exact)
    }

    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_ms
    }

    /// Whole seconds since the entry was stored.
    pub fn age_secs(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.created_ms) / 1000
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        serde_json::from_slice(bytes).ok()
    }
}
