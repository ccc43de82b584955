//! Fuzzes the extension protocol payloads: `ExtHandshake::decode` (BEP 10) and
//! `MetadataMsg::decode` (BEP 9 `ut_metadata`).
//!
//! Property checked on success: encoding the decoded value and decoding again gives it back.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use torrent::proto::ext::{ExtHandshake, MetadataMsg};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = ExtHandshake::decode(data) {
        assert_eq!(ExtHandshake::decode(&h.encode()), Ok(h));
    }
    let payload = Bytes::copy_from_slice(data);
    if let Ok(m) = MetadataMsg::decode(&payload) {
        assert_eq!(MetadataMsg::decode(&Bytes::from(m.encode())), Ok(m));
    }
});
