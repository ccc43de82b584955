//! The uTP packet (BEP 29): a 20-byte header, a chain of extensions, then the payload.
//!
//! ```text
//! 0       4       8               16              24              32
//! +-------+-------+---------------+---------------+---------------+
//! | type  | ver   | extension     | connection_id                 |
//! +-------+-------+---------------+---------------+---------------+
//! | timestamp_microseconds                                        |
//! | timestamp_difference_microseconds                             |
//! | wnd_size                                                      |
//! | seq_nr                        | ack_nr                        |
//! +---------------+---------------+---------------+---------------+
//! ```
//!
//! Each extension is `next extension type` (1 byte), `length` (1 byte) and `length` bytes; the
//! chain ends at type 0. Extension 1 is the selective ACK: a bitmask, a multiple of 4 bytes,
//! whose bit `i` (least significant bit of each byte first) acknowledges `ack_nr + 2 + i`.
//!
//! # Every datagram is hostile
//! - The version must be 1 and the type one of the five; anything else is an error.
//! - The extension chain must fit the datagram; at most [`MAX_EXTENSIONS`] extensions are read.
//!   A selective ACK must be 1 to [`MAX_SACK_BYTES`] bytes (any length its one length byte can
//!   say). BEP 29 asks for a multiple of 4, and we send that, but libtorrent 2.0 sends any
//!   length (9 and 10 bytes were seen), and sizes its bitmask to cover its whole reorder
//!   buffer, up to what fits in a packet (88 bytes were seen after a burst of 700 packets lost
//!   its first): a codec that refused either ignored every acknowledgement that carried one,
//!   and the transfer stalled for good. Reading a long one costs nothing more: only the bits
//!   of packets in flight are looked at. Other extension types are skipped.
//! - A datagram is at most [`MAX_PACKET`] bytes; larger ones are refused before parsing.
//!
//! Decoding returns [`PacketError`]; the caller drops the datagram and counts it. It never
//! panics (fuzzed: `fuzz/fuzz_targets/utp.rs`).

/// The largest datagram we parse (a UDP payload on an Ethernet path is at most 1,472 bytes;
/// loopback allows more, and libtorrent's uTP uses up to the path MTU).
pub const MAX_PACKET: usize = 64 * 1024;
/// The header's size.
pub const HEADER_LEN: usize = 20;
/// Extensions read from one packet, at most.
pub const MAX_EXTENSIONS: usize = 8;
/// The longest selective-ACK bitmask accepted: any its length byte can say (2,040 packets past
/// `ack_nr + 1`); we send at most [`SEND_SACK_BYTES`].
pub const MAX_SACK_BYTES: usize = 255;
/// The longest selective ACK we send (256 packets, as libtorrent), a multiple of 4.
pub const SEND_SACK_BYTES: usize = 32;

/// BEP 29's version.
const VERSION: u8 = 1;
/// Extension types.
const EXT_SACK: u8 = 1;

/// A packet's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Payload.
    Data,
    /// The sender has sent its last packet (`seq_nr` is its last).
    Fin,
    /// An acknowledgement, no payload.
    State,
    /// Tear the connection down.
    Reset,
    /// Open a connection.
    Syn,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Data => 0,
            Kind::Fin => 1,
            Kind::State => 2,
            Kind::Reset => 3,
            Kind::Syn => 4,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            0 => Kind::Data,
            1 => Kind::Fin,
            2 => Kind::State,
            3 => Kind::Reset,
            4 => Kind::Syn,
            _ => return None,
        })
    }
}

/// A packet's header, its selective ACK included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub connection_id: u16,
    /// The sender's clock when it sent the packet, in microseconds (wraps).
    pub timestamp_us: u32,
    /// The sender's last measured one-way delay of ours (its clock minus our timestamp).
    pub timestamp_diff_us: u32,
    /// Bytes the sender can still receive.
    pub wnd_size: u32,
    pub seq_nr: u16,
    pub ack_nr: u16,
    /// The selective-ACK bitmask (extension 1), if any.
    pub sack: Option<Vec<u8>>,
}

/// A decoded packet: its header and its payload (borrowed from the datagram).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub header: Header,
    pub payload: &'a [u8],
}

