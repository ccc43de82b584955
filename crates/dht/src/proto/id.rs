//! Node ids and info-hashes share one 160-bit space, ordered by the XOR metric (Kademlia).

use std::fmt;

use rand::Rng;

/// A 160-bit DHT key: a node's id, an info-hash, or a BEP 44 item's target.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; 20]);

impl NodeId {
    /// A uniformly random id.
    pub fn random(rng: &mut impl Rng) -> NodeId {
        let mut id = [0u8; 20];
        rng.fill(&mut id);
        NodeId(id)
    }

    /// The id of `bytes` when it is exactly 20 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<NodeId> {
        Some(NodeId(bytes.try_into().ok()?))
    }

    /// The XOR distance to `other`, comparable as a big-endian number.
    pub fn distance(&self, other: &NodeId) -> [u8; 20] {
        let mut d = [0u8; 20];
        for (i, b) in d.iter_mut().enumerate() {
            *b = self.0[i] ^ other.0[i];
        }
        d
    }

    /// How many leading bits `self` and `other` share (160 when equal): the index of the
    /// routing-table bucket `other` falls in, seen from `self`.
    pub fn common_prefix_len(&self, other: &NodeId) -> u32 {
        let d = self.distance(other);
        let mut bits = 0;
        for b in d {
            if b != 0 {
                return bits + b.leading_zeros();
            }
            bits += 8;
        }
        bits
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", hex::encode(self.0))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_metric() {
        let a = NodeId([0u8; 20]);
        let mut b = [0u8; 20];
        b[0] = 0b0001_0000;
        let b = NodeId(b);
        assert_eq!(a.common_prefix_len(&a), 160);
        assert_eq!(a.common_prefix_len(&b), 3);
        let mut c = [0u8; 20];
        c[19] = 1;
        assert_eq!(a.common_prefix_len(&NodeId(c)), 159);
        // Closer means a smaller XOR distance, compared as big-endian bytes.
        assert!(a.distance(&NodeId(c)) < a.distance(&b));
        assert_eq!(a.distance(&b), b.distance(&a));
        assert_eq!(NodeId::from_slice(&[1; 19]), None);
        assert_eq!(NodeId::from_slice(&[1; 20]), Some(NodeId([1; 20])));
    }
}
