//! The headless DASH player (`swarmcast play`): a sans-IO core that keeps the buffer and asks
//! the ABR rule, and an HTTP/1.1 fetcher that drives it.
//!
//! **Clock.** Every time the player reports is *player time*: wall time × `speed`. With
//! `--speed N` playback drains the buffer N× faster, waits shrink N×, a bandwidth trace runs
//! N× faster (its bytes flow at N× its rate), and a download that took `d` wall seconds counts
//! as `N·d` seconds for the ABR rule and the report. Downloads are real HTTP transfers. At
//! `speed = 1` player time is wall time. The wire's own per-request latency is scaled too:
//! at high speeds a millisecond of loopback round trip counts N ms, so measured throughput
//! reads low (2 Mbps trace, 300 kB segments, debug build: 1.8 Mbps measured at 1×, 1.2 at 20×).
//!
//! **Model** (the one [`crate::eval`] also drives, in virtual time): segments download one after
//! another in playback order; playback starts when the first segment is in (the startup
//! delay); an empty buffer after startup is a stall that ends when the next segment arrives;
//! the buffer holds at most [`PlayerConfig::buffer_cap_s`] seconds (60): before a request that
//! would overflow it, the player waits. Every [`PlayerConfig::check_interval_s`] of a download
//! the rule may abandon it; the segment is then fetched again at the lower representation.
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
//! bare array of such points. [`TracePacer`] throttles the fetcher's reads to it: a link with
//! the trace's rate that banks at most 10 ms (wall) of idle capacity (a token bucket that
//! small absorbs timer granularity without letting a burst through).
//!
//! Layout: [`PlayerCore`] (sans-IO: `handle_*`, `poll_next`, getters; no clock reads, no I/O),
//! [`TracePacer`] (sans-IO), then the fetcher: [`play`] with its HTTP client, a thin wrapper
//! over the shared [`http_layer::HttpClient`] (`http://` and `https://`, one kept-alive
//! connection per host; dropping a response half-read closes its connection, which is how a
//! download is abandoned).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use http_layer::{ClientConfig, ClientError, Fetched};
use hyper::{header, StatusCode};
use serde::{Deserialize, Serialize};

use crate::eval::{qoe, Family, Trace, TraceError, TracePoint};
use crate::mpd::{resolve_url, Mpd, MpdError, MAX_MPD_BYTES};
use crate::proto::abr::{
    Abr, Ladder, LadderError, PlayerState, Progress, RuleKind, ThroughputSample,
};

/// Largest media or initialization segment accepted, bytes.
pub const MAX_SEGMENT_BYTES: u64 = 256 << 20;
/// Largest trace file accepted, bytes.
pub const MAX_TRACE_BYTES: usize = 16 << 20;
/// Most redirects followed when fetching the MPD.
const MAX_REDIRECTS: usize = 5;
/// Wall time to open a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Wall time to wait for a response's head, or for the next bytes of its body.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest wait for a segment's response or next bytes before trying the next replica.
const MIN_PATIENCE: Duration = Duration::from_secs(2);
/// Rounds over all replicas before a segment is given up.
const MAX_ROUNDS: usize = 3;
/// Wall pause between two rounds over all replicas.
const ROUND_PAUSE: Duration = Duration::from_millis(500);
/// Wall seconds of idle link the trace pacer banks: enough to absorb timer granularity
/// (a sleep wakes up to a millisecond late), too little to matter to the ABR.
const PACER_BURST_WALL_S: f64 = 0.01;
/// A pacer wait shorter than this (wall) is not slept: it is owed and slept with the next.
const MIN_SLEEP: Duration = Duration::from_millis(2);
/// Longest one whole transfer may take, wall time (each wait is bounded by the patience).
const DOWNLOAD_LIMIT: Duration = Duration::from_secs(3600);
/// Largest speed-up accepted.
pub const MAX_SPEED: f64 = 1000.0;

