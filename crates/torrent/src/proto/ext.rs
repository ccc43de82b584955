//! Payloads of the extension protocol (BEP 10), of metadata exchange (BEP 9, `ut_metadata`),
//! which lets a magnet link fetch the info dictionary from peers, and of peer exchange (BEP 11,
//! `ut_pex`). A pure codec.

use std::net::SocketAddr;

use bendy::decoding::{Decoder, Object};
use bendy::encoding::Encoder;
use bytes::Bytes;

use crate::tracker::{parse_compact_peers, push_compact_peer};

/// Metadata travels in 16 KiB pieces (BEP 9).
pub const METADATA_PIECE: u32 = 16 * 1024;

/// The bytes of a dictionary of `size` bytes that metadata piece `piece` carries; `None` past
/// the end.
pub fn metadata_piece_range(size: usize, piece: u32) -> Option<std::ops::Range<usize>> {
    let start = (piece as usize).checked_mul(METADATA_PIECE as usize)?;
    (start < size).then(|| start..(start + METADATA_PIECE as usize).min(size))
}
/// The largest info dictionary we accept from a peer (about 160,000 pieces' hashes).
pub const MAX_METADATA: u32 = 4 << 20;
/// The extended message id under which we ask peers to send us `ut_metadata` messages.
pub const OUR_UT_METADATA: u8 = 3;
/// The extended message id under which we ask peers to send us `ut_pex` messages.
pub const OUR_UT_PEX: u8 = 1;
/// Most peers in one list (`added` or `dropped`) of a PEX message we send, as BEP 11 asks;
/// from a peer we take at most this many of each list and ignore the rest.
pub const MAX_PEX_PEERS: usize = 50;

/// A malformed extension payload; the peer is disconnected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExtError {
    #[error("extension payload is not valid bencode: {0}")]
    Bencode(String),
    #[error("extension payload is missing or has a bad '{0}'")]
    Field(&'static str),
}

fn benc(e: bendy::decoding::Error) -> ExtError {
    ExtError::Bencode(e.to_string())
}

fn int(o: Object<'_, '_>, field: &'static str) -> Result<i64, ExtError> {
    match o {
        Object::Integer(s) => s.parse().map_err(|_| ExtError::Field(field)),
        _ => Err(ExtError::Field(field)),
    }
}

/// The extension handshake (extended message id 0).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtHandshake {
    /// The id the sender wants `ut_metadata` messages sent to it under; `None` = unsupported.
    pub ut_metadata: Option<u8>,
    /// The id the sender wants `ut_pex` messages sent to it under; `None` = unsupported.
    pub ut_pex: Option<u8>,
    pub metadata_size: Option<u32>,
    /// Client name and version (`v`).
    pub client: Option<String>,
    /// How many outstanding requests the sender queues (`reqq`).
    pub reqq: Option<u32>,
    /// The sender's listening port (`p`).
    pub port: Option<u16>,
    /// Where the sender says it sees us (`yourip`, 4 or 16 bytes): a claim, for logs only.
    pub yourip: Option<std::net::IpAddr>,
    /// The sender's own IPv6 address (`ipv6`, 16 bytes), where it also listens on `p`.
    pub ipv6: Option<std::net::Ipv6Addr>,
}

