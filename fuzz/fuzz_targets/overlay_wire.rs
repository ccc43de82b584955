//! Fuzzes the overlay's frame decoder (`overlay::wire::decode` of a `Wire<Peer>`, what every
//! QUIC frame from a peer goes through), the chat envelope check (`chat::envelope::open`) and
//! the catch-up frame decoder, and a search record as the DHT's keyword index carries it
//! (`wire::from_canonical::<Record>`, then `Record::check`).
//!
//! Property checked on success: whatever is accepted is canonical, `encode(decode(x)) == x`
//! (so no byte can be added or re-written to give an accepted message a second encoding, and
//! with it a second id), and never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay::chat::envelope::{self, Signed, Sync};
use overlay::driver::Peer;
use overlay::proto::node::Wire;
use overlay::proto::search::Record;
use overlay::wire;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = wire::decode::<Wire<Peer>>(data) {
        let again = wire::encode(&msg).expect("a decoded frame re-encodes within the cap");
        assert_eq!(again, data, "accepted a non-canonical frame");
    }
    if let Ok(v) = envelope::open(envelope::directory_topic(), data) {
        let signed: Signed = postcard::from_bytes(data).expect("open decoded it");
        assert_eq!(postcard::to_allocvec(&signed).expect("encodes"), data);
        assert_eq!(postcard::to_allocvec(&v.content).expect("encodes"), signed.content);
    }
    if let Ok(sync) = wire::from_canonical::<Sync>(data) {
        assert_eq!(postcard::to_allocvec(&sync).expect("encodes"), data);
    }
    if let Ok(record) = wire::from_canonical::<Record>(data) {
        assert_eq!(postcard::to_allocvec(&record).expect("encodes"), data);
        let _ = record.check(1_800_000_000);
    }
});