/// Why playback could not start or finish, in terms of what to fix.
#[derive(Debug, thiserror::Error)]
pub enum PlayError {
    /// A URL that this player cannot fetch.
    #[error("cannot fetch {url}: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A transfer failed (connection, timeout, broken body).
    #[error("{url}: {reason}")]
    Http {
        /// The URL.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("{url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The manifest was refused.
    #[error("the manifest at {url} is refused: {source}")]
    Mpd {
        /// Where it came from.
        url: String,
        /// Why.
        source: MpdError,
    },
    /// The manifest has nothing this player can play.
    #[error("the manifest at {url} cannot be played: {reason}")]
    Unplayable {
        /// Where it came from.
        url: String,
        /// Why.
        reason: String,
    },
    /// The representations do not make a ladder.
    #[error("the video representations do not make a bitrate ladder: {0}")]
    Ladder(#[from] LadderError),
    /// A segment failed on every replica, [`MAX_ROUNDS`] times over.
    #[error("segment {segment} failed on every replica ({tried} tries); last error: {last}")]
    AllReplicasFailed {
        /// The segment index.
        segment: usize,
        /// Requests made.
        tried: usize,
        /// The last failure.
        last: String,
    },
    /// A segment larger than [`MAX_SEGMENT_BYTES`].
    #[error("{url} is {bytes} bytes or more, over the {MAX_SEGMENT_BYTES}-byte segment limit")]
    SegmentTooLarge {
        /// The URL.
        url: String,
        /// Its announced or received size.
        bytes: u64,
    },
    /// A bandwidth trace that cannot be used.
    #[error("bad bandwidth trace: {0}")]
    Trace(String),
    /// A speed that is not in (0, [`MAX_SPEED`]].
    #[error("speed {0} must be a number in (0, {MAX_SPEED}]")]
    BadSpeed(f64),
}

impl From<TraceError> for PlayError {
    fn from(e: TraceError) -> Self {
        PlayError::Trace(e.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// The sans-IO core.
// ---------------------------------------------------------------------------------------------

/// Parameters of the player model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PlayerConfig {
    /// Most seconds of media the buffer holds.
    pub buffer_cap_s: f64,
    /// Player seconds between two abandonment checks of a download in flight.
    pub check_interval_s: f64,
    /// Player time per wall time (`--speed`).
    pub speed: f64,
}

impl Default for PlayerConfig {
    fn default() -> Self {
        PlayerConfig { buffer_cap_s: 60.0, check_interval_s: 0.25, speed: 1.0 }
    }
}

/// What the fetcher should do next ([`PlayerCore::poll_next`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    /// Fetch `segment` at representation `rep` (ladder index).
    Fetch {
        /// Segment index.
        segment: usize,
        /// Representation index.
        rep: usize,
    },
    /// The buffer is too full to request: wait until this instant, then poll again.
    WaitUntil(Instant),
    /// Every segment is in.
    Done,
}

/// One segment as the player fetched it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlayedSegment {
    /// Segment index (0-based, playback order).
    pub index: usize,
    /// Representation played (ladder index, lowest first).
    pub rep: usize,
    /// Its id in the MPD (filled in by the fetcher).
    pub rep_id: String,
    /// Its declared bitrate, bits per second.
    pub bitrate_bps: u64,
    /// Video bytes of the segment at that representation.
    pub bytes: u64,
    /// Audio bytes fetched with it.
    pub audio_bytes: u64,
    /// Player seconds from the first request for this segment to its last byte (abandoned
    /// tries, failovers and audio included).
    pub download_s: f64,
    /// Buffer right after it arrived, seconds.
    pub buffer_s: f64,
    /// The replica (base URL) it came from.
    pub base_url: String,
    /// Whether a download at a higher representation was abandoned first.
    pub abandoned: bool,
    /// Replica changes while fetching it.
    pub failovers: u32,
}

/// The outcome of a session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlayReport {
    /// The manifest's URL (after redirects).
    pub url: String,
    /// The ABR rule.
    pub abr: String,
    /// Player time per wall time.
    pub speed: f64,
    /// Declared bitrates of the ladder, lowest first.
    pub ladder_bps: Vec<u64>,
    /// Representation ids, in ladder order.
    pub ladder_ids: Vec<String>,
    /// The audio representation fetched alongside, if any.
    pub audio: Option<String>,
    /// Player seconds from the first request until the first segment was in.
    pub startup_s: f64,
    /// Stall events after startup.
    pub stalls: u32,
    /// Player seconds stalled after startup.
    pub stall_s: f64,
    /// Representation changes between consecutive segments.
    pub switches: u32,
    /// Pensieve's linear QoE ([`crate::eval::qoe`]) over the declared bitrates.
    pub qoe: f64,
    /// Mean declared bitrate, kbps.
    pub mean_bitrate_kbps: f64,
    /// Downloads abandoned and fetched again lower.
    pub abandons: u32,
    /// Replica changes (failovers) in the whole session.
    pub failovers: u32,
    /// Bytes received in total (media, init segments, abandoned tries; not the MPD).
    pub bytes_total: u64,
    /// Player seconds from the first request until the last segment was in.
    pub duration_s: f64,
    /// Every segment, in order.
    pub segments: Vec<PlayedSegment>,
}

/// The segment being fetched.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    segment: usize,
    rep: usize,
    /// Player time of the first request for this segment.
    first_request_s: f64,
    /// Player time the current request went out.
    attempt_s: f64,
    /// Player time of the next abandonment check.
    next_check_s: f64,
    abandoned: bool,
    failovers: u32,
}

/// The player without I/O: buffer accounting, stall detection, when to request and at which
/// representation. It reads no clock: every entry point takes `now`.
///
/// Calling order, per segment:
/// 1. [`poll_next`](Self::poll_next): `Fetch`, `WaitUntil` (sleep, then poll again) or `Done`;
/// 2. [`handle_request_sent`](Self::handle_request_sent) when the media request goes out
///    (again after a failover or an abandonment);
/// 3. while the body arrives, [`handle_progress`](Self::handle_progress); on `Some(lower)`
///    cancel and fetch the segment at `lower` (back to 2);
/// 4. on a failed request [`handle_failover`](Self::handle_failover) (then back to 2);
/// 5. [`handle_video_done`](Self::handle_video_done) at the video's last byte, then
///    [`handle_segment_done`](Self::handle_segment_done) once audio is in too.
///
/// At the end, [`report`](Self::report).
pub struct PlayerCore {
    abr: Box<dyn Abr + Send>,
    ladder: Ladder,
    /// Media seconds of every video segment.
    segment_s: Vec<f64>,
    cfg: PlayerConfig,
    /// The instant player time 0 maps to.
    start: Instant,
    clock_s: f64,
    buffer_s: f64,
    playing: bool,
    stalled: bool,
    stalls: u32,
    stall_s: f64,
    startup_s: f64,
    next: usize,
    in_flight: Option<InFlight>,
    last_rep: Option<usize>,
    records: Vec<PlayedSegment>,
    abandons: u32,
    failovers: u32,
}

impl PlayerCore {
    /// A player of `segment_s.len()` segments (their media durations, seconds) over `ladder`,
    /// with player time 0 at `now`.
    pub fn new(
        abr: Box<dyn Abr + Send>,
        ladder: Ladder,
        segment_s: Vec<f64>,
        cfg: PlayerConfig,
        now: Instant,
    ) -> Self {
        PlayerCore {
            abr,
            ladder,
            segment_s,
            cfg,
            start: now,
            clock_s: 0.0,
            buffer_s: 0.0,
            playing: false,
            stalled: false,
            stalls: 0,
            stall_s: 0.0,
            startup_s: 0.0,
            next: 0,
            in_flight: None,
            last_rep: None,
            records: Vec::new(),
            abandons: 0,
            failovers: 0,
        }
    }

