//! Fuzzes the HTTP tracker client's body parser, `tracker::http::parse_announce_response`.
//!
//! Property checked on success: the interval is at least one second (as documented), and no
//! peer has port 0.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use torrent::tracker::http::parse_announce_response;

fuzz_target!(|data: &[u8]| {
    if let Ok(resp) = parse_announce_response(data) {
        assert!(resp.interval >= Duration::from_secs(1), "{resp:?}");
        assert!(resp.peers.iter().all(|p| p.port() != 0), "{resp:?}");
    }
});