impl ExtHandshake {
    /// Bencodes the handshake.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        let r = e.emit_dict(|mut d| {
            if let Some(ip) = self.ipv6 {
                d.emit_pair_with(b"ipv6", |v| v.emit_bytes(&ip.octets()))?;
            }
            d.emit_pair_with(b"m", |v| {
                v.emit_dict(|mut m| {
                    if let Some(id) = self.ut_metadata {
                        m.emit_pair(b"ut_metadata", id as i64)?;
                    }
                    if let Some(id) = self.ut_pex {
                        m.emit_pair(b"ut_pex", id as i64)?;
                    }
                    Ok(())
                })
            })?;
            if let Some(size) = self.metadata_size {
                d.emit_pair(b"metadata_size", size as i64)?;
            }
            if let Some(p) = self.port {
                d.emit_pair(b"p", p as i64)?;
            }
            if let Some(q) = self.reqq {
                d.emit_pair(b"reqq", q as i64)?;
            }
            if let Some(v) = &self.client {
                d.emit_pair(b"v", v.as_str())?;
            }
            match self.yourip {
                Some(std::net::IpAddr::V4(ip)) => {
                    d.emit_pair_with(b"yourip", |v| v.emit_bytes(&ip.octets()))?
                }
                Some(std::net::IpAddr::V6(ip)) => {
                    d.emit_pair_with(b"yourip", |v| v.emit_bytes(&ip.octets()))?
                }
                None => {}
            }
            Ok(())
        });
        // Encoding into memory with keys given in sorted order cannot fail.
        r.and_then(|_| e.get_output()).expect("in-memory bencode of a sorted dict")
    }

    /// Parses a peer's extension handshake; unknown keys are ignored.
    pub fn decode(payload: &[u8]) -> Result<Self, ExtError> {
        let mut dec = Decoder::new(payload).with_max_depth(4);
        let mut out = ExtHandshake::default();
        let Some(Object::Dict(mut d)) = dec.next_object().map_err(benc)? else {
            return Err(ExtError::Field("dictionary"));
        };
        while let Some((k, v)) = d.next_pair().map_err(benc)? {
            match k {
                b"m" => {
                    let Object::Dict(mut m) = v else {
                        return Err(ExtError::Field("m"));
                    };
                    while let Some((name, id)) = m.next_pair().map_err(benc)? {
                        // id 0 means "disabled" (BEP 10).
                        match name {
                            b"ut_metadata" => {
                                let id = int(id, "m.ut_metadata")?;
                                out.ut_metadata = u8::try_from(id).ok().filter(|&i| i != 0);
                            }
                            b"ut_pex" => {
                                let id = int(id, "m.ut_pex")?;
                                out.ut_pex = u8::try_from(id).ok().filter(|&i| i != 0);
                            }
                            _ => {}
                        }
                    }
                }
                b"metadata_size" => {
                    let n = int(v, "metadata_size")?;
                    out.metadata_size = u32::try_from(n).ok();
                }
                b"reqq" => out.reqq = u32::try_from(int(v, "reqq")?).ok(),
                b"p" => out.port = u16::try_from(int(v, "p")?).ok(),
                b"v" => {
                    if let Object::Bytes(b) = v {
                        out.client = Some(String::from_utf8_lossy(b).chars().take(64).collect());
                    }
                }
                // Addresses of another size are ignored, as libtorrent ignores them.
                b"yourip" => {
                    if let Object::Bytes(b) = v {
                        out.yourip = match b.len() {
                            4 => Some(<[u8; 4]>::try_from(b).expect("4 bytes").into()),
                            16 => Some(<[u8; 16]>::try_from(b).expect("16 bytes").into()),
                            _ => None,
                        };
                    }
                }
                b"ipv6" => {
                    if let Object::Bytes(b) = v {
                        out.ipv6 = <[u8; 16]>::try_from(b).ok().map(Into::into);
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

/// A `ut_metadata` message (BEP 9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataMsg {
    Request { piece: u32 },
    Data { piece: u32, total_size: u32, data: Bytes },
    Reject { piece: u32 },
}

impl MetadataMsg {
    /// Bencoded header, followed by the raw data for `Data`.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, piece) = match self {
            MetadataMsg::Request { piece } => (0, *piece),
            MetadataMsg::Data { piece, .. } => (1, *piece),
            MetadataMsg::Reject { piece } => (2, *piece),
        };
        let mut e = Encoder::new();
        let r = e.emit_dict(|mut d| {
            d.emit_pair(b"msg_type", kind as i64)?;
            d.emit_pair(b"piece", piece as i64)?;
            if let MetadataMsg::Data { total_size, .. } = self {
                d.emit_pair(b"total_size", *total_size as i64)?;
            }
            Ok(())
        });
        let mut out = r.and_then(|_| e.get_output()).expect("in-memory bencode of a sorted dict");
        if let MetadataMsg::Data { data, .. } = self {
            out.extend_from_slice(data);
        }
        out
    }

    /// Parses a `ut_metadata` payload. `Data` payloads carry at most one 16 KiB piece.
    pub fn decode(payload: &Bytes) -> Result<Self, ExtError> {
        let mut dec = Decoder::new(payload).with_max_depth(2);
        let (mut kind, mut piece, mut total) = (None, None, None);
        let header_len = {
            let Some(Object::Dict(mut d)) = dec.next_object().map_err(benc)? else {
                return Err(ExtError::Field("dictionary"));
            };
            while let Some((k, v)) = d.next_pair().map_err(benc)? {
                match k {
                    b"msg_type" => kind = Some(int(v, "msg_type")?),
                    b"piece" => piece = Some(int(v, "piece")?),
                    b"total_size" => total = Some(int(v, "total_size")?),
                    _ => {}
                }
            }
            d.into_raw().map_err(benc)?.len()
        };
        let piece = piece
            .and_then(|p| u32::try_from(p).ok())
            .filter(|&p| p < MAX_METADATA / METADATA_PIECE)
            .ok_or(ExtError::Field("piece"))?;
        match kind {
            Some(0) => Ok(MetadataMsg::Request { piece }),
            Some(2) => Ok(MetadataMsg::Reject { piece }),
            Some(1) => {
                let total_size = total
                    .and_then(|t| u32::try_from(t).ok())
                    .filter(|&t| t > 0 && t <= MAX_METADATA)
                    .ok_or(ExtError::Field("total_size"))?;
                let data = payload.slice(header_len..);
                if data.len() > METADATA_PIECE as usize {
                    return Err(ExtError::Field("data"));
                }
                Ok(MetadataMsg::Data { piece, total_size, data })
            }
            _ => Err(ExtError::Field("msg_type")),
        }
    }
}

/// BEP 11 flag: the peer prefers encrypted connections.
pub const PEX_ENCRYPTION: u8 = 0x01;
/// BEP 11 flag: the peer is a seed (or upload only).
pub const PEX_SEED: u8 = 0x02;
/// BEP 11 flag: the sender reached the peer by an outgoing connection (it is reachable).
pub const PEX_REACHABLE: u8 = 0x10;

/// A `ut_pex` message (BEP 11): peers the sender connected to and disconnected from since its
/// last message. What a peer tells us here is a claim: the addresses are dial candidates only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PexMsg {
    /// Peers, each with its BEP 11 flags (`PEX_*`; 0 when the sender gave none).
    pub added: Vec<(SocketAddr, u8)>,
    pub dropped: Vec<SocketAddr>,
}

impl PexMsg {
    /// Bencodes the message: IPv4 peers in `added`/`dropped`, IPv6 in `added6`/`dropped6`, 6 and
    /// 18 bytes each (address, then port, big-endian).
    pub fn encode(&self) -> Vec<u8> {
        let split = |v4: bool| -> (Vec<u8>, Vec<u8>) {
            let (mut addrs, mut flags) = (vec![], vec![]);
            for (a, f) in self.added.iter().filter(|(a, _)| a.is_ipv4() == v4) {
                push_compact_peer(&mut addrs, *a);
                flags.push(*f);
            }
            (addrs, flags)
        };
        let dropped = |v4: bool| -> Vec<u8> {
            let mut out = vec![];
            for a in self.dropped.iter().filter(|a| a.is_ipv4() == v4) {
                push_compact_peer(&mut out, *a);
            }
            out
        };
        let ((a4, f4), (a6, f6)) = (split(true), split(false));
        let (d4, d6) = (dropped(true), dropped(false));
        let mut e = Encoder::new();
        let r = e.emit_dict(|mut d| {
            d.emit_pair_with(b"added", |e| e.emit_bytes(&a4))?;
            d.emit_pair_with(b"added.f", |e| e.emit_bytes(&f4))?;
            if !a6.is_empty() {
                d.emit_pair_with(b"added6", |e| e.emit_bytes(&a6))?;
                d.emit_pair_with(b"added6.f", |e| e.emit_bytes(&f6))?;
            }
            d.emit_pair_with(b"dropped", |e| e.emit_bytes(&d4))?;
            if !d6.is_empty() {
                d.emit_pair_with(b"dropped6", |e| e.emit_bytes(&d6))?;
            }
            Ok(())
        });
        r.and_then(|_| e.get_output()).expect("in-memory bencode of a sorted dict")
    }

    /// Parses a `ut_pex` payload. A list whose length is not a whole number of entries is an
    /// error; entries with port 0 are skipped; past [`MAX_PEX_PEERS`] entries a list is cut
    /// short; flags that do not match their list in length are taken as 0; unknown keys are
    /// ignored.
    pub fn decode(payload: &[u8]) -> Result<Self, ExtError> {
        let mut dec = Decoder::new(payload).with_max_depth(2);
        let Some(Object::Dict(mut d)) = dec.next_object().map_err(benc)? else {
            return Err(ExtError::Field("dictionary"));
        };
        let (mut a4, mut f4, mut a6, mut f6) = (vec![], vec![], vec![], vec![]);
        let mut out = PexMsg::default();
        while let Some((k, v)) = d.next_pair().map_err(benc)? {
            let bytes = |v: Object<'_, '_>, field| match v {
                Object::Bytes(b) => Ok(b.to_vec()),
                _ => Err(ExtError::Field(field)),
            };
            match k {
                b"added" => a4 = parse_compact(&bytes(v, "added")?, false, "added")?,
                b"added.f" => f4 = bytes(v, "added.f")?,
                b"added6" => a6 = parse_compact(&bytes(v, "added6")?, true, "added6")?,
                b"added6.f" => f6 = bytes(v, "added6.f")?,
                b"dropped" => {
                    out.dropped.extend(parse_compact(&bytes(v, "dropped")?, false, "dropped")?)
                }
                b"dropped6" => {
                    out.dropped.extend(parse_compact(&bytes(v, "dropped6")?, true, "dropped6")?)
                }
                _ => {}
            }
        }
        for (addrs, flags) in [(a4, f4), (a6, f6)] {
            let flags = if flags.len() == addrs.len() { flags } else { vec![0; addrs.len()] };
            out.added.extend(addrs.into_iter().zip(flags));
        }
        out.added.truncate(2 * MAX_PEX_PEERS);
        out.dropped.truncate(2 * MAX_PEX_PEERS);
        Ok(out)
    }
}

/// A compact peer list of `field` (the tracker's parser: 6-byte IPv4 or 18-byte IPv6 entries,
/// port 0 skipped), at most [`MAX_PEX_PEERS`] kept.
fn parse_compact(b: &[u8], ipv6: bool, field: &'static str) -> Result<Vec<SocketAddr>, ExtError> {
    let mut peers = parse_compact_peers(b, ipv6).ok_or(ExtError::Field(field))?;
    peers.truncate(MAX_PEX_PEERS);
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_round_trip() {
        let h = ExtHandshake {
            ut_metadata: Some(3),
            ut_pex: Some(1),
            metadata_size: Some(31_337),
            client: Some("Swarmcast 0.1".into()),
            reqq: Some(250),
            port: Some(6881),
            yourip: Some("203.0.113.5".parse().unwrap()),
            ipv6: Some("2001:db8::7".parse().unwrap()),
        };
        assert_eq!(ExtHandshake::decode(&h.encode()).unwrap(), h);
        let v6 = ExtHandshake { yourip: Some("2001:db8::9".parse().unwrap()), ..h };
        assert_eq!(ExtHandshake::decode(&v6.encode()).unwrap(), v6);
        // Addresses of the wrong size are left out, not errors.
        let odd = ExtHandshake::decode(b"d4:ipv63:abc1:md1:pi1ee6:yourip5:abcdee").unwrap();
        assert_eq!((odd.ipv6, odd.yourip), (None, None));
    }

    #[test]
    fn handshake_from_a_libtorrent_like_peer() {
        let raw = b"d1:md11:lt_donthavei7e11:ut_metadatai2e6:ut_pexi1ee13:metadata_sizei1234e4:reqqi500e1:v16:libtorrent 2.0.8e";
        let h = ExtHandshake::decode(raw).unwrap();
        assert_eq!(h.ut_metadata, Some(2));
        assert_eq!(h.ut_pex, Some(1));
        assert_eq!(h.metadata_size, Some(1234));
        assert_eq!(h.reqq, Some(500));
        assert!(ExtHandshake::decode(b"i5e").is_err());
        assert!(ExtHandshake::decode(b"d1:m").is_err());
    }

    #[test]
    fn metadata_messages_round_trip() {
        for m in [
            MetadataMsg::Request { piece: 2 },
            MetadataMsg::Reject { piece: 0 },
            MetadataMsg::Data { piece: 1, total_size: 20000, data: Bytes::from_static(b"xyz") },
        ] {
            assert_eq!(MetadataMsg::decode(&Bytes::from(m.encode())).unwrap(), m);
        }
        let huge = b"d8:msg_typei1e5:piecei0e10:total_sizei999999999ee";
        assert!(MetadataMsg::decode(&Bytes::from_static(huge)).is_err());
        assert!(MetadataMsg::decode(&Bytes::from_static(b"d8:msg_typei7e5:piecei0ee")).is_err());
    }

    #[test]
    fn pex_messages_round_trip_in_both_families() {
        let m = PexMsg {
            added: vec![
                ("10.0.0.1:6881".parse().unwrap(), PEX_SEED | PEX_REACHABLE),
                ("192.168.1.2:51413".parse().unwrap(), 0),
                ("[2001:db8::1]:6881".parse().unwrap(), PEX_ENCRYPTION),
            ],
            dropped: vec!["10.0.0.9:1".parse().unwrap(), "[2001:db8::2]:2".parse().unwrap()],
        };
        assert_eq!(PexMsg::decode(&m.encode()).unwrap(), m);
        // What libtorrent sends: IPv4 lists and their flags, empty IPv6 lists.
        let raw = b"d5:added12:\x7f\x00\x00\x01\x1a\xe1\x0a\x00\x00\x02\x00\x507:added.f2:\x12\x006:added60:8:added6.f0:7:dropped0:8:dropped60:e";
        let m = PexMsg::decode(raw).unwrap();
        assert_eq!(
            m.added,
            vec![("127.0.0.1:6881".parse().unwrap(), 0x12), ("10.0.0.2:80".parse().unwrap(), 0)]
        );
        assert!(m.dropped.is_empty());
    }

    #[test]
    fn bad_pex_messages_are_refused_and_long_lists_cut_short() {
        assert!(PexMsg::decode(b"d5:added5:abcdee").is_err(), "not a whole entry");
        assert!(PexMsg::decode(b"d5:addedi1ee").is_err());
        assert!(PexMsg::decode(b"le").is_err());
        let mut many = b"d5:added600:".to_vec();
        many.extend(std::iter::repeat_n(7u8, 600));
        many.extend_from_slice(b"e");
        let m = PexMsg::decode(&many).unwrap();
        assert_eq!(m.added.len(), MAX_PEX_PEERS, "100 entries, 50 kept");
        assert!(m.added.iter().all(|&(_, f)| f == 0), "no flags given");
    }
}
