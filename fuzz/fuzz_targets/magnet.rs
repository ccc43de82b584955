//! Fuzzes `Magnet::parse` on the input read as (lossy) UTF-8.
//!
//! Property checked on success: the canonical URI from `to_uri` parses back to an equal value
//! (when it still fits `MAX_MAGNET_LEN`; percent-encoding can make it longer than the input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use torrent::magnet::{Magnet, MAX_MAGNET_LEN};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(m) = Magnet::parse(&text) {
        let uri = m.to_uri();
        if uri.len() <= MAX_MAGNET_LEN {
            assert_eq!(
                Magnet::parse(&uri),
                Ok(m),
                "canonical URI {uri:?} does not read back"
            );
        }
    }
});
