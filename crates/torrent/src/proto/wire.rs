//! The peer wire codec (BEP 3), with the fast extension's messages (BEP 6) and the extension
//! protocol's envelope (BEP 10). A pure codec: bytes in, [`Message`]s out, and back.
//!
//! Framing: every message after the 68-byte handshake is a 4-byte big-endian length followed by
//! that many bytes (an id byte and a payload); length 0 is a keep-alive. [`decode`] refuses a
//! length above the caller's cap *before* buffering the payload, so a peer cannot make us
//! allocate more than the cap.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::metainfo::InfoHash;
use crate::PeerId;

/// The protocol string of the handshake.
pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";
/// Bytes of a PIECE message before its data: length prefix, id, piece index, offset.
pub const PIECE_HEADER_LEN: usize = 13;
/// Length of a handshake on the wire.
pub const HANDSHAKE_LEN: usize = 68;
/// Default cap on one message's length (id + payload): a 16 KiB block with its header fits many
/// times over, as does the BITFIELD of a torrent with two million pieces.
pub const DEFAULT_MAX_MESSAGE: u32 = 1 << 18;

/// Why a peer's bytes were refused. Any of these ends the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("handshake does not start with the BitTorrent protocol string")]
    BadProtocol,
    #[error("message of {0} bytes is over the {1}-byte cap")]
    TooLong(u32, u32),
    #[error("message id {id} has a payload of {len} bytes, which is not valid for it")]
    BadLength { id: u8, len: usize },
    #[error("unknown message id {0}")]
    UnknownId(u8),
}

/// The 68-byte handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub reserved: [u8; 8],
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
}

impl Handshake {
    /// Our handshake: advertises the extension protocol (BEP 10) and the fast extension (BEP 6).
    pub fn new(info_hash: InfoHash, peer_id: PeerId) -> Self {
        let mut reserved = [0u8; 8];
        reserved[5] |= 0x10;
        reserved[7] |= 0x04;
        Handshake { reserved, info_hash, peer_id }
    }

    /// True when the peer speaks the extension protocol (BEP 10).
    pub fn supports_extensions(&self) -> bool {
        self.reserved[5] & 0x10 != 0
    }

    /// True when the peer speaks the fast extension (BEP 6).
    pub fn supports_fast(&self) -> bool {
        self.reserved[7] & 0x04 != 0
    }

    /// The wire bytes.
    pub fn encode(&self) -> [u8; HANDSHAKE_LEN] {
        let mut out = [0u8; HANDSHAKE_LEN];
        out[0] = 19;
        out[1..20].copy_from_slice(PROTOCOL);
        out[20..28].copy_from_slice(&self.reserved);
        out[28..48].copy_from_slice(&self.info_hash.0);
        out[48..68].copy_from_slice(&self.peer_id.0);
        out
    }

    /// Parses a handshake.
    pub fn decode(b: &[u8; HANDSHAKE_LEN]) -> Result<Self, WireError> {
        if b[0] != 19 || &b[1..20] != PROTOCOL {
            return Err(WireError::BadProtocol);
        }
        let mut reserved = [0u8; 8];
        reserved.copy_from_slice(&b[20..28]);
        let mut ih = [0u8; 20];
        ih.copy_from_slice(&b[28..48]);
        let mut pid = [0u8; 20];
        pid.copy_from_slice(&b[48..68]);
        Ok(Handshake { reserved, info_hash: InfoHash(ih), peer_id: PeerId(pid) })
    }
}

/// One peer wire message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(u32),
    /// Raw BITFIELD payload; checked against the piece count by [`crate::Bitfield::from_wire`].
    Bitfield(Bytes),
    Request {
        piece: u32,
        offset: u32,
        length: u32,
    },
    Piece {
        piece: u32,
        offset: u32,
        data: Bytes,
    },
    Cancel {
        piece: u32,
        offset: u32,
        length: u32,
    },
    /// DHT port (BEP 5).
    Port(u16),
    // BEP 6
    SuggestPiece(u32),
    HaveAll,
    HaveNone,
    RejectRequest {
        piece: u32,
        offset: u32,
        length: u32,
    },
    AllowedFast(u32),
    /// BEP 10: extended message `id` (0 = extension handshake) with its raw payload.
    Extended {
        id: u8,
        payload: Bytes,
    },
}

