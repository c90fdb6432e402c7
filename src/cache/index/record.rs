//! How `Hnsw` lays out a node: its int8 codes, their sign bits and its layer-0 link slots,
//! side by side in one array of 4-byte words (codes and signs padded to whole words), so a
//! graph is one large allocation.

use super::hnsw::NONE;
use super::signs;

/// Words to reserve for `words` of records. A graph of more than a few nodes reserves at
/// least 32 MiB: an allocation that large is mapped on its own (glibc never serves one from
/// its heap), grows by remapping, and takes resident memory only as nodes fill it. Grown
/// from a smaller one, each outgrown copy is freed into the heap and stays resident: at
/// 10^5 1536-d nodes that was about 450 bytes a node (`index_scale`).
pub fn record_capacity(words: usize) -> usize {
    const MAPPED: usize = 32 << 20;
    const SMALL: usize = 1 << 20;
    if words * 4 < SMALL {
        words
    } else {
        words.max(MAPPED / 4)
    }
}

/// Where a node's codes, sign bits and layer-0 links are in `Hnsw::records`, in words of 4
/// bytes (codes and signs padded to whole words).
#[derive(Clone, Copy)]
pub struct Record {
    dim: usize,
    sign_bytes: usize,
    code_words: usize,
    sign_words: usize,
    link_words: usize,
}

impl Record {
    pub fn new(dim: usize, m: usize) -> Record {
        let sign_bytes = signs::bytes_for(dim);
        Record {
            dim,
            sign_bytes,
            code_words: dim.div_ceil(4),
            sign_words: sign_bytes.div_ceil(4),
            link_words: 2 * m,
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Words per node.
    pub fn words(&self) -> usize {
        self.code_words + self.sign_words + self.link_words
    }

    /// The link slots' words within a node's record.
    pub fn links(&self) -> std::ops::Range<usize> {
        let start = self.code_words + self.sign_words;
        start..start + self.link_words
    }

    pub fn codes<'a>(&self, records: &'a [u32], node: usize) -> &'a [i8] {
        let words = &records[node * self.words()..][..self.code_words];
        &bytemuck::cast_slice(words)[..self.dim]
    }

    pub fn signs<'a>(&self, records: &'a [u32], node: usize) -> &'a [u8] {
        let words = &records[node * self.words() + self.code_words..][..self.sign_words];
        &bytemuck::cast_slice(words)[..self.sign_bytes]
    }

    /// Appends a node with these codes and signs and no links.
    pub fn push(&self, records: &mut Vec<u32>, codes: &[i8], signs: &[u8]) {
        let start = records.len();
        if start + self.words() > records.capacity() {
            records.reserve(record_capacity(start + self.words()) - start);
        }
        records.resize(start + self.words(), 0);
        let record = &mut records[start..];
        let (code_words, rest) = record.split_at_mut(self.code_words);
        bytemuck::cast_slice_mut::<u32, i8>(code_words)[..self.dim].copy_from_slice(codes);
        let (sign_words, links) = rest.split_at_mut(self.sign_words);
        bytemuck::cast_slice_mut::<u32, u8>(sign_words)[..self.sign_bytes].copy_from_slice(signs);
        links.fill(NONE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_keep_their_codes_signs_and_links_apart() {
        // 10 codes and 2 sign bytes pad to 3 + 1 words; 2m = 4 link words.
        let record = Record::new(10, 2);
        assert_eq!(record.words(), 8);
        let mut records = Vec::new();
        let nodes: Vec<(Vec<i8>, Vec<u8>)> = (0..3i8)
            .map(|n| {
                let codes: Vec<i8> = (0..10)
                    .map(|i| (i * 13 - 60 + n) * if n == 1 { -1 } else { 1 })
                    .collect();
                let mut signs = Vec::new();
                signs::signs_into(&codes, &mut signs);
                (codes, signs)
            })
            .collect();
        for (codes, signs) in &nodes {
            record.push(&mut records, codes, signs);
        }
        for node in 0..3 {
            let links = &mut records[node * record.words()..][record.links()];
            assert!(links.iter().all(|&l| l == NONE));
            links.fill(u32::MAX - 1 - node as u32);
        }
        for (node, (codes, signs)) in nodes.iter().enumerate() {
            assert_eq!(record.codes(&records, node), &codes[..]);
            assert_eq!(record.signs(&records, node), &signs[..]);
        }
    }

    #[test]
    fn large_graphs_reserve_a_mapped_allocation() {
        assert_eq!(record_capacity(100), 100);
        assert_eq!(record_capacity(1 << 20), 8 << 20);
        assert_eq!(record_capacity(64 << 20), 64 << 20);
    }
}
