//! Fuzzes the extension protocol payloads: `ExtHandshake::decode` (BEP 10),
//! `MetadataMsg::decode` (BEP 9 `ut_metadata`) and `PexMsg::decode` (BEP 11 `ut_pex`).
//!
//! Property checked on success: encoding the decoded value and decoding again gives it back.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use torrent::proto::ext::{ExtHandshake, MetadataMsg, PexMsg, MAX_PEX_PEERS};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = ExtHandshake::decode(data) {
        assert_eq!(ExtHandshake::decode(&h.encode()), Ok(h));
    }
    let payload = Bytes::copy_from_slice(data);
    if let Ok(m) = MetadataMsg::decode(&payload) {
        assert_eq!(MetadataMsg::decode(&Bytes::from(m.encode())), Ok(m));
    }
    if let Ok(p) = PexMsg::decode(data) {
        assert!(p.added.len() <= 2 * MAX_PEX_PEERS && p.dropped.len() <= 2 * MAX_PEX_PEERS);
        // Re-encoding groups the families (IPv4 first); the peers themselves survive.
        let again = PexMsg::decode(&p.encode()).unwrap();
        assert_eq!(again.added.len(), p.added.len());
        assert_eq!(again.dropped.len(), p.dropped.len());
    }
});
