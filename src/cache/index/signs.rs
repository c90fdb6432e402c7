//! One bit per component, its sign: 192 bytes for a 1536-d vector. The Hamming distance of
//! two sign strings estimates the angle between their vectors (the share of differing bits
//! is about angle / π), at a few nanoseconds a pair with simsimd's popcount kernels, where an
//! int8 dot product takes about 70. A long exact scan (`flat`) ranks every row by it first and
//! scores by codes only the closest rows, which are then re-scored exactly as before.

use simsimd::BinarySimilarity;

/// Bytes of sign bits for a `dim`-dimensional vector.
pub fn bytes_for(dim: usize) -> usize {
    dim.div_ceil(8)
}

/// Appends the sign bits of `codes` (a positive code sets its bit) to `signs`.
pub fn signs_into(codes: &[i8], signs: &mut Vec<u8>) {
    signs.extend(codes.chunks(8).map(|chunk| {
        chunk
            .iter()
            .enumerate()
            .fold(0u8, |byte, (bit, &code)| byte | (u8::from(code > 0) << bit))
    }));
}

/// How many sign bits differ.
pub fn hamming(a: &[u8], b: &[u8]) -> u32 {
    // None only for slices of different lengths, which the index never compares.
    u8::hamming(a, b).map_or(u32::MAX, |distance| distance as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::index::quantized::quantize_into;
    use crate::cache::index::tests::{random_unit as unit, reworded as near};

    fn signs_of(vector: &[f32]) -> Vec<u8> {
        let mut codes = Vec::new();
        quantize_into(vector, &mut codes);
        let mut signs = Vec::new();
        signs_into(&codes, &mut signs);
        signs
    }

    #[test]
    fn bits_follow_signs_and_odd_lengths_pad_with_zeros() {
        let signs = signs_of(&[0.5, -0.5, 0.1, -0.1, 0.0, 0.3, -0.2, 0.9, 0.4, -0.4]);
        assert_eq!(bytes_for(10), 2);
        assert_eq!(signs, vec![0b1010_0101, 0b0000_0001]);
        assert_eq!(hamming(&signs, &signs), 0);
        assert_eq!(hamming(&[0xff, 0x00], &[0x0f, 0x01]), 5);
    }

    #[test]
    fn the_distance_orders_near_vectors_before_unrelated_ones() {
        let mut rng = fastrand::Rng::with_seed(31);
        for _ in 0..100 {
            let a = unit(&mut rng, 1536);
            let (close, far) = (near(&mut rng, &a), unit(&mut rng, 1536));
            let (sa, sc, sf) = (signs_of(&a), signs_of(&close), signs_of(&far));
            assert!(hamming(&sa, &sc) < hamming(&sa, &sf));
            // Unrelated vectors differ in about half their bits.
            let half = 1536 / 2;
            assert!(hamming(&sa, &sf).abs_diff(half) < 120);
        }
    }
}
