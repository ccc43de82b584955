//! Fuzzes the tracker server's HTTP query parsers, `tracker::server::parse_announce_query`
//! and `parse_scrape_query` (BEP 48).
//!
//! Scrape: at least one and at most `MAX_HTTP_SCRAPE` info-hashes, sorted without repeats.
//! Announce, property checked on success: the client's `announce_url`, given the same request, produces a
//! query that parses to the same announce (with `compact=1` and `numwant` as the client always
//! sends them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use torrent::tracker::http::announce_url;
use torrent::tracker::server::{
    parse_announce_query, parse_scrape_query, AnnounceQuery, MAX_HTTP_SCRAPE,
};
use torrent::tracker::AnnounceRequest;

fuzz_target!(|data: &[u8]| {
    if let Ok(hashes) = parse_scrape_query(data) {
        assert!(!hashes.is_empty() && hashes.len() <= MAX_HTTP_SCRAPE);
        assert!(hashes.windows(2).all(|w| w[0].0 < w[1].0));
    }
    let Ok(q) = parse_announce_query(data) else {
        return;
    };
    assert_ne!(q.port, 0);
    let req = AnnounceRequest {
        info_hash: q.info_hash,
        peer_id: q.peer_id,
        port: q.port,
        uploaded: q.uploaded,
        downloaded: q.downloaded,
        left: q.left.unwrap_or(0),
        event: q.event,
        num_want: q.num_want.unwrap_or(50),
    };
    let url = announce_url("http://tracker.example/announce", &req);
    let (_, query) = url
        .split_once('?')
        .expect("announce_url always adds a query");
    let expected = AnnounceQuery {
        left: Some(req.left),
        num_want: Some(req.num_want),
        compact: true,
        no_peer_id: false,
        ..q
    };
    assert_eq!(
        parse_announce_query(query.as_bytes()),
        Ok(expected),
        "{url}"
    );
});
