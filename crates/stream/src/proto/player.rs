//! The player core (sans-IO): buffer accounting, stall detection, when to request and at which
//! representation. [`PlayerCore`] reads no clock and does no I/O: every entry point takes
//! `now`, and what to do comes back as a return value ([`Next`], `Some(lower)` to abandon). The
//! HTTP fetcher of [`crate::player`] (`swarmcast play`) drives it on the wall clock, and
//! [`crate::eval`] drives it in virtual time.
//!
//! **Clock.** Every time the core reports is *player time*: the time since the `Instant` it
//! was created at, × [`PlayerConfig::speed`]. At `speed = 1` player time is wall time.
//!
//! **Model**: segments download one after another in playback order; playback starts when the
//! first segment is in (the startup delay); an empty buffer after startup is a stall that ends
//! when the next segment arrives; the buffer holds at most [`PlayerConfig::buffer_cap_s`]
//! seconds (60): before a request that would overflow it, the player waits. Every
//! [`PlayerConfig::check_interval_s`] of a download the rule may abandon it; the segment is then
//! fetched again at the lower representation. A segment counts as buffered when its video and
//! (if any) audio are in; the ABR sees video downloads only.
//!
//! The session is scored by Pensieve's linear QoE ([`qoe`]).
//!
//! # Using it
//!
//! Methods fall into the four groups every core of the project has (the order quinn-proto
//! documents its `Connection` in; see `docs/architecture.md`):
//!
//! - *getters*: [`PlayerCore::ladder`], [`PlayerCore::buffer_s`], [`PlayerCore::stalls`],
//!   [`PlayerCore::played`], [`PlayerCore::next_check_s`], [`PlayerCore::report`], …;
//! - *handlers* for what happened, each with `now`: [`PlayerCore::handle_time`],
//!   [`PlayerCore::handle_request_sent`], [`PlayerCore::handle_progress`] (which may answer
//!   "abandon"), [`PlayerCore::handle_video_done`], [`PlayerCore::handle_segment_done`],
//!   [`PlayerCore::handle_failover`];
//! - *mutators*: none (the ABR rule is chosen at [`PlayerCore::new`]);
//! - *polling*: [`PlayerCore::poll_next`] says what to fetch next, or until when to wait
//!   ([`Next::WaitUntil`] is the core's deadline: call `poll_next` again then), or that it is
//!   done; [`PlayerCore::next_check_s`] is the deadline of the abandonment check while a
//!   download is in flight.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::proto::abr::{Abr, Ladder, PlayerState, Progress, ThroughputSample};

/// QoE cost of one second of stall (Pensieve's linear metric).
pub const STALL_PENALTY: f64 = 4.3;

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
    /// Of its bytes (video, audio and any init segment fetched with it), what other viewers
    /// served (`play --p2p`; filled in by the fetcher).
    pub peer_bytes: u64,
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
    /// Pensieve's linear QoE ([`qoe`]) over the declared bitrates.
    pub qoe: f64,
    /// Mean declared bitrate, kbps.
    pub mean_bitrate_kbps: f64,
    /// Downloads abandoned and fetched again lower.
    pub abandons: u32,
    /// Replica changes (failovers) in the whole session.
    pub failovers: u32,
    /// Bytes received in total (media, init segments, abandoned tries; not the MPD).
    pub bytes_total: u64,
    /// Of `bytes_total`, the bytes other viewers served (`play --p2p`); the rest came from the
    /// CDN.
    pub peer_bytes: u64,
    /// `peer_bytes / bytes_total`: the share of the CDN's load the peers took (0 with no
    /// bytes).
    pub offload: f64,
    /// Player seconds from the first request until the last segment was in (or the player
    /// stopped early: `PlayOptions::stop_after_s`).
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
    /// Of the current request's video, the bytes peers delivered (not a sample of the link).
    peer_bytes: u64,
    abandoned: bool,
    failovers: u32,
    /// A request for it went out ([`PlayerCore::handle_request_sent`]).
    sent: bool,
    /// The rule's choice (`rep` unless [`PlayerCore::take_ready`] raised it): what the rule
    /// plans its next choice from.
    chosen: usize,
}

