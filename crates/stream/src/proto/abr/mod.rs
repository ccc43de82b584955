//! The adaptive-bitrate (ABR) core: sans-IO, no clock, no I/O.
//!
//! A player asks an [`Abr`] rule which representation to fetch next and whether to give up on a
//! download in flight; it tells the rule what each finished download measured. Everything the
//! rule knows arrives as an argument, so the same rule runs in a real player (an HTTP fetcher
//! drives it) and in the virtual-time simulator of [`crate::eval`].
//!
//! How to drive a rule, in order:
//! 1. [`Abr::choose`] with the [`Ladder`] and the [`PlayerState`] before each segment request;
//! 2. while the segment downloads, [`Abr::abandon`] with its [`Progress`] now and then; on
//!    `Some(lower)`, cancel and fetch the same segment at `lower`;
//! 3. [`Abr::record`] with a [`ThroughputSample`] for every download that ended (a finished one
//!    or an abandoned one: its bytes and time are a measurement too).
//!
//! Files: `mod.rs` (the trait, the ladder, the inputs, the shared throughput estimators and the
//! dash.js abandonment rule), `throughput.rs`, `bola.rs`, `dynamic.rs`, `hybrid.rs` (one rule each).

mod bola;
mod dynamic;
mod hybrid;
mod throughput;

use std::fmt;
use std::str::FromStr;

pub use bola::Bola;
pub use dynamic::Dynamic;
pub use hybrid::{Hybrid, HybridConfig};
pub use throughput::Throughput;

/// Most representations a ladder may hold (an MPD from outside is hostile; ladders are short).
pub const MAX_REPRESENTATIONS: usize = 64;
/// Most segments per representation a ladder may describe (a 4 s segment: ~48 days).
pub const MAX_SEGMENTS: usize = 1 << 20;

/// A ladder that cannot drive a rule, said in terms of what to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LadderError {
    /// No representation at all.
    #[error("the ladder has no representation")]
    Empty,
    /// More representations than [`MAX_REPRESENTATIONS`].
    #[error("the ladder has {0} representations; at most {MAX_REPRESENTATIONS} are accepted")]
    TooManyRepresentations(usize),
    /// Bitrates must be positive and strictly increasing.
    #[error("bitrates must be positive and strictly increasing (representation {0} is not)")]
    NotIncreasing(usize),
    /// The segment duration must be a positive, finite number of seconds.
    #[error("segment duration {0} s is not a positive, finite number of seconds")]
    BadSegmentDuration(f64),
    /// A list given per representation has the wrong length.
    #[error("{what} has {got} entries for {want} representations")]
    WrongLength {
        /// Which list.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The number of representations.
        want: usize,
    },
    /// Per-segment size lists differ in length, are empty, or are too long.
    #[error(
        "per-segment sizes must list the same number (1..={MAX_SEGMENTS}) of segments for every representation"
    )]
    BadSegmentCount,
    /// A measured rate or a segment size is zero.
    #[error("measured rates and segment sizes must be positive")]
    ZeroSize,
}

/// The representations of one video, lowest bitrate first, and what is known of their real sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct Ladder {
    bitrates_bps: Vec<u64>,
    measured_bps: Option<Vec<u64>>,
    segment_bytes: Option<Vec<Vec<u64>>>,
    segment_duration_s: f64,
}

impl Ladder {
    /// A ladder from the declared bitrates (the MPD's `@bandwidth`, ascending) and the segment
    /// duration in seconds.
    pub fn new(bitrates_bps: Vec<u64>, segment_duration_s: f64) -> Result<Self, LadderError> {
        if bitrates_bps.is_empty() {
            return Err(LadderError::Empty);
        }
        if bitrates_bps.len() > MAX_REPRESENTATIONS {
            return Err(LadderError::TooManyRepresentations(bitrates_bps.len()));
        }
        for (i, &b) in bitrates_bps.iter().enumerate() {
            if b == 0 || (i > 0 && b <= bitrates_bps[i - 1]) {
                return Err(LadderError::NotIncreasing(i));
            }
        }
        if !(segment_duration_s.is_finite() && segment_duration_s > 0.0) {
            return Err(LadderError::BadSegmentDuration(segment_duration_s));
        }
        Ok(Ladder { bitrates_bps, measured_bps: None, segment_bytes: None, segment_duration_s })
    }

