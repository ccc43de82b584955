//! Fuzzes the DHT's KRPC codec: `dht::Message::decode` on any datagram.
//!
//! Properties checked on success: encoding the decoded message and decoding it again gives it
//! back (when the re-encoding fits a datagram: an error text of invalid UTF-8 grows when its
//! bytes are replaced), and no field is over its cap.
#![no_main]

use dht::proto::krpc::{Body, Message, MAX_PACKET, MAX_TID, MAX_VALUE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Message::decode(data) else { return };
    assert!(m.tid.len() <= MAX_TID);
    if let Body::Response(r) = &m.body {
        assert!(r.value.as_ref().is_none_or(|v| v.encode().len() <= MAX_VALUE));
    }
    let again = m.encode();
    if again.len() <= MAX_PACKET {
        assert_eq!(Message::decode(&again), Ok(m));
    }
});
