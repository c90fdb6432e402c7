//! A compact HNSW graph over int8 codes (`quantized`), laid out for memory: every array is
//! indexed by node number, links are u32 node numbers, layer 0 has a fixed `2m` slots per
//! node, and only the few nodes above layer 0 (1 in `m`) have upper-layer links. A 1536-d
//! node takes about 1.87 KB: 1536 bytes of codes, 192 of their signs, 128 of links (m = 16),
//! 13 of id, norm and level. hnsw_rs, used before, kept f32 vectors and about 4.6 KB of links and bookkeeping
//! per point (`benches/results/index_scale.md`).
//!
//! A search walks the graph by the sign bits of the codes (`signs`, 192 bytes for 1536-d: a
//! Hamming distance reads 3 cache lines where a dot product of codes reads 24, and the walk
//! touches about a thousand nodes), then ranks what it found (twice its `ef`) by codes. An
//! insert finds its candidates the same way and picks its links by codes.
//!
//! Searches return similarities of codes, not exact ones: the caller re-scores. There is no
//! delete: `Graph` remembers removed ids and rebuilds when they pile up. Inserts take
//! `&mut self` and run one at a time (a scope's partition lock already serialises them).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::quantized::{self, Query};
use super::record::{Record, record_capacity};
use super::signs;

/// An empty link slot.
pub(super) const NONE: u32 = u32::MAX;
/// A search walks this many times its `ef` by sign bits before ranking by codes: signs rank
/// more coarsely than codes, and twice the breadth by signs still costs about half of the
/// walk by codes it replaced while finding the nearest node more often (`index_scale`,
/// uniform 1536-d: recall@1 0.99 against 0.965; embedding-like: 1.000 for both).
const SIGN_OVERSAMPLING: usize = 2;
/// Layers above this are never drawn (a graph of 10^6 nodes with m = 16 reaches about 5).
const MAX_LEVEL: u8 = 15;

pub struct Hnsw {
    pub(super) dim: usize,
    /// Links per node on layers above 0; layer 0 has `2 * m`.
    pub(super) m: usize,
    pub(super) ef_construction: usize,
    pub(super) ids: Vec<u64>,
    pub(super) levels: Vec<u8>,
    pub(super) inv_norms: Vec<f32>,
    /// Per node (`Record`): its `dim` codes, their sign bits, and its `2 * m` link slots on
    /// layer 0 (filled from the front, `NONE` after the last link). One allocation: a large
    /// one, which the allocator maps on its own and grows without leaving a copy behind;
    /// separate arrays of 10^5 nodes' signs and links left about 100 bytes a node of freed
    /// copies resident. A dump keeps codes and links; the signs follow from the codes.
    pub(super) records: Vec<u32>,
    /// Where each part of a node is in `records` (from `dim` and `m`).
    pub(super) layout: Record,
    /// For nodes above layer 0: `m` slots for each of layers 1..=level.
    pub(super) upper: HashMap<u32, Box<[u32]>>,
    pub(super) entry: Option<u32>,
}

/// A node and its similarity to whatever is being searched for; ordered by similarity.
#[derive(Clone, Copy, PartialEq)]
struct Scored(f32, u32);

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