    /// Adds the measured mean rate of every representation (the labels lie: real encodes differ).
    pub fn with_measured(mut self, measured_bps: Vec<u64>) -> Result<Self, LadderError> {
        if measured_bps.len() != self.len() {
            return Err(LadderError::WrongLength {
                what: "measured rates",
                got: measured_bps.len(),
                want: self.len(),
            });
        }
        if measured_bps.contains(&0) {
            return Err(LadderError::ZeroSize);
        }
        self.measured_bps = Some(measured_bps);
        Ok(self)
    }

    /// Adds every segment's size in bytes, `sizes[representation][segment]` (VBR segments vary).
    pub fn with_segment_sizes(mut self, sizes: Vec<Vec<u64>>) -> Result<Self, LadderError> {
        if sizes.len() != self.len() {
            return Err(LadderError::WrongLength {
                what: "segment sizes",
                got: sizes.len(),
                want: self.len(),
            });
        }
        let n = sizes[0].len();
        if n == 0 || n > MAX_SEGMENTS || sizes.iter().any(|s| s.len() != n) {
            return Err(LadderError::BadSegmentCount);
        }
        if sizes.iter().flatten().any(|&b| b == 0) {
            return Err(LadderError::ZeroSize);
        }
        self.segment_bytes = Some(sizes);
        Ok(self)
    }

    /// Number of representations (at least one).
    pub fn len(&self) -> usize {
        self.bitrates_bps.len()
    }

    /// Always false: a ladder has at least one representation.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The index of the highest representation.
    pub fn top(&self) -> usize {
        self.len() - 1
    }

    /// Declared bitrates, bits per second, ascending.
    pub fn bitrates_bps(&self) -> &[u64] {
        &self.bitrates_bps
    }

    /// Declared bitrate of representation `rep` (clamped to the top).
    pub fn bitrate_bps(&self, rep: usize) -> u64 {
        self.bitrates_bps[rep.min(self.top())]
    }

    /// Segment duration in seconds.
    pub fn segment_duration_s(&self) -> f64 {
        self.segment_duration_s
    }

    /// Number of segments, when per-segment sizes are known.
    pub fn segments(&self) -> Option<usize> {
        self.segment_bytes.as_ref().map(|s| s[0].len())
    }

    /// The best known mean rate of `rep`: measured when known, declared otherwise.
    pub fn rate_bps(&self, rep: usize) -> f64 {
        let rep = rep.min(self.top());
        match &self.measured_bps {
            Some(m) => m[rep] as f64,
            None => self.bitrates_bps[rep] as f64,
        }
    }

    /// Whether per-segment sizes are known.
    pub fn has_segment_sizes(&self) -> bool {
        self.segment_bytes.is_some()
    }

    /// Size in bytes of `segment` at `rep`: the known size, or the best known rate times the
    /// segment duration (a segment past the known list uses the mean rate too).
    pub fn segment_bytes(&self, rep: usize, segment: usize) -> u64 {
        let rep = rep.min(self.top());
        if let Some(size) = self.segment_bytes.as_ref().and_then(|s| s[rep].get(segment)) {
            return *size;
        }
        (self.rate_bps(rep) * self.segment_duration_s / 8.0).round().max(1.0) as u64
    }

    /// The highest representation whose declared bitrate is at most `bps` (the lowest if none).
    pub fn highest_declared_at_most(&self, bps: f64) -> usize {
        self.bitrates_bps.iter().rposition(|&b| b as f64 <= bps).unwrap_or(0)
    }
}

