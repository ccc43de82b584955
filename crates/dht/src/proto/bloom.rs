//! BEP 33's scrape filters: 256-byte bloom filters (2,048 bits, 2 hashes) of the IP addresses
//! of a swarm's seeds (`BFsd`) and downloaders (`BFpe`), from which a `get_peers` with
//! `scrape = 1` estimates the swarm's size without listing it. Filters from several nodes are
//! combined by OR.

use std::net::IpAddr;

use sha1::{Digest, Sha1};

/// Bits in a filter (BEP 33's m).
const M: usize = 256 * 8;

/// One BEP 33 bloom filter.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ScrapeFilter(pub [u8; 256]);

impl Default for ScrapeFilter {
    fn default() -> Self {
        ScrapeFilter([0; 256])
    }
}

impl std::fmt::Debug for ScrapeFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ScrapeFilter(~{:.1})", self.estimate())
    }
}

impl ScrapeFilter {
    /// Adds an address: two bits from the SHA-1 of its bytes (4 for IPv4, 16 for IPv6).
    pub fn insert(&mut self, ip: IpAddr) {
        let hash = match ip {
            IpAddr::V4(a) => Sha1::digest(a.octets()),
            IpAddr::V6(a) => Sha1::digest(a.octets()),
        };
        for i in [0, 2] {
            let index = (hash[i] as usize | (hash[i + 1] as usize) << 8) % M;
            self.0[index / 8] |= 1 << (index % 8);
        }
    }

    /// Adds every address of `other` (filters from several nodes).
    pub fn union(&mut self, other: &ScrapeFilter) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a |= b;
        }
    }

    /// The number of distinct addresses the filter estimates it holds (BEP 33's formula; an
    /// empty filter, 0).
    pub fn estimate(&self) -> f64 {
        let zeros: u32 = self.0.iter().map(|b| b.count_zeros()).sum();
        if zeros as usize == M {
            return 0.0;
        }
        let c = (zeros as f64).min(M as f64 - 1.0);
        let m = M as f64;
        (c / m).ln() / (2.0 * (1.0 - 1.0 / m).ln())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn bep33_test_vector() {
        // BEP 33: 192.0.2.0-255 and 2001:db8::0-3e7 give an estimate of 1224.93.
        let mut f = ScrapeFilter::default();
        for i in 0..=255u8 {
            f.insert(IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)));
        }
        for i in 0..=0x3e7u16 {
            f.insert(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i)));
        }
        assert!((f.estimate() - 1224.9308).abs() < 0.001, "{}", f.estimate());
        assert_eq!(ScrapeFilter::default().estimate(), 0.0);
    }

    #[test]
    fn a_union_estimates_the_distinct_addresses_of_both() {
        let (mut a, mut b) = (ScrapeFilter::default(), ScrapeFilter::default());
        for i in 0..100u8 {
            a.insert(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)));
            b.insert(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i + 50)));
        }
        a.union(&b);
        let e = a.estimate();
        assert!((140.0..160.0).contains(&e), "150 distinct, estimated {e}");
    }
}
