//! Fuzzes the peer wire codec: a byte stream from a peer, its handshake, and BITFIELD payloads.
//!
//! - The whole input is a message stream: `wire::decode` with the default cap is called until it
//!   needs more bytes or refuses; every decoded message must re-encode to exactly the bytes it
//!   was decoded from.
//! - The first 68 bytes go to `Handshake::decode`; a decoded handshake re-encodes to them.
//! - `Bitfield::from_wire` gets the bytes after the first 4 with a piece count read from the
//!   first 4 (big-endian), and every BITFIELD message of the stream with 8 pieces per byte.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use torrent::proto::wire::{self, Handshake, Message, DEFAULT_MAX_MESSAGE, HANDSHAKE_LEN};
use torrent::Bitfield;

fn check_bitfield(payload: &[u8], len: u32) {
    if let Ok(bf) = Bitfield::from_wire(payload, len) {
        assert_eq!(bf.as_bytes(), payload);
        assert_eq!(bf.len(), len);
        let set: Vec<u32> = bf.iter_set().collect();
        assert_eq!(set.len() as u32, bf.count());
        assert!(set.iter().all(|&i| i < len && bf.has(i)));
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(raw) = data.first_chunk::<HANDSHAKE_LEN>() {
        if let Ok(h) = Handshake::decode(raw) {
            assert_eq!(&h.encode(), raw);
        }
    }

    if let Some((len, payload)) = data.split_first_chunk::<4>() {
        check_bitfield(payload, u32::from_be_bytes(*len));
    }

    let mut buf = BytesMut::from(data);
    let mut offset = 0;
    while let Ok(Some(msg)) = wire::decode(&mut buf, DEFAULT_MAX_MESSAGE) {
        let consumed = data.len() - offset - buf.len();
        let mut out = BytesMut::new();
        msg.encode(&mut out);
        assert_eq!(
            &out[..],
            &data[offset..offset + consumed],
            "{msg:?} re-encodes differently"
        );
        offset += consumed;
        if let Message::Bitfield(payload) = &msg {
            // With no spare bits any payload is a valid bitfield of 8 pieces per byte.
            if let Ok(len) = u32::try_from(payload.len() * 8) {
                assert!(Bitfield::from_wire(payload, len).is_ok());
                check_bitfield(payload, len);
            }
        }
    }
});