/// What the player knows when it picks the next segment's representation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlayerState {
    /// Index of the segment about to be requested.
    pub segment: usize,
    /// Total number of segments, when known (a VoD manifest says it).
    pub segments_total: Option<usize>,
    /// Seconds of media in the buffer.
    pub buffer_s: f64,
    /// The representation of the previous segment (`None` before the first).
    pub last: Option<usize>,
}

/// One download that ended: its bytes and how long it took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThroughputSample {
    /// Bytes received.
    pub bytes: u64,
    /// Seconds from request to the last byte.
    pub duration_s: f64,
}

impl ThroughputSample {
    /// The sample's rate in bits per second, or `None` for an unusable sample (no time, no bytes).
    pub fn bps(&self) -> Option<f64> {
        (self.duration_s.is_finite() && self.duration_s > 0.0 && self.bytes > 0)
            .then(|| self.bytes as f64 * 8.0 / self.duration_s)
    }
}

/// A download in flight, as the abandonment check sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// The segment being fetched.
    pub segment: usize,
    /// The representation it is fetched at.
    pub rep: usize,
    /// Bytes received so far.
    pub bytes_received: u64,
    /// The segment's size in bytes (from the response's length or the ladder).
    pub bytes_total: u64,
    /// Seconds since the request went out.
    pub elapsed_s: f64,
    /// Seconds of media in the buffer now.
    pub buffer_s: f64,
    /// Total number of segments, when known (as in [`PlayerState`]).
    pub segments_total: Option<usize>,
}

/// An adaptive-bitrate rule. See the module header for the calling order.
pub trait Abr {
    /// The rule's short name (as `--abr` spells it).
    fn name(&self) -> &'static str;
    /// Takes the measurement of a download that ended.
    fn record(&mut self, sample: ThroughputSample);
    /// The representation index (into `ladder`) to fetch the next segment at.
    fn choose(&mut self, ladder: &Ladder, state: &PlayerState) -> usize;
    /// `Some(lower)` when the download in flight should be abandoned and the segment fetched at
    /// `lower` (always lower than `progress.rep`) instead.
    fn abandon(&mut self, ladder: &Ladder, progress: &Progress) -> Option<usize>;
}

/// The rules this crate offers, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleKind {
    /// [`Throughput`].
    Throughput,
    /// [`Bola`].
    Bola,
    /// [`Dynamic`].
    Dynamic,
    /// [`Hybrid`], our default.
    Hybrid,
}

impl RuleKind {
    /// Every rule, in table order.
    pub const ALL: [RuleKind; 4] =
        [RuleKind::Throughput, RuleKind::Bola, RuleKind::Dynamic, RuleKind::Hybrid];

    /// The default rule of our player.
    pub const DEFAULT: RuleKind = RuleKind::Hybrid;

    /// A fresh rule of this kind with its default parameters.
    pub fn build(self) -> Box<dyn Abr + Send> {
        match self {
            RuleKind::Throughput => Box::new(Throughput::default()),
            RuleKind::Bola => Box::new(Bola::default()),
            RuleKind::Dynamic => Box::new(Dynamic::default()),
            RuleKind::Hybrid => Box::new(Hybrid::default()),
        }
    }

    /// The name `--abr` takes.
    pub fn name(self) -> &'static str {
        match self {
            RuleKind::Throughput => "throughput",
            RuleKind::Bola => "bola",
            RuleKind::Dynamic => "dynamic",
            RuleKind::Hybrid => "hybrid",
        }
    }
}

impl fmt::Display for RuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An ABR rule name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown ABR rule {0:?}: use throughput, bola, dynamic or hybrid")]
pub struct UnknownRule(pub String);

impl FromStr for RuleKind {
    type Err = UnknownRule;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RuleKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownRule(s.to_string()))
    }
}

/// An exponentially weighted moving average whose weights are seconds of download time, with
/// dash.js's zero-bias correction (`ThroughputModel`/`EwmaCalculator`): a sample of `w` seconds
/// keeps `0.5^(w / half_life)` of the old estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ewma {
    half_life_s: f64,
    raw: f64,
    total_weight_s: f64,
}

