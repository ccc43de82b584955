//! Fuzzes the streaming servers' and player's small parsers of outside bytes: the HTTP `Range`
//! header (`stream::origin::parse_range`, used by the origin and the edge), the request-path
//! rule (`stream::request_path::RequestPath::parse`, applied by the origin, the edge and the
//! router), bandwidth trace files (`stream::player::parse_trace`, read by `swarmcast play
//! --trace`) and a server's `Content-Range` (`http_layer::parse_content_range`, checked by the
//! player and the local node when the CDN fills in what peers missed).
//!
//! Properties checked: a partial range always lies inside the file (`start <= end < len`); an
//! accepted path has only plain segments (none empty, `.`, `..`) and is canonical (its encoded
//! form, as the edge forwards it, parses back to it); a parsed trace is non-empty with finite,
//! positive durations; a content range is non-empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stream::origin::{parse_range, RangeRequest};
use stream::player::parse_trace;
use stream::request_path::RequestPath;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The first 8 bytes (when there are enough) pick a file length; the rest is the header.
    let len = data.iter().take(8).fold(0u64, |acc, &b| (acc << 8) | u64::from(b)) % (1 << 40);
    if let RangeRequest::Partial { start, end } = parse_range(text, len) {
        assert!(start <= end && end < len, "{text:?} on {len} bytes gave {start}..={end}");
    }
    if let Ok(path) = RequestPath::parse(text) {
        assert!(path
            .segments()
            .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains('\\')));
        assert_eq!(RequestPath::parse(&path.to_uri_path()).as_ref(), Ok(&path), "{text:?}");
    }
    if let Some((r, total)) = http_layer::parse_content_range(text) {
        assert!(r.start < r.end && total.is_none_or(|t| r.end <= t), "{text:?} gave {r:?}");
    }
    if let Ok(trace) = parse_trace(text) {
        assert!(!trace.points().is_empty());
        for p in trace.points() {
            assert!(p.duration_s.is_finite() && p.duration_s > 0.0, "{p:?}");
        }
    }
});
