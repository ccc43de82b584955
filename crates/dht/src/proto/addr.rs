//! The two address families a DHT node runs over (BEP 5's IPv4 and BEP 32's IPv6), as one
//! trait, so the routing table and the core are written once and a node runs one core per
//! family, as libtorrent does (one DHT node per socket, each with its own id and table).
//!
//! Generic rather than one type for both: an IPv4 routing-table entry stays 36 bytes (a
//! `SocketAddr` would make it 60), which is what lets the simulator hold a million tables.

use std::fmt::Debug;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use super::id::{is_exempt_addr, NodeId};
use super::krpc::{CompactNode, Response};

/// An IPv4 or IPv6 socket address, and what BEP 5 and BEP 32 do with it.
pub trait NodeAddr:
    Copy + Eq + Ord + Hash + Debug + Send + Sync + 'static + Into<SocketAddr>
{
    /// The other family (a BEP 32 `want` may ask for its nodes).
    type Other: NodeAddr<Other = Self>;
    /// The IP address alone.
    type Ip: Copy + Eq + Hash + Debug + Send + Sync + Into<IpAddr>;
    /// What one host is counted by: an IPv4 address, an IPv6 /64 (a home or a server gets a
    /// whole /64, so a finer key would let one host fill a bucket).
    type Host: Copy + Eq + Hash + Debug + Send + Sync;

    /// `"IPv4"` or `"IPv6"`, for people.
    const NAME: &'static str;
    /// Whether this is IPv4 (BEP 32's `want` names families as `n4` and `n6`).
    const IPV4: bool;
    /// Bytes of a compact address (BEP 5: 6; BEP 32: 18) and of a compact node (26, 38).
    const COMPACT_ADDR: usize;
    const COMPACT_NODE: usize = 20 + Self::COMPACT_ADDR;

    fn new(ip: Self::Ip, port: u16) -> Self;
    /// The address of a socket of this family (an IPv4-mapped IPv6 address is IPv4, not this
    /// family's, when this is IPv6).
    fn from_socket(a: SocketAddr) -> Option<Self>;
    fn host_ip(&self) -> Self::Ip;
    fn port_of(&self) -> u16;
    /// The host key (see [`NodeAddr::Host`]).
    fn host(&self) -> Self::Host;
    /// The network one vote on our external address comes from (IPv4 /24, IPv6 /48): an
    /// attacker needs many networks, not many addresses.
    fn network(&self) -> Self::Host;

    /// Reads a compact address; `b` is [`NodeAddr::COMPACT_ADDR`] bytes long.
    fn read_compact(b: &[u8]) -> Self;
    fn write_compact(&self, out: &mut Vec<u8>);

    /// This family's nodes and peers in a response (`nodes`/`values` or `nodes6`/`values6`).
    fn nodes(r: &Response) -> &Vec<CompactNode<Self>>;
    fn nodes_mut(r: &mut Response) -> &mut Vec<CompactNode<Self>>;
    fn values(r: &Response) -> &Vec<Self>;
    fn values_mut(r: &mut Response) -> &mut Vec<Self>;

    fn ip(&self) -> IpAddr {
        self.host_ip().into()
    }

    /// An address a node can be at: not unspecified, broadcast or multicast; for IPv6 also
    /// not IPv4-mapped (that is an IPv4 node, named twice) nor link-local (meaningless without
    /// the interface, which a compact address does not carry).
    fn usable(&self) -> bool {
        match self.ip() {
            IpAddr::V4(a) => !(a.is_unspecified() || a.is_broadcast() || a.is_multicast()),
            IpAddr::V6(a) => {
                !(a.is_unspecified()
                    || a.is_multicast()
                    || a.to_ipv4_mapped().is_some()
                    || a.is_unicast_link_local())
            }
        }
    }

    /// Loopback, private, unique-local or link-local: what BEP 42 exempts.
    fn exempt(&self) -> bool {
        is_exempt_addr(self.ip())
    }

    /// Whether BEP 42 allows `id` at this address (always, at an exempt one).
    fn allows(&self, id: &NodeId) -> bool {
        id.is_valid_for_addr(self.ip())
    }
}

impl NodeAddr for SocketAddrV4 {
    type Other = SocketAddrV6;
    type Ip = Ipv4Addr;
    type Host = u32;
    const NAME: &'static str = "IPv4";
    const IPV4: bool = true;
    const COMPACT_ADDR: usize = 6;

