//! The on-disk form of an `Hnsw` graph: a header, then each per-node array as it is in
//! memory, little-endian. Reading checks every length against the file's size before
//! allocating, and the graph's invariants after, so a damaged file is an error, never a
//! panic or a search out of bounds.
//!
//! ```text
//! "DEJAHNS1" | dim u32 | m u32 | ef_construction u32 | nodes u64 | entry u32 (u32::MAX: none)
//! ids u64 × n | levels u8 × n | inv_norms f32 × n | codes i8 × n·dim | layer 0 u32 × n·2m
//! | upper layers: u32 × level·m for each node above layer 0, in node order
//! ```

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Write};

use super::hnsw::Hnsw;
use super::record::Record;
use super::signs;

const MAGIC: &[u8; 8] = b"DEJAHNS1";
const HEADER: u64 = 8 + 4 + 4 + 4 + 8 + 4;
const NONE: u32 = u32::MAX;
/// Values converted per read, so loading never holds a second copy of a large array.
const CHUNK: usize = 1 << 16;

pub fn write(hnsw: &Hnsw, out: impl Write) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, out);
    out.write_all(MAGIC)?;
    for value in [hnsw.dim, hnsw.m, hnsw.ef_construction] {
        out.write_all(
            &u32::try_from(value)
                .map_err(io::Error::other)?
                .to_le_bytes(),
        )?;
    }
    out.write_all(&(hnsw.len() as u64).to_le_bytes())?;
    out.write_all(&hnsw.entry.unwrap_or(NONE).to_le_bytes())?;
    for id in &hnsw.ids {
        out.write_all(&id.to_le_bytes())?;
    }
    out.write_all(&hnsw.levels)?;
    for inv_norm in &hnsw.inv_norms {
        out.write_all(&inv_norm.to_le_bytes())?;
    }
    for node in 0..hnsw.len() {
        out.write_all(bytemuck::cast_slice(hnsw.code(node).0))?;
    }
    for node in 0..hnsw.len() as u32 {
        write_links(&mut out, hnsw.slots(node, 0).unwrap_or(&[]))?;
    }
    for node in 0..hnsw.len() as u32 {
        if let Some(upper) = hnsw.upper.get(&node) {
            write_links(&mut out, upper)?;
        }
    }
    out.flush()
}

fn write_links(out: &mut impl Write, links: &[u32]) -> io::Result<()> {
    for chunk in links.chunks(CHUNK) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|l| l.to_le_bytes()).collect();
        out.write_all(&bytes)?;
    }
    Ok(())
}

/// Reads a graph written by `write` from a file of `file_len` bytes.
pub fn read(input: impl Read, file_len: u64) -> io::Result<Hnsw> {
    let mut input = BufReader::with_capacity(1 << 20, input);
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid("not a deja graph file"));
    }
    let dim = read_u32(&mut input)? as usize;
    let m = read_u32(&mut input)? as usize;
    let ef_construction = read_u32(&mut input)? as usize;
    let n = usize::try_from(read_u64(&mut input)?).map_err(io::Error::other)?;
    let entry = Some(read_u32(&mut input)?).filter(|&e| e != NONE);
    // Everything but the upper layers has a size known from the header.
    let fixed = (n as u64)
        .checked_mul(8 + 1 + 4 + dim as u64 + 4 * 2 * m as u64)
        .and_then(|body| body.checked_add(HEADER))
        .filter(|&fixed| fixed <= file_len && m > 0)
        .ok_or_else(|| invalid("graph file shorter than its header says"))?;
    let ids = read_values(&mut input, n, u64::from_le_bytes)?;
    let mut levels = vec![0u8; n];
    input.read_exact(&mut levels)?;
    let inv_norms = read_values(&mut input, n, f32::from_le_bytes)?;
    let layout = Record::new(dim, m);
    let records = read_records(&mut input, n, layout)?;
    let upper_links: u64 = levels.iter().map(|&l| u64::from(l) * m as u64).sum();
    if fixed + 4 * upper_links != file_len {
        return Err(invalid("graph file size does not match its levels"));
    }
    let mut upper = HashMap::new();
    for (node, &level) in levels.iter().enumerate() {
        if level > 0 {
            let links = read_values(&mut input, usize::from(level) * m, u32::from_le_bytes)?;
            upper.insert(node as u32, links.into_boxed_slice());
        }
    }
    let hnsw = Hnsw {
        dim,
        m,
        ef_construction,
        ids,
        levels,
        inv_norms,
        records,
        layout,
        upper,
        entry,
    };
    if hnsw.is_consistent() {
        Ok(hnsw)
    } else {
        Err(invalid("graph file links out of bounds"))
    }
}

