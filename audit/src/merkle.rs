//! The Merkle tree of RFC 6962 §2.1 (as restated in RFC 9162 §2.1): leaf and node hashes, tree
//! roots, inclusion and consistency proofs with their verification, and an incremental frontier.
//!
//! The hash `H` is the box's suite's ([`HashAlgorithm`]): SHA-256 (`intl`, as RFC 6962) or SM3
//! (`gm`); every function takes it, and a signed tree head names it.
//!
//! - leaf hash `H(0x00 || entry bytes)`, node hash `H(0x01 || left || right)`;
//! - the root of an empty tree is `H("")`;
//! - a tree of `n > 1` leaves splits at `k`, the largest power of two smaller than `n`.
//!
//! Proof generation works over any [`TreeSource`] (the in-memory leaves of a test, or the
//! store's leaves tree read range by range), so that no caller has to hold all leaves in memory.

pub use govbox_provisioning::HashAlgorithm;

/// A 256-bit hash value (SHA-256 or SM3).
pub type Hash = [u8; 32];

/// `H(0x00 || entry)`: the leaf hash of one entry's stored bytes.
pub fn leaf_hash(h: HashAlgorithm, entry: &[u8]) -> Hash {
    let mut ctx = h.hasher();
    ctx.update(&[0x00]);
    ctx.update(entry);
    ctx.finish()
}

/// `H(0x01 || left || right)`: an interior node.
pub fn node_hash(h: HashAlgorithm, left: &Hash, right: &Hash) -> Hash {
    let mut ctx = h.hasher();
    ctx.update(&[0x01]);
    ctx.update(left);
    ctx.update(right);
    ctx.finish()
}

/// The root of the empty tree, `H("")`.
pub fn empty_root(h: HashAlgorithm) -> Hash {
    h.digest(b"")
}

/// The largest power of two smaller than `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The root of the tree whose leaf hashes are `leaves`.
pub fn root(h: HashAlgorithm, leaves: &[Hash]) -> Hash {
    let mut f = Frontier::new(h);
    leaves.iter().for_each(|l| f.push(*l));
    f.root()
}

/// The compact state of a tree that is only ever appended to: the roots of its maximal complete
/// subtrees, left to right (one per set bit of the size, largest first). Appending costs
/// O(log n) hashes, and so does the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontier {
    hash: HashAlgorithm,
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree hashed with `hash`.
    pub fn new(hash: HashAlgorithm) -> Self {
        Self { hash, size: 0, nodes: Vec::new() }
    }

    /// A frontier from its size and subtree roots; `None` unless there is exactly one root per
    /// set bit of `size`.
    pub fn from_parts(hash: HashAlgorithm, size: u64, nodes: Vec<Hash>) -> Option<Self> {
        (nodes.len() == size.count_ones() as usize).then_some(Self { hash, size, nodes })
    }

    /// The tree's hash.
    pub fn hash(&self) -> HashAlgorithm {
        self.hash
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The subtree roots, largest (leftmost) first.
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// Appends one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut s = self.size;
        // Each trailing one bit of the old size is a complete subtree of the new leaf's size
        // that now merges with it, as in a binary counter's carry.
        while s & 1 == 1 {
            let Some(left) = self.nodes.pop() else { break };
            h = node_hash(self.hash, &left, &h);
            s >>= 1;
        }
        self.nodes.push(h);
        self.size += 1;
    }

    /// The tree root: the subtree roots folded from the right.
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(last) = it.next() else { return empty_root(self.hash) };
        it.fold(*last, |acc, left| node_hash(self.hash, left, &acc))
    }
}

/// Where proof generation gets the root of a range of leaves `[start, end)` (`end > start`).
pub trait TreeSource {
    /// Why reading leaves failed.
    type Error;
    /// The root of the subtree of leaves `start..end`.
    fn subtree_root(&mut self, start: u64, end: u64) -> Result<Hash, Self::Error>;
}

/// Leaves held in memory, with their tree's hash.
#[derive(Debug, Clone, Copy)]
pub struct LeafSlice<'a>(pub HashAlgorithm, pub &'a [Hash]);

impl TreeSource for LeafSlice<'_> {
    type Error = std::convert::Infallible;
    fn subtree_root(&mut self, start: u64, end: u64) -> Result<Hash, Self::Error> {
        Ok(root(self.0, &self.1[start as usize..end as usize]))
    }
}

