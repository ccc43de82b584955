//! Fuzzes the streaming servers' and player's small parsers of outside bytes: the HTTP `Range`
//! header (`stream::origin::parse_range`, used by the origin and the edge) and bandwidth trace
//! files (`stream::player::parse_trace`, read by `swarmcast play --trace`).
//!
//! Properties checked: a partial range always lies inside the file (`start <= end < len`); a
//! parsed trace is non-empty with finite, positive durations.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stream::origin::{parse_range, RangeRequest};
use stream::player::parse_trace;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The first 8 bytes (when there are enough) pick a file length; the rest is the header.
    let len = data.iter().take(8).fold(0u64, |acc, &b| (acc << 8) | u64::from(b)) % (1 << 40);
    if let RangeRequest::Partial { start, end } = parse_range(text, len) {
        assert!(start <= end && end < len, "{text:?} on {len} bytes gave {start}..={end}");
    }
    if let Ok(trace) = parse_trace(text) {
        assert!(!trace.points().is_empty());
        for p in trace.points() {
            assert!(p.duration_s.is_finite() && p.duration_s > 0.0, "{p:?}");
        }
    }
});