/// Why a datagram is not a uTP packet we accept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("{0} bytes: shorter than a uTP header")]
    Short(usize),
    #[error("{0} bytes: larger than any uTP packet we accept")]
    TooLarge(usize),
    #[error("uTP version {0}, not 1")]
    Version(u8),
    #[error("unknown uTP packet type {0}")]
    Type(u8),
    #[error("the extension chain runs past the packet")]
    Truncated,
    #[error("more than {MAX_EXTENSIONS} extensions")]
    TooManyExtensions,
    #[error("a selective ACK of {0} bytes (1 to {MAX_SACK_BYTES})")]
    Sack(usize),
}

impl Header {
    /// Whether selective-ACK bit `i` is set: packet `ack_nr + 2 + i` arrived.
    pub fn sacked(&self, i: usize) -> bool {
        self.sack.as_ref().is_some_and(|m| m.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0))
    }
}

/// Whether a datagram is KRPC (the DHT's: a bencoded dictionary starts with `d`) rather than
/// uTP, whose first byte has our version, 1, in its low half (`d` has 4): how a socket shared
/// with the DHT tells them apart, as libtorrent does.
pub fn is_krpc(datagram: &[u8]) -> bool {
    datagram.first() == Some(&b'd')
}

impl<'a> Packet<'a> {
    /// Parses one datagram.
    pub fn decode(datagram: &'a [u8]) -> Result<Packet<'a>, PacketError> {
        if datagram.len() > MAX_PACKET {
            return Err(PacketError::TooLarge(datagram.len()));
        }
        if datagram.len() < HEADER_LEN {
            return Err(PacketError::Short(datagram.len()));
        }
        let b = datagram;
        if b[0] & 0x0f != VERSION {
            return Err(PacketError::Version(b[0] & 0x0f));
        }
        let kind = Kind::from_code(b[0] >> 4).ok_or(PacketError::Type(b[0] >> 4))?;
        let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut header = Header {
            kind,
            connection_id: u16_at(2),
            timestamp_us: u32_at(4),
            timestamp_diff_us: u32_at(8),
            wnd_size: u32_at(12),
            seq_nr: u16_at(16),
            ack_nr: u16_at(18),
            sack: None,
        };
        let mut next = b[1];
        let mut at = HEADER_LEN;
        let mut seen = 0;
        while next != 0 {
            seen += 1;
            if seen > MAX_EXTENSIONS {
                return Err(PacketError::TooManyExtensions);
            }
            let (Some(&following), Some(&len)) = (b.get(at), b.get(at + 1)) else {
                return Err(PacketError::Truncated);
            };
            let len = usize::from(len);
            let body = b.get(at + 2..at + 2 + len).ok_or(PacketError::Truncated)?;
            if next == EXT_SACK {
                if !(1..=MAX_SACK_BYTES).contains(&len) {
                    return Err(PacketError::Sack(len));
                }
                header.sack = Some(body.to_vec());
            }
            next = following;
            at += 2 + len;
        }
        Ok(Packet { header, payload: &b[at..] })
    }

    /// The datagram's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let h = &self.header;
        let sack_len = h.sack.as_ref().map_or(0, |m| 2 + m.len());
        let mut out = Vec::with_capacity(HEADER_LEN + sack_len + self.payload.len());
        out.push(h.kind.code() << 4 | VERSION);
        out.push(if h.sack.is_some() { EXT_SACK } else { 0 });
        out.extend_from_slice(&h.connection_id.to_be_bytes());
        out.extend_from_slice(&h.timestamp_us.to_be_bytes());
        out.extend_from_slice(&h.timestamp_diff_us.to_be_bytes());
        out.extend_from_slice(&h.wnd_size.to_be_bytes());
        out.extend_from_slice(&h.seq_nr.to_be_bytes());
        out.extend_from_slice(&h.ack_nr.to_be_bytes());
        if let Some(mask) = &h.sack {
            out.push(0);
            out.push(mask.len() as u8);
            out.extend_from_slice(mask);
        }
        out.extend_from_slice(self.payload);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: Kind) -> Header {
        Header {
            kind,
            connection_id: 0x1234,
            timestamp_us: 0xdead_beef,
            timestamp_diff_us: 77,
            wnd_size: 1 << 20,
            seq_nr: 65535,
            ack_nr: 9,
            sack: None,
        }
    }