/// The audit path of leaf `index` in the tree of the first `size` leaves (RFC 6962 §2.1.1,
/// `PATH(m, D[n])`). `index < size` is required.
pub fn inclusion_proof<S: TreeSource>(src: &mut S, index: u64, size: u64) -> Result<Vec<Hash>, S::Error> {
    let mut proof = Vec::new();
    // PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n]) for m < k,
    //               = PATH(m - k, D[k:n]) : MTH(D[0:k]) for m >= k.
    // Walked top-down, the nodes come out root-first; the path lists them leaf-first.
    let (mut m, mut start, mut end) = (index, 0, size);
    while end - start > 1 {
        let k = split(end - start);
        if m < k {
            proof.push(src.subtree_root(start + k, end)?);
            end = start + k;
        } else {
            proof.push(src.subtree_root(start, start + k)?);
            start += k;
            m -= k;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// Verifies an audit path (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(h: HashAlgorithm, leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    // 1. If leaf_index >= tree_size, fail.
    if index >= size {
        return false;
    }
    // 2. Set fn to leaf_index and sn to tree_size - 1.  3. Set r to hash.
    let (mut fnn, mut sn, mut r) = (index, size - 1, *leaf);
    // 4. For each value p in the inclusion_path array:
    for p in proof {
        // If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0 {
            return false;
        }
        // If LSB(fn) is set, or if fn is equal to sn, then: set r to HASH(0x01 || p || r);
        // if LSB(fn) is not set, right-shift both fn and sn equally until either LSB(fn) is set
        // or fn is 0.  Otherwise: set r to HASH(0x01 || r || p).
        if fnn & 1 == 1 || fnn == sn {
            r = node_hash(h, p, &r);
            while fnn & 1 == 0 && fnn != 0 {
                fnn >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(h, &r, p);
        }
        // Finally, right-shift both fn and sn one time.
        fnn >>= 1;
        sn >>= 1;
    }
    // 5. Compare sn to 0. Compare r against the root_hash.
    sn == 0 && r == *root
}

/// The consistency proof from the tree of the first `m` leaves to that of the first `n`
/// (RFC 6962 §2.1.2, `PROOF(m, D[n])`). Empty when `m == 0` or `m == n`; `m <= n` is required.
pub fn consistency_proof<S: TreeSource>(src: &mut S, m: u64, n: u64) -> Result<Vec<Hash>, S::Error> {
    let mut proof = Vec::new();
    if m == 0 || m >= n {
        return Ok(proof);
    }
    // SUBPROOF(m, D[n], b):
    //   m == n: [] if b, else [MTH(D[n])];
    //   m <= k: SUBPROOF(m, D[0:k], b) : MTH(D[k:n]);
    //   m > k:  SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k]).
    let (mut rel, mut start, mut end, mut b) = (m, 0, n, true);
    while rel != end - start {
        let k = split(end - start);
        if rel <= k {
            proof.push(src.subtree_root(start + k, end)?);
            end = start + k;
        } else {
            proof.push(src.subtree_root(start, start + k)?);
            start += k;
            rel -= k;
            b = false;
        }
    }
    if !b {
        proof.push(src.subtree_root(start, end)?);
    }
    proof.reverse();
    Ok(proof)
}

/// Verifies a consistency proof between two tree heads (RFC 9162 §2.1.4.2). The empty tree is
/// consistent with every tree, and a tree only with itself at the same size.
pub fn verify_consistency(h: HashAlgorithm, m: u64, n: u64, first: &Hash, second: &Hash, proof: &[Hash]) -> bool {
    if m > n {
        return false;
    }
    if m == n {
        return proof.is_empty() && first == second;
    }
    if m == 0 {
        return proof.is_empty() && *first == empty_root(h);
    }
    // 1. If consistency_path is an empty array, stop and fail the proof verification.
    if proof.is_empty() {
        return false;
    }
    // 2. If first is an exact power of 2, then prepend first_hash to the consistency_path array.
    let mut path: Vec<&Hash> = Vec::with_capacity(proof.len() + 1);
    if m.is_power_of_two() {
        path.push(first);
    }
    path.extend(proof.iter());
    // 3. Set fn to first - 1 and sn to second - 1.
    let (mut fnn, mut sn) = (m - 1, n - 1);
    // 4. If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is not set.
    while fnn & 1 == 1 {
        fnn >>= 1;
        sn >>= 1;
    }
    // 5. Set both fr and sr to the first value in the consistency_path array.
    let (mut fr, mut sr) = (*path[0], *path[0]);
    // 6. For each subsequent value c in the consistency_path array:
    for c in &path[1..] {
        // If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0 {
            return false;
        }
        if fnn & 1 == 1 || fnn == sn {
            // Set fr to HASH(0x01 || c || fr); set sr to HASH(0x01 || c || sr). If LSB(fn) is
            // not set, right-shift both fn and sn equally until either LSB(fn) is set or fn is 0.
            fr = node_hash(h, c, &fr);
            sr = node_hash(h, c, &sr);
            while fnn & 1 == 0 && fnn != 0 {
                fnn >>= 1;
                sn >>= 1;
            }
        } else {
            // Otherwise: set sr to HASH(0x01 || sr || c).
            sr = node_hash(h, &sr, c);
        }
        // Finally, right-shift both fn and sn one time.
        fnn >>= 1;
        sn >>= 1;
    }
    // 7. Verify that fr equals first_hash, sr equals second_hash, and sn is 0.
    fr == *first && sr == *second && sn == 0
}

#[cfg(test)]
mod tests {
    use govbox_provisioning::hex;

    use super::*;

    /// MTH exactly as RFC 6962 §2.1 defines it, recursively over the entries.
    fn mth(h: HashAlgorithm, d: &[Vec<u8>]) -> Hash {
        match d.len() {
            0 => empty_root(h),
            1 => leaf_hash(h, &d[0]),
            n => {
                let k = split(n as u64) as usize;
                node_hash(h, &mth(h, &d[..k]), &mth(h, &d[k..]))
            }
        }
    }

    /// SUBPROOF exactly as RFC 6962 §2.1.2 defines it.
    fn subproof(h: HashAlgorithm, m: usize, d: &[Vec<u8>], b: bool) -> Vec<Hash> {
        let n = d.len();
        if m == n {
            return if b { vec![] } else { vec![mth(h, d)] };
        }
        let k = split(n as u64) as usize;
        if m <= k {
            let mut p = subproof(h, m, &d[..k], b);
            p.push(mth(h, &d[k..]));
            p
        } else {
            let mut p = subproof(h, m - k, &d[k..], false);
            p.push(mth(h, &d[..k]));
            p
        }
    }

    /// PATH exactly as RFC 6962 §2.1.1 defines it.
    fn path(h: HashAlgorithm, m: usize, d: &[Vec<u8>]) -> Vec<Hash> {
        let n = d.len();
        if n <= 1 {
            return vec![];
        }
        let k = split(n as u64) as usize;
        if m < k {
            let mut p = path(h, m, &d[..k]);
            p.push(mth(h, &d[k..]));
            p
        } else {
            let mut p = path(h, m - k, &d[k..]);
            p.push(mth(h, &d[..k]));
            p
        }
    }

    fn data(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("entry {i}").into_bytes()).collect()
    }

    #[test]
    fn roots_match_the_definition_for_every_size_up_to_64() {
        for h in HashAlgorithm::ALL {
            for n in 0..=64 {
                let d = data(n);
                let leaves: Vec<Hash> = d.iter().map(|e| leaf_hash(h, e)).collect();
                assert_eq!(root(h, &leaves), mth(h, &d), "{h} n={n}");
                let f = Frontier::from_parts(h, n as u64, root_parts(h, &leaves)).unwrap();
                assert_eq!(f.root(), mth(h, &d));
            }
        }
    }

    fn root_parts(h: HashAlgorithm, leaves: &[Hash]) -> Vec<Hash> {
        let mut f = Frontier::new(h);
        leaves.iter().for_each(|l| f.push(*l));
        f.nodes().to_vec()
    }

    #[test]
    fn known_answers_from_the_certificate_transparency_test_vectors() {
        let leaves: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let sha = HashAlgorithm::Sha256;
        let mut f = Frontier::new(sha);
        for (leaf, want) in leaves.iter().zip(roots) {
            f.push(leaf_hash(sha, leaf));
            assert_eq!(hex(&f.root()), want, "size {}", f.size());
        }
        assert_eq!(hex(&empty_root(sha)), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    /// An SM3 tree, checked against SM3 as OpenSSL computes it (`openssl dgst -sm3`): the empty
    /// root is SM3(""), a leaf is SM3(00 || entry), and a two-leaf root SM3(01 || l0 || l1).
    #[test]
    fn sm3_trees_hash_as_openssl_does() {
        let sm3 = HashAlgorithm::Sm3;
        assert_eq!(hex(&empty_root(sm3)), "1ab21d8355cfa17f8e61194831e81a8f22bec8c728fefb747ed035eb5082aa2b");
        // printf '\x00abc' | openssl dgst -sm3
        assert_eq!(hex(&leaf_hash(sm3, b"abc")), "a7fe0cdcc2194aa7a9c6bfad5637581bf051d935a10bb6a9ccabfce125c27d96");
        // printf '\x01' | cat - <(printf '\x00a' | openssl dgst -sm3 -binary) <(printf '\x00b' | openssl dgst -sm3 -binary) | openssl dgst -sm3
        assert_eq!(
            hex(&root(sm3, &[leaf_hash(sm3, b"a"), leaf_hash(sm3, b"b")])),
            "2c537e31416ae684fd8a1552a3bcd5a452274e02a45d67c856405b3a1108ee90"
        );
        assert_ne!(leaf_hash(sm3, b"abc"), leaf_hash(HashAlgorithm::Sha256, b"abc"));
    }

    #[test]
    fn inclusion_proofs_match_the_definition_and_verify_for_every_leaf() {
        for h in HashAlgorithm::ALL {
            inclusion_proofs_for_every_leaf(h);
        }
    }

    fn inclusion_proofs_for_every_leaf(h: HashAlgorithm) {
        for n in 1..=64usize {
            let d = data(n);
            let leaves: Vec<Hash> = d.iter().map(|e| leaf_hash(h, e)).collect();
            let r = mth(h, &d);
            for i in 0..n {
                let p = inclusion_proof(&mut LeafSlice(h, &leaves), i as u64, n as u64).unwrap();
                assert_eq!(p, path(h, i, &d), "n={n} i={i}");
                assert!(verify_inclusion(h, &leaves[i], i as u64, n as u64, &p, &r), "n={n} i={i}");
                let other = leaves[(i + 1) % n];
                if other != leaves[i] {
                    assert!(!verify_inclusion(h, &other, i as u64, n as u64, &p, &r));
                }
                if let Some(first) = p.first() {
                    let mut bad = p.clone();
                    bad[0][0] ^= 1;
                    assert!(!verify_inclusion(h, &leaves[i], i as u64, n as u64, &bad, &r));
                    assert_ne!(*first, bad[0]);
                }
            }
        }
    }

    #[test]
    fn consistency_proofs_match_the_definition_and_verify_for_every_pair() {
        for h in HashAlgorithm::ALL {
            consistency_proofs_for_every_pair(h);
        }
    }

    fn consistency_proofs_for_every_pair(h: HashAlgorithm) {
        let d = data(64);
        let leaves: Vec<Hash> = d.iter().map(|e| leaf_hash(h, e)).collect();
        for n in 0..=64usize {
            let rn = mth(h, &d[..n]);
            for m in 0..=n {
                let rm = mth(h, &d[..m]);
                let p = consistency_proof(&mut LeafSlice(h, &leaves[..n]), m as u64, n as u64).unwrap();
                let want = if m == 0 || m == n { vec![] } else { subproof(h, m, &d[..n], true) };
                assert_eq!(p, want, "m={m} n={n}");
                assert!(verify_consistency(h, m as u64, n as u64, &rm, &rn, &p), "m={m} n={n}");
                if m > 0 && m < n {
                    // A changed old root, a changed new root, a changed or missing proof node
                    // must all fail. (The sizes are bound by the roots, not by the proof.)
                    let mut bad = rm;
                    bad[31] ^= 1;
                    assert!(!verify_consistency(h, m as u64, n as u64, &bad, &rn, &p), "m={m} n={n}");
                    assert!(!verify_consistency(h, m as u64, n as u64, &rm, &bad, &p), "m={m} n={n}");
                    for j in 0..p.len() {
                        let mut q = p.clone();
                        q[j][0] ^= 0x80;
                        assert!(!verify_consistency(h, m as u64, n as u64, &rm, &rn, &q), "m={m} n={n} j={j}");
                    }
                    assert!(!verify_consistency(h, m as u64, n as u64, &rm, &rn, &p[..p.len() - 1]));
                    // A forked history: the same sizes, a different last entry of the old tree.
                    let mut forked = d[..n].to_vec();
                    forked[m - 1] = b"rewritten".to_vec();
                    let fl: Vec<Hash> = forked.iter().map(|e| leaf_hash(h, e)).collect();
                    let fp = consistency_proof(&mut LeafSlice(h, &fl), m as u64, n as u64).unwrap();
                    assert!(!verify_consistency(h, m as u64, n as u64, &rm, &mth(h, &forked), &fp), "m={m} n={n}");
                }
            }
        }
        assert!(!verify_consistency(h, 3, 2, &empty_root(h), &empty_root(h), &[]));
        assert!(verify_consistency(h, 0, 5, &empty_root(h), &mth(h, &d[..5]), &[]));
    }

    #[test]
    fn frontier_rejects_wrong_part_counts() {
        assert!(Frontier::from_parts(HashAlgorithm::Sm3, 3, vec![[0; 32]]).is_none());
        assert!(Frontier::from_parts(HashAlgorithm::Sm3, 4, vec![[0; 32]]).is_some());
    }
}
