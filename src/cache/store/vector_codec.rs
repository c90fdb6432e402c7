//! How a vector is kept in sled: the scope's 32 bytes, then the components as little-endian
//! f16 (half the bytes of f32; unit vectors re-score within 5e-4 of their f32 cosine). Stores
//! written before f16 kept f32 components; `decode_f32_vector` reads those once, to convert.

use half::f16;

use super::Hash32;

/// The stored size of a vector of `dim` components (scope ‖ f16s).
pub fn vector_bytes(dim: usize) -> u64 {
    32 + 2 * dim as u64
}

pub(super) fn encode_vector(scope: &[u8; 32], vector: &[f32]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(vector_bytes(vector.len()) as usize);
    bytes.extend_from_slice(scope);
    for &x in vector {
        bytes.extend_from_slice(&f16::from_f32(x).to_le_bytes());
    }
    bytes
}

pub(super) fn decode_vector(bytes: &[u8]) -> (Hash32, Vec<f32>) {
    let vector = components(bytes)
        .chunks_exact(2)
        .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    (vector_scope(bytes), vector)
}

/// A vector as stores before f16 kept it (scope ‖ f32 LE).
pub(super) fn decode_f32_vector(bytes: &[u8]) -> (Hash32, Vec<f32>) {
    let vector = components(bytes)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (vector_scope(bytes), vector)
}

fn vector_scope(bytes: &[u8]) -> Hash32 {
    Hash32::from_slice(&bytes[..32.min(bytes.len())]).unwrap_or(Hash32([0; 32]))
}

fn components(bytes: &[u8]) -> &[u8] {
    bytes.get(32..).unwrap_or_default()
}
