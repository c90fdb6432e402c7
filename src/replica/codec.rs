//! What replicas write to Redis: an entry with its id and vector as one binary value, and
//! positions in the shared log (stream ids).

use crate::cache::entry::Entry;

/// Opens a value that carries the entry's id. Values written before ids were shared start
/// with the embedder name's length instead, which is never this large.
const WITH_ID: [u8; 2] = [0xff, 0xff];

/// One stored answer as Redis holds it: its id on the replica that stored it, the embedder
/// that made the vector (a replica with another embedder takes the entry for the exact tier
/// only), the entry, the vector.
pub fn encode(id: u64, embedder: &str, entry: &Entry, vector: Option<&[f32]>) -> Vec<u8> {
    let encoded = entry.encode();
    let dims = vector.map_or(0, <[f32]>::len);
    let mut out = Vec::with_capacity(10 + 2 + embedder.len() + 4 + encoded.len() + 4 * dims);
    out.extend_from_slice(&WITH_ID);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(embedder.len() as u16).to_le_bytes());
    out.extend_from_slice(embedder.as_bytes());
    out.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
    out.extend_from_slice(&encoded);
    for x in vector.unwrap_or_default() {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// A value read back.
#[derive(Debug, PartialEq)]
pub struct Decoded {
    /// `None` in values written before ids were shared.
    pub id: Option<u64>,
    pub entry: Entry,
    /// Present when it was made by the same embedder as here.
    pub vector: Option<Vec<f32>>,
}

pub fn decode(bytes: &[u8], embedder: &str) -> Option<Decoded> {
    let (id, bytes) = match bytes.strip_prefix(&WITH_ID) {
        Some(rest) => (
            Some(u64::from_le_bytes(rest.get(..8)?.try_into().ok()?)),
            rest.get(8..)?,
        ),
        None => (None, bytes),
    };
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
    Some(Decoded { id, entry, vector })
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

    fn decoded(id: Option<u64>, vector: Option<Vec<f32>>) -> Option<Decoded> {
        Some(Decoded {
            id,
            entry: entry(),
            vector,
        })
    }

    #[test]
    fn round_trips_and_drops_vectors_of_another_embedder() {
        let id = Some(3 << 40 | 17);
        let bytes = encode(3 << 40 | 17, "local:a", &entry(), Some(&[0.5, -1.0]));
        assert_eq!(
            decode(&bytes, "local:a"),
            decoded(id, Some(vec![0.5, -1.0]))
        );
        assert_eq!(decode(&bytes, "local:b"), decoded(id, None));
        let plain = encode(1, "local:a", &entry(), None);
        assert_eq!(decode(&plain, "local:a"), decoded(Some(1), None));
        assert_eq!(decode(&bytes[..bytes.len() - 1], "local:a"), None);
        assert_eq!(decode(&bytes[..10], "local:a"), None);
    }

    #[test]
    fn reads_values_written_before_ids_were_shared() {
        // The old layout is the new one without its first ten bytes.
        let bytes = encode(42, "local:a", &entry(), Some(&[0.5]));
        assert_eq!(
            decode(&bytes[10..], "local:a"),
            decoded(None, Some(vec![0.5]))
        );
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