    // --- getters ---

    /// The ladder.
    pub fn ladder(&self) -> &Ladder {
        &self.ladder
    }

    /// Number of segments.
    pub fn segments_total(&self) -> usize {
        self.segment_s.len()
    }

    /// Player seconds at `now` (wall time since the start × speed).
    pub fn player_time(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.start).as_secs_f64() * self.cfg.speed
    }

    /// The instant at which player time reaches `player_s`.
    pub fn instant_at(&self, player_s: f64) -> Instant {
        // Clamped to a year of wall time so the Duration cannot overflow.
        let wall = (player_s / self.cfg.speed).clamp(0.0, 3.15e7);
        self.start + Duration::from_secs_f64(wall)
    }

    /// Seconds of media in the buffer (as of the last `handle_*`/`poll_next`).
    pub fn buffer_s(&self) -> f64 {
        self.buffer_s
    }

    /// Stall events so far.
    pub fn stalls(&self) -> u32 {
        self.stalls
    }

    /// Seconds stalled so far.
    pub fn stall_s(&self) -> f64 {
        self.stall_s
    }

    /// The segments played so far.
    pub fn played(&self) -> &[PlayedSegment] {
        &self.records
    }

    /// The representation of the download in flight.
    pub fn in_flight_rep(&self) -> Option<usize> {
        self.in_flight.map(|f| f.rep)
    }

    /// Player time of the next abandonment check of the download in flight: progress reported
    /// before it is not looked at. A virtual-time driver (`crate::eval`) reports at this time.
    pub fn next_check_s(&self) -> Option<f64> {
        self.in_flight.map(|f| f.next_check_s)
    }

    // --- handle_* and poll ---

    /// Lets time pass up to `now`: playback drains the buffer; an empty buffer after startup
    /// is a stall.
    pub fn handle_time(&mut self, now: Instant) {
        let t = self.player_time(now);
        let dt = t - self.clock_s;
        if dt <= 0.0 {
            return;
        }
        self.clock_s = t;
        if self.playing {
            let played = dt.min(self.buffer_s);
            self.buffer_s -= played;
            let starved = dt - played;
            if starved > 1e-9 {
                if !self.stalled {
                    self.stalled = true;
                    self.stalls += 1;
                }
                self.stall_s += starved;
            }
        }
    }

    /// What to do next. A `Fetch` stays in flight (and is returned again) until
    /// [`handle_segment_done`](Self::handle_segment_done).
    pub fn poll_next(&mut self, now: Instant) -> Next {
        self.handle_time(now);
        if let Some(f) = self.in_flight {
            return Next::Fetch { segment: f.segment, rep: f.rep };
        }
        let Some(&seg_s) = self.segment_s.get(self.next) else {
            return Next::Done;
        };
        let overflow = self.buffer_s + seg_s - self.cfg.buffer_cap_s;
        if overflow > 1e-9 {
            return Next::WaitUntil(self.instant_at(self.clock_s + overflow));
        }
        let state = PlayerState {
            segment: self.next,
            segments_total: Some(self.segment_s.len()),
            buffer_s: self.buffer_s,
            last: self.last_rep,
        };
        let rep = self.abr.choose(&self.ladder, &state).min(self.ladder.top());
        self.in_flight = Some(InFlight {
            segment: self.next,
            rep,
            first_request_s: self.clock_s,
            attempt_s: self.clock_s,
            next_check_s: self.clock_s + self.cfg.check_interval_s,
            abandoned: false,
            failovers: 0,
        });
        Next::Fetch { segment: self.next, rep }
    }

    /// The media request for the segment in flight went out at `now`.
    pub fn handle_request_sent(&mut self, now: Instant) {
        self.handle_time(now);
        let (clock, interval) = (self.clock_s, self.cfg.check_interval_s);
        if let Some(f) = &mut self.in_flight {
            f.attempt_s = clock;
            f.next_check_s = clock + interval;
        }
    }

    /// The media download in flight has `bytes_received` of `bytes_total` at `now`. Returns
    /// `Some(lower)` when the rule abandons it: the tried bytes go to the rule as a sample and
    /// the segment is now in flight at `lower`.
    pub fn handle_progress(
        &mut self,
        now: Instant,
        bytes_received: u64,
        bytes_total: u64,
    ) -> Option<usize> {
        self.handle_time(now);
        let clock = self.clock_s;
        let f = self.in_flight.as_mut()?;
        if clock < f.next_check_s {
            return None;
        }
        f.next_check_s = clock + self.cfg.check_interval_s;
        let progress = Progress {
            segment: f.segment,
            rep: f.rep,
            bytes_received,
            bytes_total,
            elapsed_s: clock - f.attempt_s,
            buffer_s: self.buffer_s,
        };
        let lower = self.abr.abandon(&self.ladder, &progress).filter(|&r| r < f.rep)?;
        self.abr
            .record(ThroughputSample { bytes: bytes_received, duration_s: clock - f.attempt_s });
        f.rep = lower;
        f.abandoned = true;
        f.attempt_s = clock;
        self.abandons += 1;
        Some(lower)
    }

    /// A request for the segment in flight failed; the fetcher moves to another replica.
    pub fn handle_failover(&mut self, now: Instant) {
        self.handle_time(now);
        self.failovers += 1;
        if let Some(f) = &mut self.in_flight {
            f.failovers += 1;
        }
    }

    /// The video of the segment in flight is in (`bytes` of it): a throughput sample.
    pub fn handle_video_done(&mut self, now: Instant, bytes: u64) {
        self.handle_time(now);
        if let Some(f) = &self.in_flight {
            let duration_s = self.clock_s - f.attempt_s;
            self.abr.record(ThroughputSample { bytes, duration_s });
        }
    }

    /// The segment in flight is complete (video `bytes`, `audio_bytes`, from `base_url`): it
    /// enters the buffer; the first one starts playback. Returns its record.
    pub fn handle_segment_done(
        &mut self,
        now: Instant,
        bytes: u64,
        audio_bytes: u64,
        base_url: &str,
    ) -> Option<&PlayedSegment> {
        self.handle_time(now);
        let f = self.in_flight.take()?;
        self.buffer_s += self.segment_s.get(f.segment).copied().unwrap_or(0.0);
        self.stalled = false;
        if !self.playing {
            self.playing = true;
            self.startup_s = self.clock_s;
        }
        self.records.push(PlayedSegment {
            index: f.segment,
            rep: f.rep,
            rep_id: String::new(),
            bitrate_bps: self.ladder.bitrate_bps(f.rep),
            bytes,
            audio_bytes,
            download_s: self.clock_s - f.first_request_s,
            buffer_s: self.buffer_s,
            base_url: base_url.to_string(),
            abandoned: f.abandoned,
            failovers: f.failovers,
        });
        self.last_rep = Some(f.rep);
        self.next = f.segment + 1;
        self.records.last()
    }

    /// The session so far (the fetcher fills in `url`, ids, audio and byte totals).
    pub fn report(&self) -> PlayReport {
        let bitrates: Vec<u64> = self.records.iter().map(|r| r.bitrate_bps).collect();
        let switches = self.records.windows(2).filter(|w| w[0].rep != w[1].rep).count() as u32;
        let n = bitrates.len().max(1) as f64;
        PlayReport {
            url: String::new(),
            abr: self.abr.name().to_string(),
            speed: self.cfg.speed,
            ladder_bps: self.ladder.bitrates_bps().to_vec(),
            ladder_ids: Vec::new(),
            audio: None,
            startup_s: self.startup_s,
            stalls: self.stalls,
            stall_s: self.stall_s,
            switches,
            qoe: qoe(&bitrates, self.stall_s),
            mean_bitrate_kbps: bitrates.iter().sum::<u64>() as f64 / n / 1000.0,
            abandons: self.abandons,
            failovers: self.failovers,
            bytes_total: 0,
            duration_s: self.clock_s,
            segments: self.records.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Traces and the pacer.
// ---------------------------------------------------------------------------------------------

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
            if points.len() >= crate::eval::MAX_TRACE_POINTS {
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

/// Throttles reads to a bandwidth trace: a link of the trace's rate (in player time; the
/// trace loops) that banks at most `burst_s` of idle capacity (a token bucket of that depth).
/// Sans-IO: it says when bytes may be taken.
#[derive(Debug, Clone)]
pub struct TracePacer {
    points: Vec<TracePoint>,
    /// Player time at which each point starts, within one period.
    starts: Vec<f64>,
    period_s: f64,
    /// Player time until which the link is busy with bytes already taken.
    busy_until_s: f64,
    /// Idle player seconds the link may bank (the bucket's depth, as time at the trace rate).
    burst_s: f64,
}

impl TracePacer {
    /// A pacer over `trace`, which starts at player time 0, banking at most `burst_s` player
    /// seconds of idle link (0: none; a little absorbs the reader's timer granularity).
    pub fn new(trace: &Trace, burst_s: f64) -> Self {
        let points = trace.points().to_vec();
        let mut starts = Vec::with_capacity(points.len());
        let mut t = 0.0;
        for p in &points {
            starts.push(t);
            t += p.duration_s;
        }
        TracePacer { points, starts, period_s: t, busy_until_s: 0.0, burst_s: burst_s.max(0.0) }
    }

    /// Takes `bytes` that arrived at player time `now_s`; returns the player time at which
    /// the link would have delivered them (the reader waits until then).
    pub fn take(&mut self, now_s: f64, bytes: u64) -> f64 {
        let mut t = self.busy_until_s.max(now_s - self.burst_s);
        let mut bits = bytes as f64 * 8.0;
        while bits > 0.0 {
            let in_period = t.rem_euclid(self.period_s);
            let i = self.starts.partition_point(|&s| s <= in_period).saturating_sub(1);
            let p = self.points[i];
            let left_s = (self.starts[i] + p.duration_s - in_period).max(1e-9);
            let can = p.bps * left_s;
            if bits <= can {
                t += bits / p.bps;
                bits = 0.0;
            } else {
                bits -= can;
                t += left_s;
            }
        }
        self.busy_until_s = t;
        t
    }
}

// ---------------------------------------------------------------------------------------------
// The fetcher.
// ---------------------------------------------------------------------------------------------

/// How to play.
#[derive(Debug, Clone)]
pub struct PlayOptions {
    /// The MPD's URL (`http://` only).
    pub url: String,
    /// The ABR rule.
    pub rule: RuleKind,
    /// Model parameters (speed included).
    pub config: PlayerConfig,
    /// Throttle reads to this trace.
    pub trace: Option<Trace>,
}

/// What the fetcher tells its observer as playback goes.
#[derive(Debug, Clone, PartialEq)]
pub enum PlayEvent {
    /// The manifest was read.
    Manifest {
        /// Segments to play.
        segments: usize,
        /// Declared video bitrates.
        ladder_bps: Vec<u64>,
        /// The audio representation fetched alongside (`None`: the MPD has no audio).
        audio: Option<String>,
        /// Replicas, in order.
        base_urls: Vec<String>,
    },
    /// A segment is in.
    Segment {
        /// Its record.
        segment: PlayedSegment,
        /// Segments in total.
        total: usize,
        /// Stall events so far.
        stalls: u32,
    },
    /// A request failed; the next replica is tried.
    Failover {
        /// Segment index.
        segment: usize,
        /// The replica that failed.
        from: String,
        /// The replica tried next.
        to: String,
        /// What failed.
        error: String,
    },
    /// A download was abandoned for a lower representation.
    Abandon {
        /// Segment index.
        segment: usize,
        /// Representation abandoned.
        from_rep: usize,
        /// Representation fetched instead.
        to_rep: usize,
    },
}

/// Plays the presentation at `opts.url` to the end; `observe` sees every [`PlayEvent`].
pub async fn play<F>(opts: &PlayOptions, mut observe: F) -> Result<PlayReport, PlayError>
where
    F: FnMut(&PlayEvent) + Send,
{
    let speed = opts.config.speed;
    if !(speed.is_finite() && speed > 0.0 && speed <= MAX_SPEED) {
        return Err(PlayError::BadSpeed(speed));
    }
    let mut client =
        HttpClient::new().map_err(|reason| PlayError::Http { url: opts.url.clone(), reason })?;
    let (mpd_url, mpd) = client.fetch_mpd(&opts.url).await?;
    let plan = Plan::new(&mpd, &mpd_url)?;
    observe(&PlayEvent::Manifest {
        segments: plan.video_urls[0].len(),
        ladder_bps: plan.ladder.bitrates_bps().to_vec(),
        audio: plan.audio.as_ref().map(|a| a.id.clone()),
        base_urls: plan.bases.clone(),
    });
    let now = Instant::now();
    let mut fetcher = Fetcher {
        core: PlayerCore::new(
            opts.rule.build(),
            plan.ladder.clone(),
            plan.segment_s.clone(),
            opts.config,
            now,
        ),
        client,
        pacer: opts.trace.as_ref().map(|t| TracePacer::new(t, PACER_BURST_WALL_S * speed)),
        plan,
        base: 0,
        inits: BTreeSet::new(),
        bytes_total: 0,
    };
    let total = fetcher.core.segments_total();
    loop {
        match fetcher.core.poll_next(Instant::now()) {
            Next::Done => break,
            Next::WaitUntil(at) => tokio::time::sleep_until(at.into()).await,
            Next::Fetch { segment, rep } => {
                let (bytes, base) = fetcher.fetch_video(segment, rep, &mut observe).await?;
                fetcher.core.handle_video_done(Instant::now(), bytes);
                let audio_bytes = fetcher.fetch_audio(segment, &mut observe).await?;
                let rep_id = fetcher
                    .core
                    .in_flight_rep()
                    .map(|r| fetcher.plan.ids[r].clone())
                    .unwrap_or_default();
                let stalls = fetcher.core.stalls();
                if let Some(record) =
                    fetcher.core.handle_segment_done(Instant::now(), bytes, audio_bytes, &base)
                {
                    let mut segment = record.clone();
                    segment.rep_id = rep_id;
                    observe(&PlayEvent::Segment { segment, total, stalls });
                }
            }
        }
    }
    let mut report = fetcher.core.report();
    for s in &mut report.segments {
        s.rep_id = fetcher.plan.ids[s.rep].clone();
    }
    report.url = mpd_url;
    report.ladder_ids = fetcher.plan.ids.clone();
    report.audio = fetcher.plan.audio.as_ref().map(|a| a.id.clone());
    report.bytes_total = fetcher.bytes_total;
    Ok(report)
}

/// A track's URLs relative to the MPD-level base.
struct Track {
    id: String,
    init: Option<String>,
    media: Vec<String>,
}

/// What the manifest says to fetch.
struct Plan {
    ladder: Ladder,
    /// Representation ids in ladder order.
    ids: Vec<String>,
    /// `video_urls[rep][segment]`, relative to a base.
    video_urls: Vec<Vec<String>>,
    video_inits: Vec<Option<String>>,
    segment_s: Vec<f64>,
    audio: Option<Track>,
    /// Absolute replica base URLs, in order.
    bases: Vec<String>,
}

impl Plan {
    fn new(mpd: &Mpd, mpd_url: &str) -> Result<Plan, PlayError> {
        let unplayable =
            |reason: String| PlayError::Unplayable { url: mpd_url.to_string(), reason };
        let mpd_err = |source| PlayError::Mpd { url: mpd_url.to_string(), source };
        let period = mpd.periods.first().ok_or_else(|| unplayable("it has no Period".into()))?;
        let is = |set: &crate::mpd::AdaptationSet, kind: &str| {
            set.content_type.as_deref() == Some(kind)
                || set.mime_type.as_deref().is_some_and(|m| m.starts_with(kind))
                || set
                    .representations
                    .first()
                    .and_then(|r| r.mime_type.as_deref())
                    .is_some_and(|m| m.starts_with(kind))
        };
        let video = period
            .adaptation_sets
            .iter()
            .find(|s| is(s, "video"))
            .or_else(|| period.adaptation_sets.iter().find(|s| !is(s, "audio")))
            .ok_or_else(|| unplayable("its first Period has no video adaptation set".into()))?;
        let mut reps: Vec<_> = video.representations.iter().collect();
        reps.sort_by_key(|r| r.bandwidth);
        reps.dedup_by_key(|r| r.bandwidth);
        let mut ids = Vec::new();
        let mut video_urls = Vec::new();
        let mut video_inits = Vec::new();
        let mut segment_s: Vec<f64> = Vec::new();
        for r in &reps {
            let list = mpd.segments(&r.id).map_err(mpd_err)?;
            if segment_s.is_empty() || list.media.len() < segment_s.len() {
                segment_s = list.media.iter().map(|s| s.duration_s).collect();
            }
            ids.push(r.id.clone());
            video_inits.push(list.init);
            video_urls.push(list.media.into_iter().map(|s| s.url).collect::<Vec<_>>());
        }
        if segment_s.is_empty() {
            return Err(unplayable("the video has no media segments".into()));
        }
        let n = segment_s.len();
        for urls in &mut video_urls {
            urls.truncate(n);
        }
        let ladder =
            Ladder::new(reps.iter().map(|r| r.bandwidth).collect(), segment_s[0].max(1e-3))?;
        let audio = match period.adaptation_sets.iter().find(|s| is(s, "audio")) {
            Some(set) => match set.representations.iter().min_by_key(|r| r.bandwidth) {
                Some(r) => {
                    let list = mpd.segments(&r.id).map_err(mpd_err)?;
                    Some(Track {
                        id: r.id.clone(),
                        init: list.init,
                        media: list.media.into_iter().map(|s| s.url).collect(),
                    })
                }
                None => None,
            },
            None => None,
        };
        let bases = if mpd.base_urls.is_empty() {
            // The MPD's directory: segment URLs resolve against it as against the MPD's URL.
            let path = mpd_url.split(['?', '#']).next().unwrap_or(mpd_url);
            let dir = match path.rfind('/') {
                Some(i) if !path[..i].ends_with('/') && !path.ends_with("//") => &path[..=i],
                _ => path,
            };
            vec![dir.to_string()]
        } else {
            mpd.base_urls.iter().map(|b| resolve_url(mpd_url, b)).collect()
        };
        Ok(Plan { ladder, ids, video_urls, video_inits, segment_s, audio, bases })
    }
}

/// Why one request failed.
enum Failure {
    /// Worth another replica: connection error, timeout, 5xx.
    Retry(String),
    /// Not: a 4xx, a refused size.
    Fatal(PlayError),
}

/// How one media download ended.
enum Download {
    Done(u64),
    Abandoned { lower: usize },
}

struct Fetcher {
    core: PlayerCore,
    client: HttpClient,
    pacer: Option<TracePacer>,
    plan: Plan,
    /// Index of the replica in use.
    base: usize,
    /// Init segments already fetched, by URL relative to the base.
    inits: BTreeSet<String>,
    bytes_total: u64,
}

impl Fetcher {
    /// Fetches the video of `segment` (starting at `rep`; abandonment may lower it), moving
    /// through the replicas on failures. Returns its bytes and the base URL used.
    async fn fetch_video<F: FnMut(&PlayEvent)>(
        &mut self,
        segment: usize,
        mut rep: usize,
        observe: &mut F,
    ) -> Result<(u64, String), PlayError> {
        let mut tries = 0;
        loop {
            let base = self.plan.bases[self.base].clone();
            let result = match self.plan.video_inits[rep].clone() {
                Some(init) => self.fetch_init(&base, &init).await,
                None => Ok(()),
            };
            let result = match result {
                Ok(()) => {
                    let url = resolve_url(&base, &self.plan.video_urls[rep][segment]);
                    self.download(&url, true).await
                }
                Err(f) => Err(f),
            };
            match result {
                Ok(Download::Done(bytes)) => return Ok((bytes, base)),
                Ok(Download::Abandoned { lower }) => {
                    observe(&PlayEvent::Abandon { segment, from_rep: rep, to_rep: lower });
                    rep = lower;
                }
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(error)) => {
                    tries += 1;
                    self.fail_over(segment, tries, error, observe).await?;
                }
            }
        }
    }

    /// Fetches audio segment `segment` if there is one; returns its bytes.
    async fn fetch_audio<F: FnMut(&PlayEvent)>(
        &mut self,
        segment: usize,
        observe: &mut F,
    ) -> Result<u64, PlayError> {
        let Some(track) = &self.plan.audio else { return Ok(0) };
        let Some(media) = track.media.get(segment).cloned() else { return Ok(0) };
        let init = track.init.clone();
        let mut tries = 0;
        loop {
            let base = self.plan.bases[self.base].clone();
            let result = match &init {
                Some(init) => self.fetch_init(&base, init).await,
                None => Ok(()),
            };
            let result = match result {
                Ok(()) => self.download(&resolve_url(&base, &media), false).await,
                Err(f) => Err(f),
            };
            match result {
                Ok(Download::Done(bytes)) => return Ok(bytes),
                // `download(_, false)` never asks the core about abandonment.
                Ok(Download::Abandoned { .. }) => unreachable!("audio downloads are not checked"),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(error)) => {
                    tries += 1;
                    self.fail_over(segment, tries, error, observe).await?;
                }
            }
        }
    }

    /// Moves to the next replica after a failed request (pausing after each full round).
    async fn fail_over<F: FnMut(&PlayEvent)>(
        &mut self,
        segment: usize,
        tries: usize,
        error: String,
        observe: &mut F,
    ) -> Result<(), PlayError> {
        let n = self.plan.bases.len();
        if tries >= n * MAX_ROUNDS {
            return Err(PlayError::AllReplicasFailed { segment, tried: tries, last: error });
        }
        let from = self.plan.bases[self.base].clone();
        self.base = (self.base + 1) % n;
        self.core.handle_failover(Instant::now());
        observe(&PlayEvent::Failover {
            segment,
            from,
            to: self.plan.bases[self.base].clone(),
            error,
        });
        if tries % n == 0 {
            tokio::time::sleep(ROUND_PAUSE).await;
        }
        Ok(())
    }

    /// Fetches an init segment once per replica-relative URL (it is the same on every replica).
    async fn fetch_init(&mut self, base: &str, init: &str) -> Result<(), Failure> {
        if self.inits.contains(init) {
            return Ok(());
        }
        match self.download(&resolve_url(base, init), false).await? {
            Download::Done(_) => {
                self.inits.insert(init.to_string());
                Ok(())
            }
            // `download(_, false)` never asks the core about abandonment.
            Download::Abandoned { .. } => unreachable!("init downloads are not checked"),
        }
    }

    /// One GET, its body read through the pacer; `media` downloads are the segment in flight
    /// (the core hears of the request and may abandon it).
    async fn download(&mut self, url: &str, media: bool) -> Result<Download, Failure> {
        if media {
            self.core.handle_request_sent(Instant::now());
        }
        // A replica that stops answering (frozen, not refusing) must not cost more than about
        // half of what is buffered before the next replica is tried: wait at most half the
        // buffer's wall-clock time, between MIN_PATIENCE and IDLE_TIMEOUT.
        let buffered_wall_s = self.core.buffer_s() / self.core.cfg.speed.max(1e-9);
        let patience = Duration::from_secs_f64(
            (buffered_wall_s / 2.0).clamp(MIN_PATIENCE.as_secs_f64(), IDLE_TIMEOUT.as_secs_f64()),
        );
        self.client.patience = Some(patience);
        // Dropping `response` before its end closes its connection: every early return below
        // (an error, a refused size, an abandonment) cancels the transfer that way.
        let mut response = self.client.get(url).await?;
        let status = response.status();
        if status.is_server_error() {
            return Err(Failure::Retry(format!("HTTP {}", status.as_u16())));
        }
        if !status.is_success() {
            return Err(Failure::Fatal(PlayError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            }));
        }
        let declared = response.content_length();
        if let Some(len) = declared.filter(|&l| l > MAX_SEGMENT_BYTES) {
            return Err(Failure::Fatal(PlayError::SegmentTooLarge {
                url: url.to_string(),
                bytes: len,
            }));
        }
        let bytes_total = match (declared, self.core.in_flight) {
            (Some(len), _) => len,
            (None, Some(f)) => self.core.ladder.segment_bytes(f.rep, f.segment),
            (None, None) => 0,
        };
        let mut received = 0u64;
        loop {
            let data = match tokio::time::timeout(patience, response.chunk()).await {
                Err(_) => return Err(Failure::Retry(format!("{url}: no data for {patience:?}"))),
                Ok(Ok(None)) => break,
                Ok(Err(e)) => return Err(Failure::Retry(format!("{url}: {e}"))),
                Ok(Ok(Some(data))) => data,
            };
            let n = data.len() as u64;
            received += n;
            self.bytes_total += n;
            if received > MAX_SEGMENT_BYTES {
                return Err(Failure::Fatal(PlayError::SegmentTooLarge {
                    url: url.to_string(),
                    bytes: received,
                }));
            }
            if let Some(pacer) = &mut self.pacer {
                let now = Instant::now();
                let until = self.core.instant_at(pacer.take(self.core.player_time(now), n));
                if until.saturating_duration_since(now) >= MIN_SLEEP {
                    tokio::time::sleep_until(until.into()).await;
                }
            }
            if media {
                if let Some(lower) =
                    self.core.handle_progress(Instant::now(), received, bytes_total)
                {
                    // HTTP/1.1 cannot cancel a response but by closing its connection, which
                    // dropping `response` here does.
                    return Ok(Download::Abandoned { lower });
                }
            }
        }
        if let Some(len) = declared.filter(|&l| l != received) {
            return Err(Failure::Retry(format!("{url}: {received} of {len} bytes")));
        }
        Ok(Download::Done(received))
    }
}

