//! What replicas write to Redis: an entry with its vector as one binary value, and positions
//! in the shared log (stream ids).

use crate::cache::entry::Entry;

/// One stored answer as Redis holds it: the embedder that made the vector (a replica with
/// another embedder takes the entry for the exact tier only), the entry, the vector.
pub fn encode(embedder: &str, entry: &Entry, vector: Option<&[f32]>) -> Vec<u8> {
    let encoded = entry.encode();
    let dims = vector.map_or(0, <[f32]>::len);
    let mut out = Vec::with_capacity(2 + embedder.len() + 4 + encoded.len() + 4 * dims);
    out.extend_from_slice(&(embedder.len() as u16).to_le_bytes());
    out.extend_from_slice(embedder.as_bytes());
    out.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
    out.extend_from_slice(&encoded);
    for x in vector.unwrap_or_default() {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// The entry, and its vector when it was made by `embedder` (the same model as here).
pub fn decode(bytes: &[u8], embedder: &str) -> Option<(Entry, Option<Vec<f32>>)> {
    let name_len = u16::from_le_bytes(bytes.get(..2)?.try_into().ok()?) as usize;
    let name = bytes.get(2..2 + name_len)?;
    let rest = &bytes[2 + name_len..];
    let entry_len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let entry = Entry::decode(rest.get(4..4 + entry_len)?)?;
    let tail = &rest[4 + entry_len..];
    if !tail.len().is_multiple_of(4) {
        return None;
    }
    let vector = (!tail.is_empty() && name == embedder.as_bytes()).then(|| {
        tail.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    });
    Some((entry, vector))
}

/// A stream id (`ms-seq`), ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogPos(pub u64, pub u64);

impl LogPos {
    pub const START: LogPos = LogPos(0, 0);

    pub fn parse(text: &str) -> Option<LogPos> {
        let (ms, seq) = text.split_once('-')?;
        Some(LogPos(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for LogPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            scope: [1; 32],
            exact: [2; 32],
            model: "m".into(),
            created_ms: 5,
            expires_ms: 9,
            has_usage: true,
            response: "{\"a\":1}".into(),
            prompt: Some("p".into()),
            owner: Default::default(),
        }
    }

    #[test]
    fn round_trips_and_drops_vectors_of_another_embedder() {
        let bytes = encode("local:a", &entry(), Some(&[0.5, -1.0]));
        assert_eq!(
            decode(&bytes, "local:a"),
            Some((entry(), Some(vec![0.5, -1.0])))
        );
        assert_eq!(decode(&bytes, "local:b"), Some((entry(), None)));
        let plain = encode("local:a", &entry(), None);
        assert_eq!(decode(&plain, "local:a"), Some((entry(), None)));
        assert_eq!(decode(&bytes[..bytes.len() - 1], "local:a"), None);
        assert_eq!(decode(&bytes[..10], "local:a"), None);
    }

    #[test]
    fn positions_order_as_redis_does() {
        let a = LogPos::parse("1700000000000-2").unwrap();
        let b = LogPos::parse("1700000000000-10").unwrap();
        let c = LogPos::parse("1700000000001-0").unwrap();
        assert!(a < b && b < c && LogPos::START < a);
        assert_eq!(a.to_string(), "1700000000000-2");
        assert_eq!(LogPos::parse("x-1"), None);
    }
}
