//! The headless DASH player (`swarmcast play`): the HTTP/1.1 fetcher that drives the sans-IO
//! core ([`PlayerCore`](crate::proto::player::PlayerCore), which keeps the buffer and asks the
//! ABR rule) on the wall clock.
//!
//! **Clock.** Every time the player reports is *player time*: wall time × `speed`. With
//! `--speed N` playback drains the buffer N× faster, waits shrink N×, a bandwidth trace runs
//! N× faster (its bytes flow at N× its rate), and a download that took `d` wall seconds counts
//! as `N·d` seconds for the ABR rule and the report. Downloads are real HTTP transfers. At
//! `speed = 1` player time is wall time. The wire's own per-request latency is scaled too:
//! at high speeds a millisecond of loopback round trip counts N ms, so measured throughput
//! reads low (2 Mbps trace, 300 kB segments, debug build: 1.8 Mbps measured at 1×, 1.2 at 20×).
//!
//! **Model** (the core's, [`crate::proto::player`]; [`crate::eval`] drives it too, in virtual
//! time): segments download one after another in playback order; playback starts when the
//! first segment is in (the startup delay); an empty buffer after startup is a stall that ends
//! when the next segment arrives; the buffer holds at most
//! [`PlayerConfig::buffer_cap_s`](crate::proto::player::PlayerConfig::buffer_cap_s) seconds
//! (60): before a request that would overflow it, the player waits. Every
//! [`PlayerConfig::check_interval_s`](crate::proto::player::PlayerConfig::check_interval_s) of
//! a download the rule may abandon it; the segment is then fetched again at the lower
//! representation.
//!
//! **Audio.** When the first period has an audio adaptation set, its lowest representation is
//! fetched alongside: audio segment `i` right after video segment `i`, on the same clock; a
//! segment counts as buffered when both are in. The ABR sees video downloads only.
//!
//! **Replicas.** The MPD-level `BaseURL`s (in order) are replicas of the presentation; with
//! none, the MPD's own directory is the only one. On a connection error, a timeout or a 5xx the
//! player moves to the next replica (round robin) and retries the same segment, and stays on
//! the replica that worked. A 4xx is an error (the content is missing, not the server).
//!
//! **Traces** ([`parse_trace`]): text lines `SECONDS BPS` (hold `BPS` bits per second for
//! `SECONDS` seconds; `#` comments and blank lines ignored; the trace loops), or JSON: either
//! the `{"points": [{"duration_s": .., "bps": ..}, ..]}` object [`Trace`] serializes to, or a
//! bare array of such points. [`TracePacer`](crate::proto::trace::TracePacer) throttles the
//! fetcher's reads to it: a link with the trace's rate that banks at most 10 ms (wall) of idle
//! capacity (a token bucket that small absorbs timer granularity without letting a burst
//! through).
//!
//! Layout: the sans-IO parts live in [`crate::proto`]:
//! [`PlayerCore`](crate::proto::player::PlayerCore) (`handle_*`, `poll_next`, getters; no clock
//! reads, no I/O) and [`TracePacer`](crate::proto::trace::TracePacer). Here are the I/O parts,
//! dependencies pointing one way (`mod.rs` → `fetch.rs` → `client.rs` → `error.rs`):
//! - `fetch.rs`: [`play`], the fetcher: the plan of URLs from the MPD, replicas and failover,
//!   the wall clock, the pacer's sleeps;
//! - `client.rs`: its HTTP client, a thin wrapper over the shared [`http_layer::HttpClient`]
//!   (`http://` and `https://`, one kept-alive connection per host; dropping a response
//!   half-read closes its connection, which is how a download is abandoned);
//! - `error.rs`: [`PlayError`] and the limits it names;
//! - this file: [`parse_trace`], the trace file reader.

mod client;
mod error;
mod fetch;

use serde::Deserialize;

use crate::proto::trace::{Family, Trace, TraceError, TracePoint, MAX_TRACE_POINTS};

pub use error::{PlayError, MAX_SEGMENT_BYTES, MAX_SPEED};
pub use fetch::{
    fetch_manifest, play, play_with, PeerPart, Peers, PeersFuture, PlayEvent, PlayOptions,
    DEFAULT_PEER_WAIT_S,
};

/// Largest trace file accepted, bytes.
pub const MAX_TRACE_BYTES: usize = 16 << 20;

#[derive(Deserialize)]
struct JsonPoint {
    duration_s: f64,
    bps: f64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JsonTrace {
    Object { points: Vec<JsonPoint> },
    Points(Vec<JsonPoint>),
}

/// Reads a bandwidth trace (formats in the module header).
pub fn parse_trace(text: &str) -> Result<Trace, PlayError> {
    if text.len() > MAX_TRACE_BYTES {
        return Err(PlayError::Trace(format!(
            "{} bytes, more than the {MAX_TRACE_BYTES}-byte limit",
            text.len()
        )));
    }
    let trimmed = text.trim_start();
    let points: Vec<TracePoint> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let parsed: JsonTrace = serde_json::from_str(trimmed).map_err(|e| {
            PlayError::Trace(format!(
                "not trace JSON ({{\"points\": [{{\"duration_s\", \"bps\"}}]}}): {e}"
            ))
        })?;
        let points = match parsed {
            JsonTrace::Object { points } | JsonTrace::Points(points) => points,
        };
        points.into_iter().map(|p| TracePoint { duration_s: p.duration_s, bps: p.bps }).collect()
    } else {
        let mut points = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if points.len() >= MAX_TRACE_POINTS {
                return Err(TraceError::BadLength(points.len() + 1).into());
            }
            let mut words = line.split_whitespace();
            let parse = |w: Option<&str>| w.and_then(|w| w.parse::<f64>().ok());
            match (parse(words.next()), parse(words.next()), words.next()) {
                (Some(duration_s), Some(bps), None) => points.push(TracePoint { duration_s, bps }),
                _ => {
                    return Err(PlayError::Trace(format!(
                        "line {} is not `SECONDS BPS`: {line:?}",
                        i + 1
                    )))
                }
            }
        }
        points
    };
    Ok(Trace::new(Family::Steps, 0, points)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_parse_from_text_and_json() {
        let t = parse_trace("# a comment\n2 100000\n\n1.5 2e6 # fast\n").unwrap();
        assert_eq!(
            t.points(),
            &[
                TracePoint { duration_s: 2.0, bps: 100_000.0 },
                TracePoint { duration_s: 1.5, bps: 2e6 }
            ]
        );
        let generated = Trace::generate(Family::Walk, 0, 1);
        let json = serde_json::to_string(&generated).unwrap();
        let back = parse_trace(&json).unwrap();
        // serde_json may round the last bit of a float.
        assert_eq!(back.points().len(), generated.points().len());
        for (a, b) in back.points().iter().zip(generated.points()) {
            assert_eq!(a.duration_s, b.duration_s);
            assert!((a.bps - b.bps).abs() <= b.bps * 1e-12);
        }
        let bare = parse_trace(r#"[{"duration_s": 1, "bps": 5}]"#).unwrap();
        assert_eq!(bare.points(), &[TracePoint { duration_s: 1.0, bps: 5.0 }]);
        assert!(parse_trace("1 2 3").unwrap_err().to_string().contains("line 1"));
        assert!(parse_trace("1 -5").is_err());
        assert!(parse_trace("").is_err());
    }
}
