//! Fuzzes the uTP packet codec: `utp::Packet::decode` on any datagram.
//!
//! Properties checked on success: a selective ACK is 1 to `MAX_SACK_BYTES` bytes, and encoding the packet and decoding it again gives it back (our encoding drops
//! extensions we skip, so the round trip is on the decoded packet, not the bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use utp::packet::{Packet, MAX_SACK_BYTES};

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Packet::decode(data) else { return };
    if let Some(m) = &p.header.sack {
        assert!((1..=MAX_SACK_BYTES).contains(&m.len()));
    }
    let again = p.encode();
    assert_eq!(Packet::decode(&again), Ok(p));
});