/// The player without I/O: buffer accounting, stall detection, when to request and at which
/// representation. It reads no clock: every entry point takes `now`.
///
/// Calling order, per segment:
/// 1. [`poll_next`](Self::poll_next): `Fetch`, `WaitUntil` (sleep, then poll again) or `Done`;
///    a higher representation of that segment that peers delivered may replace the rule's
///    choice before the request: [`take_ready`](Self::take_ready);
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

/// What the CDN carried of a segment after the peers' part is a throughput sample only when
/// it is at least this share of a segment at the lowest rung: a shorter transfer (the few
/// kilobytes peers left) measures the request's latency, not the link (ExoPlayer's bandwidth
/// meter likewise waits for enough bytes).
const MIN_SAMPLE_SHARE: f64 = 0.5;

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

    /// The model's parameters.
    pub fn config(&self) -> &PlayerConfig {
        &self.cfg
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

    /// The ladder's size of the segment in flight at its current representation, bytes: what a
    /// fetcher expects when the response does not say.
    pub fn in_flight_ladder_bytes(&self) -> Option<u64> {
        self.in_flight.map(|f| self.ladder.segment_bytes(f.rep, f.segment))
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
            peer_bytes: 0,
            abandoned: false,
            failovers: 0,
            sent: false,
            chosen: rep,
        });
        Next::Fetch { segment: self.next, rep }
    }

    /// The video of the segment in flight at `rep` needs no more bytes from the CDN than the
    /// rule's choice (peers delivered it, or as much of it, ahead of the player): taken
    /// instead when higher. Viewers then play what the ones ahead of them played, which is
    /// what they can serve each other. Ignored for a lower `rep`, one off the ladder, or once
    /// the request went out. Returns the representation in flight.
    pub fn take_ready(&mut self, rep: usize) -> Option<usize> {
        let top = self.ladder.top();
        let f = self.in_flight.as_mut()?;
        if rep > f.rep && rep <= top && !f.sent {
            f.rep = rep;
        }
        Some(f.rep)
    }

    /// The media request for the segment in flight went out at `now`.
    pub fn handle_request_sent(&mut self, now: Instant) {
        self.handle_time(now);
        let (clock, interval) = (self.clock_s, self.cfg.check_interval_s);
        if let Some(f) = &mut self.in_flight {
            f.attempt_s = clock;
            f.next_check_s = clock + interval;
            f.peer_bytes = 0;
            f.sent = true;
        }
    }

    /// Peers delivered `bytes` of the video in flight at `now`; the link the rule measures
    /// (the CDN) carries the rest from now on. Peers' bytes are no throughput sample: the rung
    /// is chosen by what the CDN alone can carry, so it never counts on peers that may vanish
    /// (and a segment peers prefetched, which arrives at once, does not fake a fast link).
    /// Progress reported after this counts the CDN's bytes only.
    pub fn handle_peer_part(&mut self, now: Instant, bytes: u64) {
        self.handle_time(now);
        let (clock, interval) = (self.clock_s, self.cfg.check_interval_s);
        if let Some(f) = &mut self.in_flight {
            f.attempt_s = clock;
            f.next_check_s = clock + interval;
            f.peer_bytes += bytes;
        }
    }

    /// The CDN answered the request for the rest with the whole file (it ignored Range): the
    /// peers' part is not used, and all of the file is the CDN's sample.
    pub fn discard_peer_part(&mut self) {
        if let Some(f) = &mut self.in_flight {
            f.peer_bytes = 0;
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
            segments_total: Some(self.segment_s.len()),
        };
        let lower = self.abr.abandon(&self.ladder, &progress).filter(|&r| r < f.rep)?;
        self.abr
            .record(ThroughputSample { bytes: bytes_received, duration_s: clock - f.attempt_s });
        f.rep = lower;
        f.chosen = lower;
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

    /// The video of the segment in flight is in (`bytes` of it): what the CDN carried of it
    /// (all but [`handle_peer_part`](Self::handle_peer_part)'s bytes) is a throughput sample,
    /// unless it was a rest after a peer part too small to measure the link
    /// ([`MIN_SAMPLE_SHARE`]).
    pub fn handle_video_done(&mut self, now: Instant, bytes: u64) {
        self.handle_time(now);
        if let Some(f) = &self.in_flight {
            let cdn = bytes.saturating_sub(f.peer_bytes);
            let lowest = self.ladder.bitrate_bps(0) as f64 * self.ladder.segment_duration_s();
            let too_small = f.peer_bytes > 0 && (cdn as f64) < lowest / 8.0 * MIN_SAMPLE_SHARE;
            if cdn > 0 && !too_small {
                let duration_s = self.clock_s - f.attempt_s;
                self.abr.record(ThroughputSample { bytes: cdn, duration_s });
            }
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
            peer_bytes: 0,
            abandoned: f.abandoned,
            failovers: f.failovers,
        });
        // The rule plans from its own last choice, not from a rung peers supplied (else a rung
        // its link cannot carry would look like where it stands).
        self.last_rep = Some(f.chosen);
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
            peer_bytes: 0,
            offload: 0.0,
            duration_s: self.clock_s,
            segments: self.records.clone(),
        }
    }
}

