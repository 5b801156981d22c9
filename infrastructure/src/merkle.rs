//! The log as a Merkle tree (RFC 9162, section 2.1; API.md v1.2 "Verifiable log").
//!
//! Leaf `i` (0-based) is the event at position `i + 1`, its input the 32 bytes of its
//! chain hash: leaf hash = SHA-256(0x00 ‖ hash), node hash = SHA-256(0x01 ‖ left ‖
//! right), the empty tree's hash = SHA-256 of no bytes. The tree is append-only, so the
//! perfect subtrees never change once complete: node `(level, index)` covers leaves
//! `[index · 2^level, (index + 1) · 2^level)` and is stored when its last leaf arrives
//! (`merkle_nodes`). Every other hash a tree head or a proof needs (the root of a
//! size that is not a power of two, the right edge of a range) is folded from at most
//! `log2(n)` perfect subtrees. So a tree head, an inclusion proof and a consistency
//! proof each read `O(log n)` stored nodes, whatever the log's length.
//!
//! The algorithms are written once over [`Nodes`]: run with [`Needed`] they list the
//! perfect subtrees they read (fetched in one query), then with [`Known`] they compute.

use sha2::{Digest, Sha256};
use std::collections::HashMap;

pub type Hash = [u8; 32];

/// SHA-256 of no bytes: the empty tree's root.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// A leaf's hash: SHA-256(0x00 ‖ data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// An inner node's hash: SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// A perfect subtree: `(level, index)`.
pub type NodeId = (u32, u64);

/// Where the perfect subtrees come from.
pub trait Nodes {
    fn node(&mut self, id: NodeId) -> Hash;
}

/// Lists the perfect subtrees an algorithm reads (and computes nothing meaningful).
#[derive(Default)]
pub struct Needed(pub Vec<NodeId>);

impl Nodes for Needed {
    fn node(&mut self, id: NodeId) -> Hash {
        self.0.push(id);
        [0; 32]
    }
}

/// The perfect subtrees fetched; a missing one is an error of the caller (it fetched
/// what [`Needed`] listed), reported rather than guessed.
pub struct Known {
    pub nodes: HashMap<NodeId, Hash>,
    pub missing: Option<NodeId>,
}

impl Nodes for Known {
    fn node(&mut self, id: NodeId) -> Hash {
        match self.nodes.get(&id) {
            Some(h) => *h,
            None => {
                self.missing.get_or_insert(id);
                [0; 32]
            }
        }
    }
}

/// The largest power of two smaller than `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH of leaves `[start, end)` (a range of the RFC's recursion: `start` is aligned to
/// the largest power of two not above `end - start`).
pub fn range_hash(start: u64, end: u64, nodes: &mut (impl Nodes + ?Sized)) -> Hash {
    let n = end - start;
    if n.is_power_of_two() && start.is_multiple_of(n) {
        return nodes.node((n.trailing_zeros(), start / n));
    }
    let k = split(n);
    let left = range_hash(start, start + k, nodes);
    let right = range_hash(start + k, end, nodes);
    node_hash(&left, &right)
}

/// The root of the tree of the first `size` leaves.
pub fn root(size: u64, nodes: &mut (impl Nodes + ?Sized)) -> Hash {
    if size == 0 { empty_root() } else { range_hash(0, size, nodes) }
}

/// The audit path of leaf `index` in the tree of `size` leaves (RFC 9162 PATH), leaf
/// side first. Needs `index < size`.
pub fn inclusion_proof(index: u64, size: u64, nodes: &mut (impl Nodes + ?Sized)) -> Vec<Hash> {
    let mut out = Vec::new();
    path(index, 0, size, nodes, &mut out);
    out
}

fn path(m: u64, start: u64, end: u64, nodes: &mut (impl Nodes + ?Sized), out: &mut Vec<Hash>) {
    if end - start <= 1 {
        return;
    }
    let k = split(end - start);
    if m < start + k {
        path(m, start, start + k, nodes, out);
        out.push(range_hash(start + k, end, nodes));
    } else {
        path(m, start + k, end, nodes, out);
        out.push(range_hash(start, start + k, nodes));
    }
}

