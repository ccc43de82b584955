//! Fuzzes the HTTP tracker client's body parsers, `tracker::http::parse_announce_response` and
//! `parse_scrape_response` (BEP 48).
//!
//! Property checked on success: the interval is at least one second (as documented), and no
//! peer has port 0; a scrape's entries are no more than the body could hold (each needs a
//! 20-byte key and its numbers).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use torrent::tracker::http::{parse_announce_response, parse_scrape_response};

fuzz_target!(|data: &[u8]| {
    if let Ok(files) = parse_scrape_response(data) {
        assert!(files.len() * 40 <= data.len(), "{files:?}");
    }
    if let Ok(resp) = parse_announce_response(data) {
        assert!(resp.interval >= Duration::from_secs(1), "{resp:?}");
        assert!(resp.peers.iter().all(|p| p.port() != 0), "{resp:?}");
    }
});