mod id {
    pub const CHOKE: u8 = 0;
    pub const UNCHOKE: u8 = 1;
    pub const INTERESTED: u8 = 2;
    pub const NOT_INTERESTED: u8 = 3;
    pub const HAVE: u8 = 4;
    pub const BITFIELD: u8 = 5;
    pub const REQUEST: u8 = 6;
    pub const PIECE: u8 = 7;
    pub const CANCEL: u8 = 8;
    pub const PORT: u8 = 9;
    pub const SUGGEST: u8 = 13;
    pub const HAVE_ALL: u8 = 14;
    pub const HAVE_NONE: u8 = 15;
    pub const REJECT: u8 = 16;
    pub const ALLOWED_FAST: u8 = 17;
    pub const EXTENDED: u8 = 20;
}

/// Takes one complete message off the front of `buf`, if there is one. `Ok(None)` means more
/// bytes are needed; an error means the peer must be disconnected. A length over `max_len` is
/// refused as soon as its 4 length bytes have arrived.
pub fn decode(buf: &mut BytesMut, max_len: u32) -> Result<Option<Message>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len > max_len {
        return Err(WireError::TooLong(len, max_len));
    }
    if buf.len() < 4 + len as usize {
        buf.reserve(4 + len as usize - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    if len == 0 {
        return Ok(Some(Message::KeepAlive));
    }
    let mut body = buf.split_to(len as usize);
    let msg_id = body.get_u8();
    let n = body.len();
    let bad = || WireError::BadLength { id: msg_id, len: n };
    let fixed = |want: usize| if n == want { Ok(()) } else { Err(bad()) };
    let msg = match msg_id {
        id::CHOKE => fixed(0).map(|_| Message::Choke)?,
        id::UNCHOKE => fixed(0).map(|_| Message::Unchoke)?,
        id::INTERESTED => fixed(0).map(|_| Message::Interested)?,
        id::NOT_INTERESTED => fixed(0).map(|_| Message::NotInterested)?,
        id::HAVE_ALL => fixed(0).map(|_| Message::HaveAll)?,
        id::HAVE_NONE => fixed(0).map(|_| Message::HaveNone)?,
        id::HAVE => {
            fixed(4)?;
            Message::Have(body.get_u32())
        }
        id::SUGGEST => {
            fixed(4)?;
            Message::SuggestPiece(body.get_u32())
        }
        id::ALLOWED_FAST => {
            fixed(4)?;
            Message::AllowedFast(body.get_u32())
        }
        id::PORT => {
            fixed(2)?;
            Message::Port(body.get_u16())
        }
        id::BITFIELD => Message::Bitfield(body.freeze()),
        id::REQUEST | id::CANCEL | id::REJECT => {
            fixed(12)?;
            let (piece, offset, length) = (body.get_u32(), body.get_u32(), body.get_u32());
            match msg_id {
                id::REQUEST => Message::Request { piece, offset, length },
                id::CANCEL => Message::Cancel { piece, offset, length },
                _ => Message::RejectRequest { piece, offset, length },
            }
        }
        id::PIECE => {
            if n < 8 {
                return Err(bad());
            }
            let (piece, offset) = (body.get_u32(), body.get_u32());
            Message::Piece { piece, offset, data: body.freeze() }
        }
        id::EXTENDED => {
            if n < 1 {
                return Err(bad());
            }
            let ext = body.get_u8();
            Message::Extended { id: ext, payload: body.freeze() }
        }
        other => return Err(WireError::UnknownId(other)),
    };
    Ok(Some(msg))
}

impl Message {
    /// Appends the framed message to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let header = |out: &mut BytesMut, msg_id: u8, payload: usize| {
            out.put_u32(1 + payload as u32);
            out.put_u8(msg_id);
        };
        match self {
            Message::KeepAlive => out.put_u32(0),
            Message::Choke => header(out, id::CHOKE, 0),
            Message::Unchoke => header(out, id::UNCHOKE, 0),
            Message::Interested => header(out, id::INTERESTED, 0),
            Message::NotInterested => header(out, id::NOT_INTERESTED, 0),
            Message::HaveAll => header(out, id::HAVE_ALL, 0),
            Message::HaveNone => header(out, id::HAVE_NONE, 0),
            Message::Have(p) => {
                header(out, id::HAVE, 4);
                out.put_u32(*p);
            }
            Message::SuggestPiece(p) => {
                header(out, id::SUGGEST, 4);
                out.put_u32(*p);
            }
            Message::AllowedFast(p) => {
                header(out, id::ALLOWED_FAST, 4);
                out.put_u32(*p);
            }
            Message::Port(p) => {
                header(out, id::PORT, 2);
                out.put_u16(*p);
            }
            Message::Bitfield(b) => {
                header(out, id::BITFIELD, b.len());
                out.put_slice(b);
            }
            Message::Request { piece, offset, length }
            | Message::Cancel { piece, offset, length }
            | Message::RejectRequest { piece, offset, length } => {
                let msg_id = match self {
                    Message::Request { .. } => id::REQUEST,
                    Message::Cancel { .. } => id::CANCEL,
                    _ => id::REJECT,
                };
                header(out, msg_id, 12);
                out.put_u32(*piece);
                out.put_u32(*offset);
                out.put_u32(*length);
            }
            Message::Piece { piece, offset, data } => {
                header(out, id::PIECE, 8 + data.len());
                out.put_u32(*piece);
                out.put_u32(*offset);
                out.put_slice(data);
            }
            Message::Extended { id: ext, payload } => {
                header(out, id::EXTENDED, 1 + payload.len());
                out.put_u8(*ext);
                out.put_slice(payload);
            }
        }
    }

    /// The framed header of a PIECE message carrying `len` bytes, so a driver can write the
    /// block's data straight from its buffer without copying it into the frame.
    pub fn piece_header(piece: u32, offset: u32, len: usize) -> [u8; PIECE_HEADER_LEN] {
        let mut h = [0u8; PIECE_HEADER_LEN];
        h[..4].copy_from_slice(&(9 + len as u32).to_be_bytes());
        h[4] = id::PIECE;
        h[5..9].copy_from_slice(&piece.to_be_bytes());
        h[9..13].copy_from_slice(&offset.to_be_bytes());
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: Message) {
        let mut buf = BytesMut::new();
        m.encode(&mut buf);
        let got = decode(&mut buf, DEFAULT_MAX_MESSAGE).unwrap().unwrap();
        assert_eq!(got, m);
        assert!(buf.is_empty());
    }

    #[test]
    fn every_message_round_trips() {
        for m in [
            Message::KeepAlive,
            Message::Choke,
            Message::Unchoke,
            Message::Interested,
            Message::NotInterested,
            Message::Have(7),
            Message::Bitfield(Bytes::from_static(&[0xff, 0x80])),
            Message::Request { piece: 1, offset: 16384, length: 16384 },
            Message::Piece { piece: 2, offset: 0, data: Bytes::from_static(b"hello") },
            Message::Cancel { piece: 1, offset: 0, length: 5 },
            Message::Port(6881),
            Message::SuggestPiece(3),
            Message::HaveAll,
            Message::HaveNone,
            Message::RejectRequest { piece: 9, offset: 0, length: 16384 },
            Message::AllowedFast(4),
            Message::Extended { id: 0, payload: Bytes::from_static(b"d1:md11:ut_metadatai1eee") },
        ] {
            round_trip(m);
        }
    }

    #[test]
    fn partial_input_waits_and_split_messages_decode_in_order() {
        let mut all = BytesMut::new();
        Message::Have(1).encode(&mut all);
        Message::Unchoke.encode(&mut all);
        let mut buf = BytesMut::new();
        let mut got = vec![];
        for b in all.iter() {
            buf.put_u8(*b);
            while let Some(m) = decode(&mut buf, DEFAULT_MAX_MESSAGE).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![Message::Have(1), Message::Unchoke]);
    }

    #[test]
    fn hostile_input_is_refused() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(decode(&mut buf, 1024), Err(WireError::TooLong(u32::MAX, 1024)));
        let mut buf = BytesMut::from(&[0, 0, 0, 3, id::HAVE, 0, 0][..]);
        assert_eq!(decode(&mut buf, 1024), Err(WireError::BadLength { id: 4, len: 2 }));
        let mut buf = BytesMut::from(&[0, 0, 0, 1, 99][..]);
        assert_eq!(decode(&mut buf, 1024), Err(WireError::UnknownId(99)));
        let mut buf = BytesMut::from(&[0, 0, 0, 5, id::PIECE, 0, 0, 0, 0][..]);
        assert!(decode(&mut buf, 1024).is_err(), "piece without offset");
    }

    #[test]
    fn handshake_round_trip_and_bits() {
        let h = Handshake::new(InfoHash([7; 20]), PeerId([b'x'; 20]));
        let wire = h.encode();
        let back = Handshake::decode(&wire).unwrap();
        assert_eq!(back, h);
        assert!(back.supports_extensions() && back.supports_fast());
        let mut bad = wire;
        bad[3] = b'X';
        assert_eq!(Handshake::decode(&bad), Err(WireError::BadProtocol));
    }

    #[test]
    fn piece_header_matches_encoder() {
        let data = Bytes::from_static(b"abcdef");
        let mut buf = BytesMut::new();
        Message::Piece { piece: 5, offset: 32, data: data.clone() }.encode(&mut buf);
        assert_eq!(&buf[..13], &Message::piece_header(5, 32, data.len()));
    }
}
