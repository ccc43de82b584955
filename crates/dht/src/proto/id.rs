//! Node ids and info-hashes share one 160-bit space, ordered by the XOR metric (Kademlia).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rand::Rng;

/// CRC-32C (Castagnoli), the checksum BEP 42 derives ids with.
const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

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

    /// A BEP 42 id for a node whose external address is `ip`: the first 21 bits come from
    /// CRC-32C of the masked address and 3 random bits (`r`, kept in the last byte); the rest
    /// is random.
    pub fn for_ip(ip: Ipv4Addr, rng: &mut impl Rng) -> NodeId {
        NodeId::for_addr(IpAddr::V4(ip), rng)
    }

    /// [`NodeId::for_ip`] for either family (IPv6: BEP 42's mask over the first 8 bytes, so
    /// every address of a /64 allows the same ids).
    pub fn for_addr(ip: IpAddr, rng: &mut impl Rng) -> NodeId {
        let ip = ip.to_canonical();
        let mut id = NodeId::random(rng);
        let r = id.0[19] & 0x7;
        let crc = bep42_crc_addr(ip, r);
        id.0[0] = (crc >> 24) as u8;
        id.0[1] = (crc >> 16) as u8;
        id.0[2] = ((crc >> 8) as u8 & 0xf8) | (id.0[2] & 0x7);
        id
    }

    /// Whether this id is one BEP 42 allows for `ip` (always true for loopback, private and
    /// link-local addresses, which BEP 42 exempts).
    pub fn is_valid_for(&self, ip: Ipv4Addr) -> bool {
        self.is_valid_for_addr(IpAddr::V4(ip))
    }

    /// [`NodeId::is_valid_for`] for either family (an IPv4-mapped IPv6 address counts as
    /// IPv4).
    pub fn is_valid_for_addr(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if is_exempt_addr(ip) {
            return true;
        }
        let crc = bep42_crc_addr(ip, self.0[19] & 0x7);
        self.0[0] == (crc >> 24) as u8
            && self.0[1] == (crc >> 16) as u8
            && self.0[2] & 0xf8 == (crc >> 8) as u8 & 0xf8
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

/// Loopback, private and link-local addresses: BEP 42 exempts them from id checks, and the
/// routing table from its one-entry-per-address rule.
pub fn is_exempt(ip: Ipv4Addr) -> bool {
    ip.is_loopback() || ip.is_private() || ip.is_link_local()
}

/// [`is_exempt`] for either family: IPv6 loopback, unique-local (fc00::/7) and link-local
/// (fe80::/10) addresses are exempt too.
pub fn is_exempt_addr(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => is_exempt(v4),
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unique_local() || v6.is_unicast_link_local(),
    }
}

/// BEP 42's checksum for either family.
fn bep42_crc_addr(ip: IpAddr, r: u8) -> u32 {
    match ip {
        IpAddr::V4(v4) => bep42_crc(v4, r),
        IpAddr::V6(v6) => bep42_crc6(v6, r),
    }
}

/// BEP 42's IPv6 checksum: CRC-32C of the address's first 8 bytes masked with
/// 0x0103070f1f3f7fff, `r` in the top 3 bits.
fn bep42_crc6(ip: Ipv6Addr, r: u8) -> u32 {
    const MASK: [u8; 8] = [0x01, 0x03, 0x07, 0x0f, 0x1f, 0x3f, 0x7f, 0xff];
    let mut b = [0u8; 8];
    for (i, x) in b.iter_mut().enumerate() {
        *x = ip.octets()[i] & MASK[i];
    }
    b[0] |= (r & 0x7) << 5;
    CRC32C.checksum(&b)
}

/// BEP 42's checksum: CRC-32C of the address masked with 0x030f3fff, `r` in the top 3 bits.
fn bep42_crc(ip: Ipv4Addr, r: u8) -> u32 {
    let masked = (u32::from(ip) & 0x030f_3fff) | (u32::from(r & 0x7) << 29);
    CRC32C.checksum(&masked.to_be_bytes())
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
    fn bep42_test_vectors() {
        // BEP 42's table: address, the random byte r (the id's last byte), the id's first bytes
        // (the third only in its top 5 bits).
        let vectors = [
            ([124, 31, 75, 21], 1u8, [0x5f, 0xbf, 0xbf]),
            ([21, 75, 31, 124], 86, [0x5a, 0x3c, 0xe9]),
            ([65, 23, 51, 170], 22, [0xa5, 0xd4, 0x32]),
            ([84, 124, 73, 14], 65, [0x1b, 0x03, 0x21]),
            ([43, 213, 53, 83], 90, [0xe5, 0x6f, 0x6c]),
        ];
        for (ip, r, prefix) in vectors {
            let ip = Ipv4Addr::from(ip);
            let mut id = [0u8; 20];
            id[..3].copy_from_slice(&prefix);
            id[19] = r;
            assert!(NodeId(id).is_valid_for(ip), "{ip}");
            let mut wrong = id;
            wrong[0] ^= 1;
            assert!(!NodeId(wrong).is_valid_for(ip), "{ip}: a changed first byte passes");
            let crc = bep42_crc(ip, r);
            assert_eq!([(crc >> 24) as u8, (crc >> 16) as u8], [prefix[0], prefix[1]]);
            assert_eq!((crc >> 8) as u8 & 0xf8, prefix[2] & 0xf8);
        }
        let mut rng = rand::rng();
        let public = Ipv4Addr::new(80, 1, 2, 3);
        assert!(NodeId::for_ip(public, &mut rng).is_valid_for(public));
        assert!(!NodeId([0; 20]).is_valid_for(public));
        assert!(NodeId([0; 20]).is_valid_for(Ipv4Addr::new(192, 168, 1, 1)), "private: exempt");
    }

    #[test]
    fn bep42_ids_for_ipv6_follow_the_64_prefix() {
        let mut rng = rand::rng();
        let a: Ipv6Addr = "2001:db8:1:2::5".parse().unwrap();
        let id = NodeId::for_addr(IpAddr::V6(a), &mut rng);
        assert!(id.is_valid_for_addr(IpAddr::V6(a)));
        // The same /64: the same ids; another /64: not.
        assert!(id.is_valid_for_addr("2001:db8:1:2::ffff".parse().unwrap()));
        assert!(!id.is_valid_for_addr("2001:db8:1:3::5".parse().unwrap()));
        // Exempt: loopback, unique-local, link-local; IPv4-mapped counts as IPv4.
        for ip in ["::1", "fd00::1", "fe80::1"] {
            assert!(NodeId([0; 20]).is_valid_for_addr(ip.parse().unwrap()), "{ip}");
        }
        let v4 = Ipv4Addr::new(80, 1, 2, 3);
        let id4 = NodeId::for_ip(v4, &mut rng);
        assert!(id4.is_valid_for_addr(IpAddr::V6(v4.to_ipv6_mapped())));
        assert!(NodeId([0; 20]).is_valid_for_addr("::ffff:192.168.1.1".parse().unwrap()));
    }

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