/// The consistency proof from the tree of `old` leaves to the tree of `new` (RFC 9162
/// PROOF). Needs `0 < old <= new`.
pub fn consistency_proof(old: u64, new: u64, nodes: &mut (impl Nodes + ?Sized)) -> Vec<Hash> {
    let mut out = Vec::new();
    if old < new {
        subproof(old, 0, new, true, nodes, &mut out);
    }
    out
}

fn subproof(m: u64, start: u64, end: u64, complete: bool, nodes: &mut (impl Nodes + ?Sized), out: &mut Vec<Hash>) {
    let n = end - start;
    if m == n {
        if !complete {
            out.push(range_hash(start, end, nodes));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, start, start + k, complete, nodes, out);
        out.push(range_hash(start + k, end, nodes));
    } else {
        subproof(m - k, start + k, end, false, nodes, out);
        out.push(range_hash(start, start + k, nodes));
    }
}

/// Verifies an inclusion proof (RFC 9162, 2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

/// Verifies a consistency proof (RFC 9162, 2.1.4.2).
pub fn verify_consistency(old: u64, new: u64, old_root: &Hash, new_root: &Hash, proof: &[Hash]) -> bool {
    if old == 0 || old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    let mut proof: Vec<Hash> = proof.to_vec();
    if old.is_power_of_two() {
        proof.insert(0, *old_root);
    }
    let Some((first, rest)) = proof.split_first() else { return false };
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    fr == *old_root && sr == *new_root && snode == 0
}

/// The perfect subtrees covering the first `size` leaves, left to right (what a tree
/// that has grown to `size` has complete on its right edge).
pub fn frontier(size: u64) -> Vec<NodeId> {
    let mut out = Vec::new();
    let mut start = 0u64;
    for level in (0..64u32).rev() {
        if size & (1 << level) != 0 {
            out.push((level, start >> level));
            start += 1 << level;
        }
    }
    out
}

/// Perfect subtrees with their hashes.
pub type Subtrees = Vec<(NodeId, Hash)>;

