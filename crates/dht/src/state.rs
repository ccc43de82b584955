//! The DHT state file: our ids and the nodes of our routing tables, so a restart is warm.
//!
//! A bencoded dictionary, the KRPC way (BEP 32's compact forms): `id` and `id6` (20 bytes
//! each, the IPv4 and the IPv6 node's), `nodes` (26 bytes per IPv4 node) and `nodes6` (38 per
//! IPv6 node). Files written before IPv6 (our id, then 26-byte nodes, no dictionary) are read
//! too. Whatever the file holds is a claim: sizes are capped ([`MAX_STATE_BYTES`],
//! [`MAX_SAVED_NODES`] per family), a file of any other shape is refused with an error (the
//! caller leaves it as it is), and the saved nodes only become routing-table entries after
//! they answer us.

use std::io;
use std::net::{SocketAddrV4, SocketAddrV6};

use bendy::decoding::{Decoder, Object};

use crate::proto::addr::NodeAddr;
use crate::proto::id::NodeId;
use crate::proto::krpc::{compact_nodes, read_nodes, CompactNode};

/// Nodes saved per family, at most.
pub const MAX_SAVED_NODES: usize = 1_000;
/// The largest state file read (both families full, with room for the keys).
pub const MAX_STATE_BYTES: u64 = 80 * 1024;

/// What a state file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub id: Option<NodeId>,
    pub id6: Option<NodeId>,
    pub nodes: Vec<CompactNode<SocketAddrV4>>,
    pub nodes6: Vec<CompactNode<SocketAddrV6>>,
}

impl State {
    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = b"d".to_vec();
        let mut pair = |key: &str, value: &[u8]| {
            out.extend_from_slice(format!("{}:{key}{}:", key.len(), value.len()).as_bytes());
            out.extend_from_slice(value);
        };
        // Sorted keys: id, id6, nodes, nodes6.
        if let Some(id) = &self.id {
            pair("id", &id.0);
        }
        if let Some(id) = &self.id6 {
            pair("id6", &id.0);
        }
        pair("nodes", &compact_nodes(&self.nodes[..self.nodes.len().min(MAX_SAVED_NODES)]));
        pair("nodes6", &compact_nodes(&self.nodes6[..self.nodes6.len().min(MAX_SAVED_NODES)]));
        out.push(b'e');
        out
    }

    /// Reads a state file's bytes; `None` if they are not one.
    pub fn parse(bytes: &[u8]) -> Option<State> {
        if bytes.len() as u64 > MAX_STATE_BYTES {
            return None;
        }
        State::parse_dict(bytes).or_else(|| State::parse_old(bytes))
    }

    fn parse_dict(bytes: &[u8]) -> Option<State> {
        let mut dec = Decoder::new(bytes).with_max_depth(2);
        let Ok(Some(Object::Dict(mut d))) = dec.next_object() else {
            return None;
        };
        let mut s = State::default();
        let id = |b: &[u8]| NodeId::from_slice(b);
        while let Some((k, v)) = d.next_pair().ok()? {
            let Object::Bytes(b) = v else { return None };
            match k {
                b"id" => s.id = Some(id(b)?),
                b"id6" => s.id6 = Some(id(b)?),
                b"nodes" => s.nodes = saved(b)?,
                b"nodes6" => s.nodes6 = saved(b)?,
                _ => return None,
            }
        }
        // A dictionary that did not end well, or bytes after it: not ours.
        drop(d);
        let rest = matches!(dec.next_object(), Ok(None));
        rest.then_some(s)
    }

    /// The format before IPv6: our id, then 26-byte IPv4 nodes.
    fn parse_old(bytes: &[u8]) -> Option<State> {
        if bytes.len() < 20 || !(bytes.len() - 20).is_multiple_of(26) {
            return None;
        }
        let nodes = saved(&bytes[20..])?;
        Some(State { id: NodeId::from_slice(&bytes[..20]), nodes, ..State::default() })
    }
}

/// Saved nodes: whole compact entries, at most [`MAX_SAVED_NODES`], port 0 dropped.
fn saved<A: NodeAddr>(b: &[u8]) -> Option<Vec<CompactNode<A>>> {
    let mut nodes = read_nodes::<A>(b, "state").ok()?;
    if nodes.len() > MAX_SAVED_NODES {
        return None;
    }
    nodes.retain(|n| n.addr.port_of() != 0);
    Some(nodes)
}

/// Reads the state file at `path`: `None` when there is none; an error naming the file when
/// it is not a state file (left as it is).
pub fn load(path: &std::path::Path) -> io::Result<Option<State>> {
    let not_ours = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not a DHT state file (it is left as it is): give another path",
                path.display()
            ),
        )
    };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
        Ok(m) if m.len() > MAX_STATE_BYTES => return Err(not_ours()),
        Ok(_) => {}
    }
    let bytes = std::fs::read(path)?;
    State::parse(&bytes).map(Some).ok_or_else(not_ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_roundtrips_and_old_files_are_read() {
        let s = State {
            id: Some(NodeId([1; 20])),
            id6: Some(NodeId([2; 20])),
            nodes: vec![CompactNode {
                id: NodeId([3; 20]),
                addr: "10.0.0.1:6881".parse().unwrap(),
            }],
            nodes6: vec![CompactNode {
                id: NodeId([4; 20]),
                addr: "[fd00::1]:6881".parse().unwrap(),
            }],
        };
        assert_eq!(State::parse(&s.encode()), Some(s.clone()));
        // Before IPv6: id, then 26-byte nodes.
        let mut old = vec![1u8; 20];
        old.extend_from_slice(&[3; 20]);
        old.extend_from_slice(&[10, 0, 0, 1, 0x1a, 0xe1]);
        let read = State::parse(&old).unwrap();
        assert_eq!((read.id, &read.nodes, read.id6), (s.id, &s.nodes, None));
        // Not a state file: refused, whatever its shape.
        for bad in [
            &b"my notes"[..],
            b"d2:id20:aaaaaaaaaaaaaaaaaaaa5:nodes3:abce",
            b"d5:other0:e",
            b"d2:id20:aaaaaaaaaaaaaaaaaaaaextra",
            b"d2:id20:aaaaaaaaaaaaaaaaaaaaee",
            b"d2:idi5ee",
        ] {
            assert_eq!(State::parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        let id_only = State::parse(b"d2:id20:aaaaaaaaaaaaaaaaaaaae").unwrap();
        assert_eq!((id_only.id, id_only.nodes.len()), (Some(NodeId([b'a'; 20])), 0));
        // More than the cap of nodes: refused.
        let many = State { nodes: vec![s.nodes[0]; MAX_SAVED_NODES + 1], ..State::default() };
        let mut bytes = b"d5:nodes".to_vec();
        let nodes = compact_nodes(&many.nodes);
        bytes.extend_from_slice(format!("{}:", nodes.len()).as_bytes());
        bytes.extend_from_slice(&nodes);
        bytes.push(b'e');
        assert_eq!(State::parse(&bytes), None);
        // Encoding caps what it writes.
        assert_eq!(State::parse(&many.encode()).unwrap().nodes.len(), MAX_SAVED_NODES);
    }
}