/// Pensieve's linear QoE of a session: Σ bitrate (Mbps) − 4.3 × stall seconds − Σ |bitrate
/// change| (Mbps), over the declared bitrates of the segments played, in order.
pub fn qoe(bitrates_bps: &[u64], stall_s: f64) -> f64 {
    let mbps = |b: u64| b as f64 / 1e6;
    let quality: f64 = bitrates_bps.iter().map(|&b| mbps(b)).sum();
    let smooth: f64 = bitrates_bps.windows(2).map(|w| (mbps(w[1]) - mbps(w[0])).abs()).sum();
    quality - STALL_PENALTY * stall_s - smooth
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::abr::RuleKind;

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

    /// One segment of `bytes`: requested at `sent_s`; `peers` (when, bytes) delivered first,
    /// that part then discarded when `discard` (the CDN sent the whole file); all in at
    /// `done_s` (seconds from `t0`).
    fn fetch_segment(
        c: &mut PlayerCore,
        t0: Instant,
        sent_s: f64,
        peers: Option<(f64, u64)>,
        discard: bool,
        done_s: f64,
        bytes: u64,
    ) {
        c.handle_request_sent(at(t0, sent_s));
        if let Some((when_s, n)) = peers {
            c.handle_peer_part(at(t0, when_s), n);
        }
        if discard {
            c.discard_peer_part();
        }
        c.handle_video_done(at(t0, done_s), bytes);
        c.handle_segment_done(at(t0, done_s), bytes, 0, "b");
    }

    #[test]
    fn peers_bytes_and_the_wait_for_them_are_no_throughput_sample() {
        let t0 = Instant::now();
        let mut c = core(60.0, 1.0, 5, t0);
        // Segment 0 from the CDN at 400 kb/s: the lower rung (600 kb/s does not fit).
        assert!(matches!(c.poll_next(t0), Next::Fetch { segment: 0, rep: 0 }));
        fetch_segment(&mut c, t0, 0.0, None, false, 2.0, 100_000);
        // Segment 1: peers deliver all 300 kB within 10 ms (240 Mb/s, were it a sample).
        assert!(matches!(c.poll_next(at(t0, 2.0)), Next::Fetch { segment: 1, rep: 0 }));
        fetch_segment(&mut c, t0, 2.0, Some((2.01, 300_000)), false, 2.01, 300_000);
        // Segment 2: a 1 s wait for peers that bring 95 kB; the CDN's 5 kB take 1 ms. Too
        // small to be a sample (a latency, not a rate): still the lower rung.
        assert!(matches!(c.poll_next(at(t0, 2.01)), Next::Fetch { segment: 2, rep: 0 }));
        fetch_segment(&mut c, t0, 2.01, Some((3.01, 95_000)), false, 3.011, 100_000);
        // Segment 3: peers bring nothing in a 4 s wait, the CDN then carries 300 kB in 0.5 s:
        // 4.8 Mb/s (were the wait counted, 0.53 Mb/s): the upper rung.
        assert!(matches!(c.poll_next(at(t0, 3.011)), Next::Fetch { segment: 3, rep: 0 }));
        fetch_segment(&mut c, t0, 3.011, Some((7.011, 0)), false, 7.511, 300_000);
        assert!(matches!(c.poll_next(at(t0, 7.511)), Next::Fetch { segment: 4, rep: 1 }));
    }

    #[test]
    fn a_whole_file_after_a_discarded_peer_part_is_a_full_sample() {
        let t0 = Instant::now();
        let mut c = core(60.0, 1.0, 3, t0);
        assert!(matches!(c.poll_next(t0), Next::Fetch { segment: 0, rep: 0 }));
        fetch_segment(&mut c, t0, 0.0, None, false, 2.0, 100_000);
        // Peers had 290 kB; the CDN ignored Range and sent all 300 kB in 0.49 s: 4.9 Mb/s.
        assert!(matches!(c.poll_next(at(t0, 2.0)), Next::Fetch { segment: 1, rep: 0 }));
        fetch_segment(&mut c, t0, 2.0, Some((2.01, 290_000)), true, 2.5, 300_000);
        assert!(matches!(c.poll_next(at(t0, 2.5)), Next::Fetch { segment: 2, rep: 1 }));
    }

    #[test]
    fn a_higher_rung_already_here_replaces_the_rules_choice_before_the_request_only() {
        let t0 = Instant::now();
        let mut c = core(60.0, 1.0, 3, t0);
        assert!(matches!(c.poll_next(t0), Next::Fetch { segment: 0, rep: 0 }));
        // Off the ladder, or no higher: the rule's choice stays.
        assert_eq!(c.take_ready(7), Some(0));
        assert_eq!(c.take_ready(0), Some(0));
        assert_eq!(c.take_ready(1), Some(1));
        assert!(matches!(c.poll_next(t0), Next::Fetch { segment: 0, rep: 1 }));
        // Peers delivered it whole: no throughput sample, and the record says the upper rung.
        c.handle_request_sent(t0);
        c.handle_peer_part(t0, 300_000);
        c.handle_video_done(t0, 300_000);
        let record = c.handle_segment_done(t0, 300_000, 0, "b").unwrap();
        assert_eq!((record.rep, record.bitrate_bps), (1, 600_000));
        // Once the request went out, the segment in flight keeps its rung.
        let Next::Fetch { rep, .. } = c.poll_next(t0) else { panic!("a fetch") };
        c.handle_request_sent(t0);
        assert_eq!(c.take_ready(rep + 1), Some(rep));
        c.handle_segment_done(t0, 1, 0, "b");
        assert!(matches!(c.poll_next(t0), Next::Fetch { segment: 2, .. }));
        c.handle_segment_done(t0, 1, 0, "b");
        assert_eq!(c.take_ready(1), None);
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
    fn qoe_of_a_hand_computed_session() {
        // 0.3 + 1.2 + 0.75 = 2.25 Mbps; switches 0.9 + 0.45 = 1.35; stall 2 s × 4.3 = 8.6.
        let q = qoe(&[300_000, 1_200_000, 750_000], 2.0);
        assert!((q - (2.25 - 8.6 - 1.35)).abs() < 1e-12);
        assert_eq!(qoe(&[], 0.0), 0.0);
    }
}