impl Hnsw {
    pub fn new(dim: usize, m: usize, ef_construction: usize, capacity: usize) -> Hnsw {
        let m = m.clamp(2, 255);
        let layout = Record::new(dim, m);
        Hnsw {
            dim,
            m,
            ef_construction: ef_construction.max(m),
            ids: Vec::with_capacity(capacity),
            levels: Vec::with_capacity(capacity),
            inv_norms: Vec::with_capacity(capacity),
            records: Vec::with_capacity(record_capacity(capacity * layout.words())),
            layout,
            upper: HashMap::new(),
            entry: None,
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Every node's id, in node order.
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    /// Node `node`'s codes and their inverse norm.
    pub fn code(&self, node: usize) -> (&[i8], f32) {
        (self.layout.codes(&self.records, node), self.inv_norms[node])
    }

    /// Adds `vector` as a new node for `id`.
    pub fn insert(&mut self, id: u64, vector: &[f32]) {
        let insertion = self.plan(id, vector);
        self.apply(insertion);
    }

    /// Adds a node from codes (a rebuild from another graph's nodes).
    pub fn insert_code(&mut self, id: u64, codes: &[i8], inv_norm: f32) {
        let insertion = self.plan_code(id, codes.to_vec(), inv_norm);
        self.apply(insertion);
    }

    /// Finds where a new node for `id` goes without changing the graph: the slow part of an
    /// insert, which can run under a read lock while searches go on. `apply` then writes it.
    pub fn plan(&self, id: u64, vector: &[f32]) -> Insertion {
        let mut codes = Vec::with_capacity(vector.len());
        let inv_norm = quantized::quantize_into(vector, &mut codes);
        self.plan_code(id, codes, inv_norm)
    }

    pub fn plan_code(&self, id: u64, codes: Vec<i8>, inv_norm: f32) -> Insertion {
        let level = level_of(id, self.m);
        let mut insertion = Insertion {
            node: self.ids.len() as u32,
            id,
            level,
            query: Query::from_codes(codes, inv_norm),
            links: Vec::new(),
            backlinks: Vec::new(),
        };
        let Some(entry) = self.entry else {
            return insertion;
        };
        let query = &insertion.query;
        let top = self.levels[entry as usize];
        let mut nearest = self.descend(query, entry, top, level);
        let mut links = vec![Vec::new(); usize::from(level.min(top)) + 1];
        let mut backlinks = Vec::new();
        for layer in (0..=level.min(top)).rev() {
            let found = self.by_codes(
                query,
                self.walk(query, nearest, self.ef_construction, layer),
            );
            let chosen = self.select(&found, self.m);
            for &neighbour in &chosen {
                if let Some(slot) = self.backlink_slot(neighbour, query, layer) {
                    backlinks.push((neighbour, layer, slot));
                }
            }
            links[usize::from(layer)] = chosen;
            nearest = found.first().map_or(nearest, |s| s.1);
        }
        insertion.links = links;
        insertion.backlinks = backlinks;
        insertion
    }

    /// Writes a planned node. The plan must be of this graph as it is (no other node added
    /// since); one that is not is planned again here.
    pub fn apply(&mut self, insertion: Insertion) {
        let insertion = if insertion.node as usize == self.ids.len() {
            insertion
        } else {
            self.plan_code(
                insertion.id,
                insertion.query.codes,
                insertion.query.inv_norm,
            )
        };
        let Insertion {
            node,
            id,
            level,
            query,
            links,
            backlinks,
        } = insertion;
        self.ids.push(id);
        self.levels.push(level);
        self.inv_norms.push(query.inv_norm);
        self.layout
            .push(&mut self.records, &query.codes, &query.signs);
        if level > 0 {
            self.upper
                .insert(node, vec![NONE; usize::from(level) * self.m].into());
        }
        for (layer, chosen) in links.iter().enumerate() {
            self.set_links(node, layer as u8, chosen);
        }
        for (neighbour, layer, slot) in backlinks {
            if let Some(slot) = self
                .slots_mut(neighbour, layer)
                .and_then(|slots| slots.get_mut(slot))
            {
                *slot = node;
            }
        }
        let top = self.entry.map(|entry| self.levels[entry as usize]);
        if top.is_none_or(|top| level > top) {
            self.entry = Some(node);
        }
    }

    /// The `limit` most similar nodes to `vector` by their codes, most similar first, as
    /// (node, similarity of codes); `ef` is the search breadth.
    pub fn search(&self, vector: &[f32], limit: usize, ef: usize) -> Vec<(u32, f32)> {
        self.search_coded(&Query::new(vector), limit, ef)
    }

    /// `search` with the query already coded (a partition codes it once for its flat part
    /// and its graph).
    pub fn search_coded(&self, query: &Query, limit: usize, ef: usize) -> Vec<(u32, f32)> {
        let Some(entry) = self.entry else {
            return Vec::new();
        };
        let nearest = self.descend(query, entry, self.levels[entry as usize], 0);
        let breadth = SIGN_OVERSAMPLING * ef.max(limit);
        let mut found = self.by_codes(query, self.walk(query, nearest, breadth, 0));
        found.truncate(limit);
        found.into_iter().map(|Scored(s, node)| (node, s)).collect()
    }

    /// Greedy descent by sign bits from `entry` (on layer `top`) to the closest node on
    /// layer `to`.
    fn descend(&self, query: &Query, entry: u32, top: u8, to: u8) -> u32 {
        let mut best = Scored(self.sign_closeness(query, entry), entry);
        for layer in (to + 1..=top).rev() {
            loop {
                let mut improved = false;
                for &next in self.links(best.1, layer) {
                    let s = self.sign_closeness(query, next);
                    if s > best.0 {
                        best = Scored(s, next);
                        improved = true;
                    }
                }
                if !improved {
                    break;
                }
            }
        }
        best.1
    }

    /// The `ef` nodes reachable from `start` on `layer` that are closest by sign bits, in no
    /// order.
    fn walk(&self, query: &Query, start: u32, ef: usize, layer: u8) -> Vec<u32> {
        let mut visited = Visited::new(self.len());
        visited.insert(start);
        let first = Scored(self.sign_closeness(query, start), start);
        let mut frontier = BinaryHeap::from([first]);
        let mut best = BinaryHeap::from([Reverse(first)]);
        while let Some(current) = frontier.pop() {
            let worst = best.peek().map_or(f32::MIN, |w| w.0.0);
            if current.0 < worst && best.len() >= ef {
                break;
            }
            for &next in self.links(current.1, layer) {
                if !visited.insert(next) {
                    continue;
                }
                let s = self.sign_closeness(query, next);
                let worst = best.peek().map_or(f32::MIN, |w| w.0.0);
                if best.len() < ef || s > worst {
                    frontier.push(Scored(s, next));
                    best.push(Reverse(Scored(s, next)));
                    if best.len() > ef {
                        best.pop();
                    }
                }
            }
        }
        best.into_iter().map(|r| r.0.1).collect()
    }

    /// `nodes` with the similarity of their codes to `query`, most similar first.
    fn by_codes(&self, query: &Query, nodes: Vec<u32>) -> Vec<Scored> {
        let mut found: Vec<Scored> = nodes
            .into_iter()
            .map(|node| Scored(self.similarity(query, node), node))
            .collect();
        found.sort_by(|a, b| b.cmp(a));
        found
    }

    /// Up to `m` of `found` (most similar first) as a new node's links: a candidate is kept
    /// only if it is closer to the new node than to every link already kept, so links
    /// spread in different directions (the HNSW paper's heuristic); the rest fill any slots
    /// left, nearest first.
    fn select(&self, found: &[Scored], m: usize) -> Vec<u32> {
        let mut chosen: Vec<u32> = Vec::with_capacity(m);
        let mut pruned = Vec::new();
        for candidate in found {
            if chosen.len() == m {
                break;
            }
            let diverse = chosen
                .iter()
                .all(|&kept| self.node_similarity(candidate.1, kept) < candidate.0);
            if diverse {
                chosen.push(candidate.1);
            } else {
                pruned.push(candidate.1);
            }
        }
        let room = m - chosen.len();
        chosen.extend(pruned.into_iter().take(room));
        chosen
    }

    /// The slot of `neighbour`'s links on `layer` that should link back to a new node
    /// (`query`): a free one, or else the farthest link's (by sign bits, a full node's 2m
    /// comparisons) if the new node is closer than it; None when the new node is farthest.
    fn backlink_slot(&self, neighbour: u32, query: &Query, layer: u8) -> Option<usize> {
        let slots = self.slots(neighbour, layer)?;
        if let Some(free) = slots.iter().position(|&s| s == NONE) {
            return Some(free);
        }
        let signs_of = |node: u32| self.signs_of(node as usize);
        let (worst_slot, worst) = slots
            .iter()
            .enumerate()
            .map(|(slot, &link)| (slot, signs::hamming(signs_of(neighbour), signs_of(link))))
            .max_by_key(|&(_, distance)| distance)?;
        (signs::hamming(signs_of(neighbour), &query.signs) < worst).then_some(worst_slot)
    }

    fn set_links(&mut self, node: u32, layer: u8, links: &[u32]) {
        if let Some(slots) = self.slots_mut(node, layer) {
            for (slot, &link) in slots.iter_mut().zip(links) {
                *slot = link;
            }
        }
    }

    /// The links of `node` on `layer` (none if it does not reach that layer).
    fn links(&self, node: u32, layer: u8) -> impl Iterator<Item = &u32> {
        self.slots(node, layer)
            .unwrap_or(&[])
            .iter()
            .take_while(|&&s| s != NONE)
    }

    pub(super) fn slots(&self, node: u32, layer: u8) -> Option<&[u32]> {
        let m = self.m;
        if layer == 0 {
            self.records
                .get(node as usize * self.layout.words()..)?
                .get(self.layout.links())
        } else {
            self.upper
                .get(&node)?
                .get((usize::from(layer) - 1) * m..)?
                .get(..m)
        }
    }

    fn slots_mut(&mut self, node: u32, layer: u8) -> Option<&mut [u32]> {
        let m = self.m;
        if layer == 0 {
            self.records
                .get_mut(node as usize * self.layout.words()..)?
                .get_mut(self.layout.links())
        } else {
            self.upper
                .get_mut(&node)?
                .get_mut((usize::from(layer) - 1) * m..)?
                .get_mut(..m)
        }
    }

    fn signs_of(&self, node: usize) -> &[u8] {
        self.layout.signs(&self.records, node)
    }

    /// Higher for nodes whose sign bits are closer to the query's (minus their Hamming
    /// distance), for the walks.
    fn sign_closeness(&self, query: &Query, node: u32) -> f32 {
        -(signs::hamming(&query.signs, self.signs_of(node as usize)) as f32)
    }

    fn similarity(&self, query: &Query, node: u32) -> f32 {
        let (codes, inv) = self.code(node as usize);
        quantized::cosine(&query.codes, query.inv_norm, codes, inv)
    }

    fn node_similarity(&self, a: u32, b: u32) -> f32 {
        let (ca, ia) = self.code(a as usize);
        let (cb, ib) = self.code(b as usize);
        quantized::cosine(ca, ia, cb, ib)
    }

    /// Checks the invariants a loaded dump must hold (so a search cannot index out of
    /// bounds); false if any fails.
    pub fn is_consistent(&self) -> bool {
        let n = self.ids.len();
        let links_ok = |links: &[u32]| links.iter().all(|&l| l == NONE || (l as usize) < n);
        self.levels.len() == n
            && self.inv_norms.len() == n
            && self.records.len() == n * self.layout.words()
            && self.entry.is_none_or(|e| (e as usize) < n)
            && (n == 0) == self.entry.is_none()
            && (0..n as u32).all(|node| self.slots(node, 0).is_some_and(links_ok))
            && self.levels.iter().enumerate().all(|(node, &level)| {
                level <= MAX_LEVEL
                    && match self.upper.get(&(node as u32)) {
                        Some(upper) => {
                            level > 0
                                && upper.len() == usize::from(level) * self.m
                                && links_ok(upper)
                        }
                        None => level == 0,
                    }
            })
    }
}

/// A node's level, drawn as in the HNSW paper (P(level >= l) = m^-l) from a hash of its id,
/// so planning an insert needs no random state.
fn level_of(id: u64, m: usize) -> u8 {
    // splitmix64: consecutive ids get unrelated levels.
    let mut z = id.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let u = 1.0 - (z >> 11) as f64 / (1u64 << 53) as f64; // (0, 1]
    let level = -u.ln() / (m as f64).ln();
    (level.floor() as u8).min(MAX_LEVEL)
}

/// A new node's place, found by `Hnsw::plan` and written by `Hnsw::apply`.
pub struct Insertion {
    node: u32,
    id: u64,
    level: u8,
    query: Query,
    /// The node's links on layers 0..=min(level, top).
    links: Vec<Vec<u32>>,
    /// (neighbour, layer, slot): a neighbour's slot that links back to the node.
    backlinks: Vec<(u32, u8, usize)>,
}

/// Which nodes a search has seen: one bit per node.
struct Visited(Vec<u64>);

impl Visited {
    fn new(nodes: usize) -> Visited {
        Visited(vec![0; nodes.div_ceil(64)])
    }

    /// True if `node` was not seen before.
    fn insert(&mut self, node: u32) -> bool {
        let (word, bit) = (node as usize / 64, 1u64 << (node % 64));
        match self.0.get_mut(word) {
            Some(w) if *w & bit == 0 => {
                *w |= bit;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::index::tests::{random_unit as unit, reworded as near};

    fn exact_best(rows: &[Vec<f32>], query: &[f32]) -> u64 {
        let score = |r: &Vec<f32>| r.iter().zip(query).map(|(a, b)| a * b).sum::<f32>();
        (0..rows.len())
            .max_by(|&a, &b| score(&rows[a]).total_cmp(&score(&rows[b])))
            .unwrap_or(0) as u64
    }

    #[test]
    fn near_duplicate_queries_find_their_source_on_codes_alone() {
        let mut rng = fastrand::Rng::with_seed(11);
        let dim = 128;
        let rows: Vec<Vec<f32>> = (0..3000).map(|_| unit(&mut rng, dim)).collect();
        let mut graph = Hnsw::new(dim, 16, 100, rows.len());
        for (id, row) in rows.iter().enumerate() {
            graph.insert(id as u64 + 1000, row);
        }
        assert!(graph.is_consistent());
        let mut right = 0;
        let queries = 200;
        for i in 0..queries {
            let query = near(&mut rng, &rows[i * 13]);
            let found = graph.search(&query, 1, 64);
            let id = graph.ids()[found[0].0 as usize];
            right += usize::from(id == exact_best(&rows, &query) + 1000);
        }
        assert!(right >= queries * 98 / 100, "recall@1 {right}/{queries}");
    }

    #[test]
    fn results_are_ordered_and_limited() {
        let mut rng = fastrand::Rng::with_seed(12);
        let mut graph = Hnsw::new(32, 8, 50, 0);
        assert!(graph.search(&unit(&mut rng, 32), 5, 10).is_empty());
        for id in 0..200 {
            graph.insert(id, &unit(&mut rng, 32));
        }
        let found = graph.search(&unit(&mut rng, 32), 5, 10);
        assert_eq!(found.len(), 5);
        assert!(found.windows(2).all(|w| w[0].1 >= w[1].1));
    }

    #[test]
    fn links_stay_in_bounds_and_layers_thin_out() {
        let mut rng = fastrand::Rng::with_seed(13);
        let mut graph = Hnsw::new(16, 4, 20, 0);
        for id in 0..2000 {
            graph.insert(id, &unit(&mut rng, 16));
        }
        assert!(graph.is_consistent());
        let above = graph.levels.iter().filter(|&&l| l > 0).count();
        // P(level > 0) = 1/m = 1/4.
        assert!((300..700).contains(&above), "{above} of 2000 above layer 0");
        graph.slots_mut(0, 0).expect("node 0")[5] = 999_999;
        assert!(!graph.is_consistent());
    }
}