/// The player's HTTP client: the shared one, with a patience that changes per request.
struct HttpClient {
    http: http_layer::HttpClient,
    /// How long to wait for a response or the next body bytes; `None`: [`IDLE_TIMEOUT`].
    patience: Option<Duration>,
}

impl HttpClient {
    fn new() -> Result<HttpClient, String> {
        let config = ClientConfig {
            connect_timeout: CONNECT_TIMEOUT,
            read_timeout: IDLE_TIMEOUT,
            // Patience bounds each wait; a slow trace may make a whole download long.
            total_timeout: DOWNLOAD_LIMIT,
            max_response_bytes: MAX_MPD_BYTES,
            user_agent: "Swarmcast/0.1 (swarmcast play)".to_owned(),
            idle_per_host: 1,
            ..ClientConfig::default()
        };
        let http = http_layer::HttpClient::new(config).map_err(|e| e.to_string())?;
        Ok(HttpClient { http, patience: None })
    }

    fn timeout(&self) -> Duration {
        self.patience.unwrap_or(IDLE_TIMEOUT)
    }

    /// Fetches and parses the MPD (capped at [`MAX_MPD_BYTES`]), following redirects; returns
    /// the final URL with it.
    async fn fetch_mpd(&mut self, url: &str) -> Result<(String, Mpd), PlayError> {
        let mut url = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let response = self.get(&url).await.map_err(|f| match f {
                Failure::Retry(reason) => PlayError::Http { url: url.clone(), reason },
                Failure::Fatal(e) => e,
            })?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| PlayError::Http {
                        url: url.clone(),
                        reason: format!("HTTP {} without a Location", status.as_u16()),
                    })?
                    .to_string();
                url = resolve_url(&url, &location);
                continue;
            }
            if status != StatusCode::OK {
                return Err(PlayError::Status { url, status: status.as_u16() });
            }
            let body = match tokio::time::timeout(IDLE_TIMEOUT, response.bytes()).await {
                Err(_) => return Err(PlayError::Http { url, reason: "timed out".into() }),
                Ok(Err(ClientError::TooLarge { .. })) => {
                    return Err(PlayError::Mpd {
                        url,
                        source: MpdError::TooLarge(MAX_MPD_BYTES + 1),
                    });
                }
                Ok(Err(e)) => return Err(PlayError::Http { url, reason: e.to_string() }),
                Ok(Ok(body)) => body,
            };
            let mpd = Mpd::parse_bytes(&body)
                .map_err(|source| PlayError::Mpd { url: url.clone(), source })?;
            return Ok((url, mpd));
        }
        Err(PlayError::Http { url, reason: format!("more than {MAX_REDIRECTS} redirects") })
    }

    /// Sends a GET and returns the response head (the body is read by the caller).
    async fn get(&mut self, url: &str) -> Result<Fetched, Failure> {
        if http_layer::parse_url(url).is_err() {
            return Err(Failure::Fatal(PlayError::InvalidUrl {
                url: url.to_string(),
                reason: "not an absolute http:// or https:// URL",
            }));
        }
        let patience = self.timeout();
        // A kept connection may have been closed by the server just as the request went out:
        // one more try (on a fresh connection, since the failed one left the pool).
        for last in [false, true] {
            match tokio::time::timeout(patience, self.http.get(url)).await {
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(e @ (ClientError::Http(_) | ClientError::Connect(_)))) if !last => {
                    tracing::debug!(url, error = %e, "request failed, trying once more");
                }
                Ok(Err(e)) => return Err(Failure::Retry(format!("{url}: {e}"))),
                Err(_) => {
                    return Err(Failure::Retry(format!("{url}: no response in {patience:?}")));
                }
            }
        }
        Err(Failure::Retry(format!("{url}: the connection closed")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(cap: f64, speed: f64, n: usize, now: Instant) -> PlayerCore {
        let ladder = Ladder::new(vec![200_000, 600_000], 4.0).unwrap();
        let cfg = PlayerConfig { buffer_cap_s: cap, check_interval_s: 0.25, speed };
        PlayerCore::new(RuleKind::Throughput.build(), ladder, vec![4.0; n], cfg, now)
    }

    fn at(t0: Instant, s: f64) -> Instant {
        t0 + Duration::from_secs_f64(s)
    }

    #[test]
    fn startup_stall_and_drain_in_virtual_time() {
        let t0 = Instant::now();
        let mut c = core(60.0, 1.0, 3, t0);
        assert!(matches!(c.poll_next(t0), Next::Fetch { segment: 0, .. }));
        c.handle_request_sent(t0);
        c.handle_video_done(at(t0, 1.0), 100_000);
        c.handle_segment_done(at(t0, 1.0), 100_000, 0, "http://a/");
        assert_eq!(c.buffer_s(), 4.0);
        // Segment 1 arrives 6 s later: 4 s played, 2 s stalled.
        assert!(matches!(c.poll_next(at(t0, 1.0)), Next::Fetch { segment: 1, .. }));
        c.handle_request_sent(at(t0, 1.0));
        c.handle_video_done(at(t0, 7.0), 100_000);
        c.handle_segment_done(at(t0, 7.0), 100_000, 0, "http://a/");
        assert_eq!(c.stalls(), 1);
        assert!((c.stall_s() - 2.0).abs() < 1e-6);
        assert_eq!(c.buffer_s(), 4.0);
        let r = c.report();
        assert!((r.startup_s - 1.0).abs() < 1e-6);
        assert_eq!(r.segments.len(), 2);
        assert!(
            (r.qoe - qoe(&[r.segments[0].bitrate_bps, r.segments[1].bitrate_bps], r.stall_s)).abs()
                < 1e-9
        );
    }

    #[test]
    fn waits_when_the_buffer_is_at_cap_and_speed_scales_time() {
        let t0 = Instant::now();
        // Speed 10: one wall second is ten player seconds.
        let mut c = core(8.0, 10.0, 4, t0);
        for i in 0..2 {
            assert!(matches!(c.poll_next(t0), Next::Fetch { segment, .. } if segment == i));
            c.handle_request_sent(t0);
            c.handle_video_done(t0, 1000);
            c.handle_segment_done(t0, 1000, 0, "b");
        }
        assert_eq!(c.buffer_s(), 8.0);
        // 8 s buffered + 4 s > 8 s cap: wait 4 player seconds = 0.4 wall seconds.
        match c.poll_next(t0) {
            Next::WaitUntil(w) => assert!((w.duration_since(t0).as_secs_f64() - 0.4).abs() < 1e-6),
            other => panic!("expected a wait, got {other:?}"),
        }
        assert!(matches!(c.poll_next(at(t0, 0.4)), Next::Fetch { segment: 2, .. }));
        assert!((c.buffer_s() - 4.0).abs() < 1e-6);
        assert_eq!(c.stalls(), 0);
    }

    #[test]
    fn done_after_the_last_segment() {
        let t0 = Instant::now();
        let mut c = core(60.0, 1.0, 1, t0);
        assert!(matches!(c.poll_next(t0), Next::Fetch { segment: 0, .. }));
        // Polling again returns the same fetch while it is in flight.
        assert!(matches!(c.poll_next(t0), Next::Fetch { segment: 0, .. }));
        c.handle_segment_done(t0, 1, 0, "b");
        assert_eq!(c.poll_next(t0), Next::Done);
    }

    #[test]
    fn pacer_follows_the_trace() {
        let trace = Trace::new(
            Family::Steps,
            0,
            vec![
                TracePoint { duration_s: 1.0, bps: 8000.0 },
                TracePoint { duration_s: 1.0, bps: 16000.0 },
            ],
        )
        .unwrap();
        let mut p = TracePacer::new(&trace, 0.0);
        // 500 bytes = 4000 bits: half a second at 8 kbps.
        assert!((p.take(0.0, 500) - 0.5).abs() < 1e-9);
        // 1500 bytes = 12000 bits: 4000 in the rest of the first second, 8000 at 16 kbps.
        assert!((p.take(0.0, 1500) - 1.5).abs() < 1e-9);
        // Idle time is not banked; the trace loops (t = 10 is in the first point).
        assert!((p.take(10.0, 1000) - 11.0).abs() < 1e-9);
        // A bucket of 0.5 s banks the idle link from 9.5 s on (16 kbps there): done at 10 s.
        let mut p = TracePacer::new(&trace, 0.5);
        assert!((p.take(10.0, 1000) - 10.0).abs() < 1e-9);
    }

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