impl Ewma {
    /// An empty average with this half-life in seconds.
    pub fn new(half_life_s: f64) -> Self {
        Ewma { half_life_s, raw: 0.0, total_weight_s: 0.0 }
    }

    /// Adds `value` observed over `weight_s` seconds.
    pub fn add(&mut self, weight_s: f64, value: f64) {
        if !(weight_s.is_finite() && weight_s > 0.0 && value.is_finite()) {
            return;
        }
        let alpha = 0.5f64.powf(weight_s / self.half_life_s);
        self.raw = alpha * self.raw + (1.0 - alpha) * value;
        self.total_weight_s += weight_s;
    }

    /// The bias-corrected estimate, `None` before the first sample.
    pub fn estimate(&self) -> Option<f64> {
        if self.total_weight_s <= 0.0 {
            return None;
        }
        let zero_factor = 1.0 - 0.5f64.powf(self.total_weight_s / self.half_life_s);
        Some(self.raw / zero_factor)
    }
}

/// dash.js's throughput estimate: a fast (3 s) and a slow (8 s) EWMA, the smaller of the two.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DualEwma {
    fast: Ewma,
    slow: Ewma,
}

impl Default for DualEwma {
    fn default() -> Self {
        DualEwma { fast: Ewma::new(3.0), slow: Ewma::new(8.0) }
    }
}

impl DualEwma {
    /// Adds a finished download (unusable samples are ignored).
    pub fn record(&mut self, sample: ThroughputSample) {
        if let Some(bps) = sample.bps() {
            self.fast.add(sample.duration_s, bps);
            self.slow.add(sample.duration_s, bps);
        }
    }

    /// min(fast, slow) in bits per second, `None` before the first sample.
    pub fn estimate_bps(&self) -> Option<f64> {
        Some(self.fast.estimate()?.min(self.slow.estimate()?))
    }
}

