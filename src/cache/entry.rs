//! What one cached answer is, as stored.

use serde::{Deserialize, Serialize};

use super::Partition;
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
    pub owner: Partition,
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

    /// The stored form: a fixed binary head (magic, keys, times, flags), the small fields as
    /// JSON, then the response text as it is. Decoding JSON-escaped response text was most of
    /// an exact hit's lookup cost (callgrind); this way the response is one copy.
    pub fn encode(&self) -> Vec<u8> {
        let small = SmallFields {
            model: &self.model,
            prompt: self.prompt.as_deref(),
            owner: &self.owner,
        };
        let small = serde_json::to_vec(&small).unwrap_or_default();
        let mut out = Vec::with_capacity(HEAD_LEN + small.len() + self.response.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.scope);
        out.extend_from_slice(&self.exact);
        out.extend_from_slice(&self.created_ms.to_le_bytes());
        out.extend_from_slice(&self.expires_ms.to_le_bytes());
        out.push(u8::from(self.has_usage));
        out.extend_from_slice(&(small.len() as u32).to_le_bytes());
        out.extend_from_slice(&small);
        out.extend_from_slice(self.response.as_bytes());
        out
    }

    /// The exact key of a stored entry, read from its head alone (the whole entry for the
    /// JSON form of older stores).
    pub fn exact_key(bytes: &[u8]) -> Option<[u8; 32]> {
        match bytes.strip_prefix(MAGIC) {
            Some(rest) => rest.get(32..64)?.try_into().ok(),
            None => Entry::decode(bytes).map(|entry| entry.exact),
        }
    }

    /// Reads either the binary form or the JSON form of stores written before it.
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let Some(rest) = bytes.strip_prefix(MAGIC) else {
            return serde_json::from_slice(bytes).ok();
        };
        let head = rest.get(..HEAD_LEN - MAGIC.len())?;
        let u64_at =
            |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().unwrap_or_default());
        let small_len = u32::from_le_bytes(head[81..85].try_into().ok()?) as usize;
        let body = &rest[HEAD_LEN - MAGIC.len()..];
        let small: OwnedSmallFields = serde_json::from_slice(body.get(..small_len)?).ok()?;
        let response = std::str::from_utf8(&body[small_len..]).ok()?.to_string();
        Some(Entry {
            scope: head[0..32].try_into().ok()?,
            exact: head[32..64].try_into().ok()?,
            model: small.model,
            created_ms: u64_at(64),
            expires_ms: u64_at(72),
            has_usage: head[80] == 1,
            response,
            prompt: small.prompt,
            owner: small.owner,
        })
    }
}

/// Marks the binary form (a JSON entry starts with `{`).
const MAGIC: &[u8; 4] = b"DJE\x01";
/// Magic, scope, exact, created, expires, has_usage, length of the small fields.
const HEAD_LEN: usize = 4 + 32 + 32 + 8 + 8 + 1 + 4;

#[derive(Serialize)]
struct SmallFields<'a> {
    model: &'a str,
    prompt: Option<&'a str>,
    owner: &'a Partition,
}

#[derive(Deserialize)]
struct OwnedSmallFields {
    model: String,
    prompt: Option<String>,
    #[serde(default)]
    owner: Partition,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            scope: [7; 32],
            exact: [9; 32],
            model: "gpt-4o-mini".into(),
            created_ms: 1_700_000_000_123,
            expires_ms: u64::MAX,
            has_usage: true,
            response: r#"{"id":"x","choices":[{"message":{"content":"ünï \"q\""}}]}"#.into(),
            prompt: Some("what is \"this\"?".into()),
            owner: Partition {
                tenant: "key:team".into(),
                namespace: "ns".into(),
            },
        }
    }

    #[test]
    fn binary_form_round_trips() {
        let entry = entry();
        let bytes = entry.encode();
        assert!(bytes.starts_with(MAGIC));
        assert_eq!(Entry::decode(&bytes), Some(entry));
    }

    #[test]
    fn json_entries_of_older_stores_still_read() {
        let entry = entry();
        let legacy = serde_json::to_vec(&entry).unwrap();
        assert_eq!(Entry::decode(&legacy), Some(entry));
    }

    #[test]
    fn the_exact_key_reads_from_either_form() {
        let entry = entry();
        assert_eq!(Entry::exact_key(&entry.encode()), Some([9; 32]));
        let legacy = serde_json::to_vec(&entry).unwrap();
        assert_eq!(Entry::exact_key(&legacy), Some([9; 32]));
        assert_eq!(Entry::exact_key(&entry.encode()[..40]), None, "cut short");
    }

    #[test]
    fn truncated_or_corrupt_entries_are_rejected() {
        let bytes = entry().encode();
        for cut in [3, 20, HEAD_LEN, HEAD_LEN + 5] {
            assert_eq!(Entry::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[HEAD_LEN - 4..HEAD_LEN].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Entry::decode(&bad), None);
    }
}