    #[test]
    fn packets_roundtrip_and_read_libtorrent_bytes() {
        for kind in [Kind::Data, Kind::Fin, Kind::State, Kind::Reset, Kind::Syn] {
            let p = Packet { header: header(kind), payload: b"hello" };
            assert_eq!(Packet::decode(&p.encode()), Ok(p.clone()));
            assert!(!is_krpc(&p.encode()));
        }
        let mut sacked = header(Kind::State);
        sacked.sack = Some(vec![0b0000_0101, 0, 0, 0x80]);
        let p = Packet { header: sacked, payload: b"" };
        let bytes = p.encode();
        let back = Packet::decode(&bytes).unwrap();
        assert_eq!(back, p);
        // Bit i acknowledges ack_nr + 2 + i.
        assert!(back.header.sacked(0) && !back.header.sacked(1) && back.header.sacked(2));
        assert!(back.header.sacked(31) && !back.header.sacked(32));
        // The SYN libtorrent 2.0.8 sent when told to connect over uTP (captured on loopback):
        // type 4, version 1, no extension, window 0, a random connection id and seq_nr.
        let syn = [
            0x41, 0x00, 0xa2, 0xf9, 0xf4, 0xfc, 0x1c, 0xea, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x8b, 0xd4, 0x00, 0x00,
        ];
        let p = Packet::decode(&syn).unwrap();
        assert_eq!(p.header.kind, Kind::Syn);
        assert_eq!((p.header.connection_id, p.header.seq_nr, p.header.ack_nr), (0xa2f9, 0x8bd4, 0));
        assert_eq!((p.header.timestamp_us, p.header.wnd_size), (0xf4fc_1cea, 0));
        assert!(p.payload.is_empty());
        assert_eq!(p.encode(), syn, "our encoding of it is its bytes");
        // A KRPC datagram is not uTP.
        assert!(is_krpc(b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe"));
    }

    #[test]
    fn hostile_datagrams_are_refused_with_a_reason() {
        let good = Packet { header: header(Kind::Data), payload: b"x" }.encode();
        assert_eq!(Packet::decode(&good[..19]), Err(PacketError::Short(19)));
        let mut v = good.clone();
        v[0] = 0x02;
        assert_eq!(Packet::decode(&v), Err(PacketError::Version(2)));
        v[0] = 0x51;
        assert_eq!(Packet::decode(&v), Err(PacketError::Type(5)));
        // An extension chain that runs past the end.
        let mut v = good[..20].to_vec();
        v[1] = 9;
        v.extend_from_slice(&[0, 200, 1, 2]);
        assert_eq!(Packet::decode(&v), Err(PacketError::Truncated));
        // A chain that loops through many small extensions.
        let mut v = good[..20].to_vec();
        v[1] = 9;
        for _ in 0..20 {
            v.extend_from_slice(&[9, 0]);
        }
        assert_eq!(Packet::decode(&v), Err(PacketError::TooManyExtensions));
        // An empty selective ACK is refused; any other length is read (libtorrent sends 9 or
        // 10 bytes, and 88 after a burst of 700 packets lost its first).
        let mut v = good[..20].to_vec();
        v[1] = 1;
        v.extend_from_slice(&[0, 0]);
        assert_eq!(Packet::decode(&v), Err(PacketError::Sack(0)));
        let mut v = good[..20].to_vec();
        v[1] = 1;
        v.extend_from_slice(&[0, 9, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x80]);
        let p = Packet::decode(&v).unwrap();
        assert!(p.header.sacked(0) && p.header.sacked(71) && !p.header.sacked(72));
        for len in [65u8, 88, 255] {
            let mut v = good[..20].to_vec();
            v[1] = 1;
            v.extend_from_slice(&[0, len]);
            v.extend(std::iter::repeat_n(0, usize::from(len) - 1));
            v.push(0x80);
            let p = Packet::decode(&v).unwrap_or_else(|e| panic!("a {len}-byte SACK: {e}"));
            let last = usize::from(len) * 8 - 1;
            assert!(p.header.sacked(last) && !p.header.sacked(last - 1) && !p.header.sacked(0));
        }
        // An unknown extension is skipped.
        let mut v = good[..20].to_vec();
        v[1] = 2;
        v.extend_from_slice(&[0, 8, 1, 2, 3, 4, 5, 6, 7, 8, b'z']);
        assert_eq!(Packet::decode(&v).unwrap().payload, b"z");
        assert!(matches!(
            Packet::decode(&vec![0x01; MAX_PACKET + 1]),
            Err(PacketError::TooLarge(_))
        ));
    }
}