/// dash.js's `AbandonRequestsRule` (5.x): after a 0.5 s grace time, if the download at the rate
/// seen so far would take more than 1.8 segment durations, switch to what `safety` × that rate
/// sustains, provided the bytes still to come exceed that representation's whole segment.
pub fn dashjs_abandon(ladder: &Ladder, p: &Progress, safety: f64) -> Option<usize> {
    const GRACE_S: f64 = 0.5;
    const MULTIPLIER: f64 = 1.8;
    if p.rep == 0 || p.elapsed_s < GRACE_S || p.bytes_received >= p.bytes_total {
        return None;
    }
    let rate =
        ThroughputSample { bytes: p.bytes_received, duration_s: p.elapsed_s }.bps().unwrap_or(0.0);
    let remaining_bytes = (p.bytes_total - p.bytes_received) as f64;
    if rate > 0.0 && p.bytes_total as f64 * 8.0 / rate < ladder.segment_duration_s() * MULTIPLIER {
        return None;
    }
    let lower = ladder.highest_declared_at_most(rate * safety).min(p.rep - 1);
    let lower_bytes =
        p.bytes_total as f64 * ladder.bitrate_bps(lower) as f64 / ladder.bitrate_bps(p.rep) as f64;
    (remaining_bytes > lower_bytes).then_some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pensieve's ladder with 4 s segments.
    pub(crate) fn pensieve() -> Ladder {
        Ladder::new(vec![300_000, 750_000, 1_200_000, 1_850_000, 2_850_000, 4_300_000], 4.0)
            .unwrap()
    }

    #[test]
    fn ewma_matches_hand_computation() {
        let mut e = Ewma::new(3.0);
        assert_eq!(e.estimate(), None);
        // One sample: the zero-bias correction returns it exactly.
        e.add(3.0, 1000.0);
        assert!((e.estimate().unwrap() - 1000.0).abs() < 1e-9);
        // Second sample of 3 s at 2000: raw = 0.5*500 + 0.5*2000 = 1250; zero factor 1 - 0.25.
        e.add(3.0, 2000.0);
        assert!((e.estimate().unwrap() - 1250.0 / 0.75).abs() < 1e-9);
    }

    #[test]
    fn dual_ewma_takes_the_smaller() {
        let mut d = DualEwma::default();
        d.record(ThroughputSample { bytes: 1_000_000, duration_s: 2.0 }); // 4 Mbps
        d.record(ThroughputSample { bytes: 250_000, duration_s: 2.0 }); // 1 Mbps
                                                                        // Fast (3 s): a = 2^(-2/3); raw = a(1-a)4e6 + (1-a)1e6; / (1 - a^2).
        let a: f64 = 0.5f64.powf(2.0 / 3.0);
        let fast = (a * (1.0 - a) * 4e6 + (1.0 - a) * 1e6) / (1.0 - a * a);
        let b: f64 = 0.5f64.powf(2.0 / 8.0);
        let slow = (b * (1.0 - b) * 4e6 + (1.0 - b) * 1e6) / (1.0 - b * b);
        assert!(fast < slow);
        assert!((d.estimate_bps().unwrap() - fast).abs() < 1e-6);
    }

    #[test]
    fn ladder_rejects_bad_input() {
        assert_eq!(Ladder::new(vec![], 4.0), Err(LadderError::Empty));
        assert_eq!(Ladder::new(vec![2, 1], 4.0), Err(LadderError::NotIncreasing(1)));
        assert_eq!(Ladder::new(vec![0], 4.0), Err(LadderError::NotIncreasing(0)));
        assert!(Ladder::new(vec![1], f64::NAN).unwrap_err().to_string().contains("NaN"));
        let l = Ladder::new(vec![1, 2], 4.0).unwrap();
        assert_eq!(
            l.clone().with_segment_sizes(vec![vec![1, 2], vec![3]]),
            Err(LadderError::BadSegmentCount)
        );
        assert_eq!(
            l.with_measured(vec![1]),
            Err(LadderError::WrongLength { what: "measured rates", got: 1, want: 2 })
        );
    }

    #[test]
    fn segment_bytes_prefers_known_sizes() {
        let l = Ladder::new(vec![1_000_000, 2_000_000], 4.0).unwrap();
        assert_eq!(l.segment_bytes(1, 0), 1_000_000);
        let l = l.with_measured(vec![800_000, 2_400_000]).unwrap();
        assert_eq!(l.segment_bytes(1, 7), 1_200_000);
        let l = l.with_segment_sizes(vec![vec![10, 20], vec![30, 40]]).unwrap();
        assert_eq!(l.segment_bytes(1, 1), 40);
        assert_eq!(l.segment_bytes(1, 2), 1_200_000);
    }

    #[test]
    fn rule_names_round_trip() {
        for k in RuleKind::ALL {
            assert_eq!(k.name().parse::<RuleKind>(), Ok(k));
            assert_eq!(k.build().name(), k.name());
        }
        assert!("mpc".parse::<RuleKind>().unwrap_err().to_string().contains("hybrid"));
    }

    #[test]
    fn dashjs_abandon_switches_down_on_a_slow_download() {
        let l = pensieve();
        // 4.3 Mbps segment (2.15 MB) at 1 Mbps so far: 17.2 s > 7.2 s; 0.9 Mbps sustains 750k.
        let p = Progress {
            segment: 3,
            rep: 5,
            bytes_received: 125_000,
            bytes_total: 2_150_000,
            elapsed_s: 1.0,
            buffer_s: 8.0,
            segments_total: None,
        };
        assert_eq!(dashjs_abandon(&l, &p, 0.9), Some(1));
        // Within the grace time, or fast enough: keep going.
        assert_eq!(dashjs_abandon(&l, &Progress { elapsed_s: 0.25, ..p }, 0.9), None);
        assert_eq!(dashjs_abandon(&l, &Progress { bytes_received: 1_000_000, ..p }, 0.9), None);
        // Already at the lowest: nothing to switch to.
        assert_eq!(dashjs_abandon(&l, &Progress { rep: 0, ..p }, 0.9), None);
    }
}
