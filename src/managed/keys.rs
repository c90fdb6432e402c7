//! Managed mode: who is calling. Callers present a deja key (as `Authorization: Bearer` or
//! `api-key`, like OpenAI and Azure clients do); deja knows only SHA-256 hashes of keys.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;
use http::header::{self, HeaderName};
use sha2::{Digest, Sha256};

use crate::config::{Config, KeyConfig};

/// The headers that carry a caller's credentials; in managed mode none of them goes upstream.
pub const CREDENTIAL_HEADERS: [HeaderName; 2] =
    [header::AUTHORIZATION, HeaderName::from_static("api-key")];

/// The headers that choose which organization and project an OpenAI key bills; in managed
/// mode the caller must not choose for deja's key, so none of them goes upstream either.
pub const BILLING_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("openai-organization"),
    HeaderName::from_static("openai-project"),
];

/// The configured keys by hash, built from each configuration (so a reload swaps them).
#[derive(Default)]
pub struct KeyRing {
    by_hash: HashMap<[u8; 32], Arc<KeyConfig>>,
}

impl KeyRing {
    pub fn from_config(config: &Config) -> KeyRing {
        let by_hash = config
            .keys
            .iter()
            .filter_map(|key| Some((parse_hash(&key.hash)?, Arc::new(key.clone()))))
            .collect();
        KeyRing { by_hash }
    }

    /// The key these headers present, or `None` (absent or unknown).
    pub fn authenticate(&self, headers: &HeaderMap) -> Option<Arc<KeyConfig>> {
        let presented = presented_key(headers)?;
        self.by_hash.get(&digest(presented)).cloned()
    }
}

pub use crate::config::hash_key;

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix("sha256:")?;
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?.trim();
        let (scheme, key) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(key.trim())
            .filter(|key| !key.is_empty());
    }
    headers
        .get("api-key")?
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|key| !key.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ring(keys: &[(&str, &str)]) -> KeyRing {
        let mut config = Config::default();
        for (id, key) in keys {
            config.keys.push(KeyConfig::unlimited(id, key));
        }
        KeyRing::from_config(&config)
    }

    #[test]
    fn hash_matches_sha256sum() {
        // printf %s abc | sha256sum
        assert_eq!(
            hash_key("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn finds_keys_by_bearer_or_api_key_header() {
        let ring = ring(&[("alice", "sk-deja-alice"), ("bob", "sk-deja-bob")]);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-deja-alice"),
        );
        assert_eq!(ring.authenticate(&headers).unwrap().id, "alice");
        let mut headers = HeaderMap::new();
        headers.insert("api-key", HeaderValue::from_static("sk-deja-bob"));
        assert_eq!(ring.authenticate(&headers).unwrap().id, "bob");
        for bad in [
            "Bearer sk-deja-carol",
            "Basic sk-deja-alice",
            "Bearer ",
            "sk-deja-alice",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(bad));
            assert!(ring.authenticate(&headers).is_none(), "{bad}");
        }
        assert!(ring.authenticate(&HeaderMap::new()).is_none());
    }
}
