//! Fuzzes the overlay's frame decoder (`overlay::wire::decode` of a `Wire<Peer>`, what every
//! QUIC frame from a peer goes through), the chat envelope check (`chat::envelope::open`) and
//! the catch-up frame decoder.
//!
//! Property checked on success: a decoded frame re-encodes to a frame that decodes to the same
//! value (no information is invented or lost by the codec).
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay::chat::envelope::{self, Sync};
use overlay::driver::Peer;
use overlay::proto::node::Wire;
use overlay::wire;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = wire::decode::<Wire<Peer>>(data) {
        let again = wire::encode(&msg).expect("a decoded frame re-encodes within the cap");
        assert_eq!(wire::decode::<Wire<Peer>>(&again).ok(), Some(msg));
    }
    let _ = envelope::open(envelope::directory_topic(), data);
    let _ = postcard::from_bytes::<Sync>(data);
});