/// Appends leaves to a tree whose frontier is `frontier` (as [`frontier`] lists it,
/// with hashes); returns every perfect subtree the new leaves complete (the leaves
/// included) and the new frontier.
pub fn grow(mut frontier: Subtrees, first_leaf: u64, leaves: &[Hash]) -> (Subtrees, Subtrees) {
    let mut made = Vec::with_capacity(leaves.len() * 2);
    for (i, leaf) in leaves.iter().enumerate() {
        let mut node = ((0u32, first_leaf + i as u64), *leaf);
        made.push(node);
        while let Some(&((level, index), left)) = frontier.last() {
            if level != node.0.0 {
                break;
            }
            frontier.pop();
            debug_assert_eq!(index + 1, node.0.1, "siblings are adjacent");
            node = ((level + 1, index / 2), node_hash(&left, &node.1));
            made.push(node);
        }
        frontier.push(node);
    }
    (made, frontier)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9162 section 2.1, written from its definitions over a list of leaves (its
    /// `MTH`, `PATH` and `PROOF`), memoized by range: the reference the tree is held to.
    struct Reference {
        leaves: Vec<Vec<u8>>,
        memo: HashMap<(usize, usize), Hash>,
    }

    impl Reference {
        fn mth(&mut self, a: usize, b: usize) -> Hash {
            if let Some(h) = self.memo.get(&(a, b)) {
                return *h;
            }
            let n = b - a;
            let h = match n {
                0 => Sha256::digest([]).into(),
                1 => leaf_hash(&self.leaves[a]),
                _ => {
                    let mut k = 1;
                    while k * 2 < n {
                        k *= 2;
                    }
                    let (l, r) = (self.mth(a, a + k), self.mth(a + k, b));
                    node_hash(&l, &r)
                }
            };
            self.memo.insert((a, b), h);
            h
        }

        fn path(&mut self, m: usize, a: usize, b: usize) -> Vec<Hash> {
            let n = b - a;
            if n <= 1 {
                return Vec::new();
            }
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            if m < k {
                let mut p = self.path(m, a, a + k);
                p.push(self.mth(a + k, b));
                p
            } else {
                let mut p = self.path(m - k, a + k, b);
                p.push(self.mth(a, a + k));
                p
            }
        }

        fn subproof(&mut self, m: usize, a: usize, b: usize, complete: bool) -> Vec<Hash> {
            let n = b - a;
            if m == n {
                return if complete { Vec::new() } else { vec![self.mth(a, b)] };
            }
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            if m <= k {
                let mut p = self.subproof(m, a, a + k, complete);
                p.push(self.mth(a + k, b));
                p
            } else {
                let mut p = self.subproof(m - k, a + k, b, false);
                p.push(self.mth(a, a + k));
                p
            }
        }
    }

    /// The stored nodes of a tree grown leaf by leaf with [`grow`].
    fn grown(leaves: &[Hash]) -> Known {
        let mut nodes = HashMap::new();
        let mut frontier = Vec::new();
        // In uneven batches, as the worker grows it.
        let mut at = 0;
        for batch in leaves.chunks(7) {
            let (made, next) = grow(frontier, at as u64, batch);
            nodes.extend(made);
            frontier = next;
            at += batch.len();
        }
        let ids: Vec<NodeId> = frontier.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, super::frontier(leaves.len() as u64), "the frontier is the size's decomposition");
        Known { nodes, missing: None }
    }

    #[test]
    fn the_tree_matches_rfc_9162_for_every_size_leaf_and_pair_up_to_256() {
        let data: Vec<Vec<u8>> = (0..256u32).map(|i| Sha256::digest(i.to_be_bytes()).to_vec()).collect();
        let leaves: Vec<Hash> = data.iter().map(|d| leaf_hash(d)).collect();
        let mut reference = Reference { leaves: data, memo: HashMap::new() };
        let mut known = grown(&leaves);
        assert_eq!(root(0, &mut known), reference.mth(0, 0));
        for n in 1..=256u64 {
            let root_n = root(n, &mut known);
            assert_eq!(root_n, reference.mth(0, n as usize), "root of {n}");
            // Only the perfect subtrees listed as needed are read, O(log n) of them.
            let mut needed = Needed::default();
            root(n, &mut needed);
            assert!(needed.0.len() <= 8, "{n}: {}", needed.0.len());
            for m in 0..n {
                let proof = inclusion_proof(m, n, &mut known);
                assert_eq!(proof, reference.path(m as usize, 0, n as usize), "PATH({m}, {n})");
                assert!(verify_inclusion(m, n, &leaves[m as usize], &proof, &root_n), "inclusion {m} in {n}");
                if !proof.is_empty() {
                    let mut bad = proof.clone();
                    bad[0][0] ^= 1;
                    assert!(!verify_inclusion(m, n, &leaves[m as usize], &bad, &root_n));
                }
                let old = m + 1;
                let proof = consistency_proof(old, n, &mut known);
                let expected =
                    if old == n { Vec::new() } else { reference.subproof(old as usize, 0, n as usize, true) };
                assert_eq!(proof, expected, "PROOF({old}, {n})");
                let old_root = root(old, &mut known);
                assert!(verify_consistency(old, n, &old_root, &root_n, &proof), "consistency {old} -> {n}");
                if old < n {
                    let other = root(old - 1, &mut known);
                    assert!(!verify_consistency(old, n, &other, &root_n, &proof), "a wrong old root {old} -> {n}");
                }
            }
        }
        assert!(known.missing.is_none());
    }

    #[test]
    fn a_hundred_million_events_need_few_nodes() {
        for size in [1_000_000u64, 100_000_000, (1 << 40) + 12_345] {
            let mut needed = Needed::default();
            root(size, &mut needed);
            inclusion_proof(size / 3, size, &mut needed);
            consistency_proof(size / 2 + 1, size, &mut needed);
            needed.0.sort_unstable();
            needed.0.dedup();
            assert!(needed.0.len() <= 4 * 64, "{size}: {}", needed.0.len());
        }
    }
}