    fn new(ip: Ipv4Addr, port: u16) -> Self {
        SocketAddrV4::new(ip, port)
    }
    fn from_socket(a: SocketAddr) -> Option<Self> {
        match a {
            SocketAddr::V4(a) => Some(a),
            SocketAddr::V6(a) => Some(SocketAddrV4::new(a.ip().to_ipv4_mapped()?, a.port())),
        }
    }
    fn host_ip(&self) -> Ipv4Addr {
        *self.ip()
    }
    fn port_of(&self) -> u16 {
        self.port()
    }
    fn host(&self) -> u32 {
        u32::from(*self.ip())
    }
    fn network(&self) -> u32 {
        u32::from(*self.ip()) & 0xffff_ff00
    }
    fn read_compact(b: &[u8]) -> Self {
        SocketAddrV4::new(Ipv4Addr::new(b[0], b[1], b[2], b[3]), u16::from_be_bytes([b[4], b[5]]))
    }
    fn write_compact(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ip().octets());
        out.extend_from_slice(&self.port().to_be_bytes());
    }
    fn nodes(r: &Response) -> &Vec<CompactNode<Self>> {
        &r.nodes
    }
    fn nodes_mut(r: &mut Response) -> &mut Vec<CompactNode<Self>> {
        &mut r.nodes
    }
    fn values(r: &Response) -> &Vec<Self> {
        &r.values
    }
    fn values_mut(r: &mut Response) -> &mut Vec<Self> {
        &mut r.values
    }
}

impl NodeAddr for SocketAddrV6 {
    type Other = SocketAddrV4;
    type Ip = Ipv6Addr;
    type Host = u64;
    const NAME: &'static str = "IPv6";
    const IPV4: bool = false;
    const COMPACT_ADDR: usize = 18;

    fn new(ip: Ipv6Addr, port: u16) -> Self {
        SocketAddrV6::new(ip, port, 0, 0)
    }
    fn from_socket(a: SocketAddr) -> Option<Self> {
        match a {
            SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_none() => {
                Some(SocketAddrV6::new(*a.ip(), a.port(), 0, 0))
            }
            _ => None,
        }
    }
    fn host_ip(&self) -> Ipv6Addr {
        *self.ip()
    }
    fn port_of(&self) -> u16 {
        self.port()
    }
    fn host(&self) -> u64 {
        (u128::from(*self.ip()) >> 64) as u64
    }
    fn network(&self) -> u64 {
        self.host() & 0xffff_ffff_ffff_0000
    }
    fn read_compact(b: &[u8]) -> Self {
        let ip: [u8; 16] = b[..16].try_into().expect("18-byte compact address");
        SocketAddrV6::new(Ipv6Addr::from(ip), u16::from_be_bytes([b[16], b[17]]), 0, 0)
    }
    fn write_compact(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ip().octets());
        out.extend_from_slice(&self.port().to_be_bytes());
    }
    fn nodes(r: &Response) -> &Vec<CompactNode<Self>> {
        &r.nodes6
    }
    fn nodes_mut(r: &mut Response) -> &mut Vec<CompactNode<Self>> {
        &mut r.nodes6
    }
    fn values(r: &Response) -> &Vec<Self> {
        &r.values6
    }
    fn values_mut(r: &mut Response) -> &mut Vec<Self> {
        &mut r.values6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_forms_roundtrip_and_hosts_group_as_documented() {
        let a4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 7), 6881);
        let mut b = Vec::new();
        a4.write_compact(&mut b);
        assert_eq!(b.len(), SocketAddrV4::COMPACT_ADDR);
        assert_eq!(SocketAddrV4::read_compact(&b), a4);
        let a6: SocketAddrV6 = "[2001:db8:1:2:3:4:5:6]:51413".parse().unwrap();
        let mut b = Vec::new();
        a6.write_compact(&mut b);
        assert_eq!(b.len(), SocketAddrV6::COMPACT_ADDR);
        assert_eq!(SocketAddrV6::read_compact(&b), a6);
        // One host per /64; one vote per /48 (IPv6) or /24 (IPv4).
        let same64: SocketAddrV6 = "[2001:db8:1:2:ffff::1]:1".parse().unwrap();
        let other48: SocketAddrV6 = "[2001:db8:2:2::1]:1".parse().unwrap();
        assert_eq!(a6.host(), same64.host());
        assert_ne!(a6.network(), other48.network());
        let same24 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 200), 1);
        assert_ne!(a4.host(), same24.host());
        assert_eq!(a4.network(), same24.network());
        // An IPv4-mapped address is IPv4, never an IPv6 node.
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:6881".parse().unwrap();
        assert_eq!(SocketAddrV6::from_socket(mapped), None);
        assert_eq!(SocketAddrV4::from_socket(mapped), Some("10.0.0.1:6881".parse().unwrap()));
        let ula: SocketAddrV6 = "[fd00::1]:1".parse().unwrap();
        assert!(ula.exempt() && !a6.exempt());
        for unusable in ["[ff02::1]:1", "[::ffff:1.2.3.4]:1", "[fe80::1]:1", "[::]:1"] {
            assert!(!unusable.parse::<SocketAddrV6>().unwrap().usable(), "{unusable}");
        }
        assert!("[2001:db8::1]:1".parse::<SocketAddrV6>().unwrap().usable());
    }
}