/// `n` nodes' records (`Hnsw::records`): all their codes (each with its sign bits), then
/// all their layer-0 links.
fn read_records(input: &mut impl Read, n: usize, record: Record) -> io::Result<Vec<u32>> {
    if n == 0 {
        // Nothing to read; and a damaged header's `dim` or `m` must not size a buffer.
        return Ok(Vec::new());
    }
    let mut records = Vec::with_capacity(n * record.words());
    let (mut codes, mut signs) = (vec![0i8; record.dim()], Vec::new());
    for _ in 0..n {
        input.read_exact(bytemuck::cast_slice_mut(&mut codes))?;
        signs.clear();
        signs::signs_into(&codes, &mut signs);
        record.push(&mut records, &codes, &signs);
    }
    let mut links = vec![0u8; 4 * record.links().len()];
    for node in 0..n {
        input.read_exact(&mut links)?;
        let slots = &mut records[node * record.words()..][record.links()];
        for (slot, bytes) in slots.iter_mut().zip(links.chunks_exact(4)) {
            *slot = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
    }
    Ok(records)
}

fn read_values<const N: usize, T>(
    input: &mut impl Read,
    count: usize,
    decode: impl Fn([u8; N]) -> T,
) -> io::Result<Vec<T>> {
    let mut values = Vec::with_capacity(count);
    let mut buffer = vec![0u8; CHUNK * N];
    let mut left = count;
    while left > 0 {
        let take = left.min(CHUNK);
        let bytes = &mut buffer[..take * N];
        input.read_exact(bytes)?;
        values.extend(bytes.chunks_exact(N).map(|c| {
            let mut value = [0u8; N];
            value.copy_from_slice(c);
            decode(value)
        }));
        left -= take;
    }
    Ok(values)
}

fn read_u32(input: &mut impl Read) -> io::Result<u32> {
    let mut bytes = [0u8; 4];
    input.read_exact(&mut bytes)?;
    Ok(u32::from_le_bytes(bytes))
}

fn read_u64(input: &mut impl Read) -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    input.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::index::normalize;

    fn graph(nodes: u64) -> Hnsw {
        let mut rng = fastrand::Rng::with_seed(31);
        let mut hnsw = Hnsw::new(24, 4, 20, 0);
        for id in 0..nodes {
            let mut v: Vec<f32> = (0..24).map(|_| rng.f32() - 0.5).collect();
            normalize(&mut v);
            hnsw.insert(id * 3, &v);
        }
        hnsw
    }

    #[test]
    fn a_written_graph_reads_back_the_same() {
        for nodes in [0, 1, 300] {
            let hnsw = graph(nodes);
            let mut bytes = Vec::new();
            write(&hnsw, &mut bytes).unwrap();
            let back = read(bytes.as_slice(), bytes.len() as u64).unwrap();
            assert_eq!(back.ids, hnsw.ids);
            assert_eq!(back.levels, hnsw.levels);
            assert_eq!(back.inv_norms, hnsw.inv_norms);
            assert_eq!(back.records, hnsw.records);
            assert_eq!(back.upper, hnsw.upper);
            assert_eq!(back.entry, hnsw.entry);
            let query = vec![0.2; 24];
            assert_eq!(back.search(&query, 5, 20), hnsw.search(&query, 5, 20));
        }
    }

    #[test]
    fn truncated_or_damaged_files_are_errors() {
        let hnsw = graph(100);
        let mut bytes = Vec::new();
        write(&hnsw, &mut bytes).unwrap();
        for len in [0, 10, HEADER as usize, bytes.len() - 1] {
            assert!(read(&bytes[..len], len as u64).is_err(), "{len} bytes");
        }
        let mut huge = bytes.clone();
        huge[20..28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(read(huge.as_slice(), huge.len() as u64).is_err());
        let mut bad_link = bytes.clone();
        let base_start =
            bytes.len() - 4 * (100 * 8) - 4 * hnsw.upper.values().map(|u| u.len()).sum::<usize>();
        bad_link[base_start..base_start + 4].copy_from_slice(&12345u32.to_le_bytes());
        assert!(read(bad_link.as_slice(), bad_link.len() as u64).is_err());
        // An empty graph whose header claims 2^32 - 1 dimensions reads as empty.
        let mut empty = MAGIC.to_vec();
        for value in [u32::MAX, 16, 100] {
            empty.extend_from_slice(&value.to_le_bytes());
        }
        empty.extend_from_slice(&0u64.to_le_bytes());
        empty.extend_from_slice(&NONE.to_le_bytes());
        let graph = read(empty.as_slice(), empty.len() as u64).expect("an empty graph");
        assert_eq!(graph.len(), 0);
    }
}
