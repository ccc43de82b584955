//! The ABR evaluation: a virtual-time player simulator, seeded bandwidth traces, and a
//! comparison of the rules of [`crate::proto::abr`] by Pensieve's linear QoE on the same traces.
//!
//! **Player model**: the one `swarmcast play` runs, [`PlayerCore`], driven in virtual time
//! ([`simulate`]): segments download one after another in playback order, each at the trace's
//! bandwidth (the trace is piecewise constant and is integrated exactly; it loops when it runs
//! out). Playback starts when the first segment has arrived (the startup delay) and drains the
//! buffer in real time; an empty buffer after startup is a stall, which ends when the next
//! segment arrives. The buffer holds at most 60 s: before a request that would overflow it, the
//! player waits. Every 0.25 s of a download the rule may abandon it; the segment is then
//! fetched again, at the lower representation, from its first byte.
//!
//! **Video**: Pensieve's ladder (300/750/1200/1850/2850/4300 kbps), 4 s segments, 50 segments
//! (200 s), VBR: each segment's size is its representation's bitrate × 4 s × a scene
//! complexity shared by all representations (log-normal, σ = 0.3, correlated from one segment to
//! the next, mean 1) × a small per-representation jitter (σ = 0.05). The QoE counts declared
//! bitrates, as Pensieve's does.
//!
//! **Traces**: the seeded families of [`crate::proto::trace`] (1 s steps unless said; no public
//! trace set is reachable offline, so these are synthetic: shapes after the papers'
//! descriptions, textbook shapes, and shapes drawn to the published statistics of public trace
//! sets, scaled to the ladder; see [`Family`]), or trace files labelled [`Family::File`].
//!
//! **Goal** ([`Goal`]): over all traces our default gains ≥ 10% mean QoE over the throughput
//! rule with no more stall seconds than BOLA, and on no family is it more than 5% below the
//! best other rule.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::proto::abr::{Abr, Ladder, RuleKind};
use crate::proto::player::{Next, PlayerConfig, PlayerCore};
use crate::proto::trace::{normal, Family, Link, Trace};

/// Pensieve's ladder, kbps.
pub const PENSIEVE_LADDER_KBPS: [u64; 6] = [300, 750, 1200, 1850, 2850, 4300];
/// Pensieve's segment duration, seconds.
pub const SEGMENT_S: f64 = 4.0;
/// Segments in the evaluation video (200 s).
pub const VIDEO_SEGMENTS: usize = 50;

/// `per_family` traces of every family, families in table order.
pub fn trace_set(per_family: usize, seed: u64) -> Vec<Trace> {
    trace_set_of(&Family::ALL, per_family, seed)
}

/// `per_family` traces of each of `families`, in the order given (a family's traces do not
/// depend on which others are drawn).
pub fn trace_set_of(families: &[Family], per_family: usize, seed: u64) -> Vec<Trace> {
    families
        .iter()
        .flat_map(|&f| (0..per_family).map(move |i| Trace::generate(f, i, seed)))
        .collect()
}

/// Pensieve's ladder over `segments` VBR segments of 4 s, sizes drawn from `seed` (see the
/// module header), with the measured mean rate of every representation.
pub fn pensieve_video(segments: usize, seed: u64) -> Ladder {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(u64::MAX);
    let segments = segments.clamp(1, crate::proto::abr::MAX_SEGMENTS);
    let mut complexity = Vec::with_capacity(segments);
    let mut x = 0.0;
    for _ in 0..segments {
        x = 0.7 * x + (1.0f64 - 0.49).sqrt() * normal(&mut rng);
        complexity.push((0.3 * x).exp());
    }
    let mean: f64 = complexity.iter().sum::<f64>() / segments as f64;
    let bitrates: Vec<u64> = PENSIEVE_LADDER_KBPS.iter().map(|k| k * 1000).collect();
    let sizes: Vec<Vec<u64>> = bitrates
        .iter()
        .map(|&b| {
            complexity
                .iter()
                .map(|c| {
                    let jitter = (0.05 * normal(&mut rng)).exp();
                    ((b as f64 * SEGMENT_S / 8.0) * c / mean * jitter).round().max(1.0) as u64
                })
                .collect()
        })
        .collect();
    let measured: Vec<u64> = sizes
        .iter()
        .map(|s| (s.iter().sum::<u64>() as f64 * 8.0 / (s.len() as f64 * SEGMENT_S)).round() as u64)
        .collect();
    // The constants above are a valid ascending ladder, and sizes/measured rates are positive.
    Ladder::new(bitrates, SEGMENT_S)
        .and_then(|l| l.with_measured(measured))
        .and_then(|l| l.with_segment_sizes(sizes))
        .expect("Pensieve's ladder is valid")
}

/// Parameters of the simulated player.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SimConfig {
    /// Most seconds of media the buffer holds (Pensieve: 60).
    pub buffer_cap_s: f64,
    /// Seconds between two abandonment checks of a download in flight.
    pub check_interval_s: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig { buffer_cap_s: 60.0, check_interval_s: 0.25 }
    }
}

/// One segment as the simulated player fetched it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SegmentRecord {
    /// Segment index.
    pub index: usize,
    /// Representation played.
    pub rep: usize,
    /// Its declared bitrate, bits per second.
    pub bitrate_bps: u64,
    /// Bytes of the segment at that representation.
    pub bytes: u64,
    /// Seconds from the first request for this segment to its last byte (abandoned tries too).
    pub download_s: f64,
    /// Buffer after it arrived, seconds.
    pub buffer_s: f64,
    /// Whether a download of this segment at a higher representation was abandoned first.
    pub abandoned: bool,
}

/// What one rule did on one trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Session {
    /// The rule's name.
    pub rule: String,
    /// The trace's family.
    pub family: Family,
    /// The trace's index in its family.
    pub trace: usize,
    /// Seconds until the first segment arrived (playback starts then).
    pub startup_s: f64,
    /// Stall events after startup.
    pub stalls: u32,
    /// Seconds stalled after startup.
    pub stall_s: f64,
    /// Representation changes between consecutive segments.
    pub switches: u32,
    /// Mean declared bitrate of the segments played, kbps.
    pub mean_bitrate_kbps: f64,
    /// Pensieve's linear QoE ([`crate::proto::player::qoe`]).
    pub qoe: f64,
    /// Segments abandoned and fetched again lower.
    pub abandons: u32,
    /// Every segment, in order.
    pub segments: Vec<SegmentRecord>,
}

/// The first instant at which `core`'s player time is at least `player_s` (an instant has
/// nanoseconds; rounding down would put a report just before the deadline it is meant for).
fn instant_at_least(core: &PlayerCore, player_s: f64) -> Instant {
    let mut at = core.instant_at(player_s);
    while core.player_time(at) < player_s {
        at += Duration::from_nanos(1);
    }
    at
}

/// Plays the whole video of `ladder` (its known segment count, else [`VIDEO_SEGMENTS`]) over
/// `trace` with `abr` choosing, in virtual time: the [`PlayerCore`] that `swarmcast play` runs
/// decides (waits, requests, abandonments) and keeps the buffer, stalls and QoE; this driver
/// plays the fetcher's part, with the trace's bytes computed instead of received. It reports
/// a download's progress at every abandonment check the core asks for
/// ([`PlayerCore::next_check_s`]), and its end at the instant the trace delivers its last bit.
pub fn simulate(
    abr: Box<dyn Abr + Send>,
    ladder: &Ladder,
    trace: &Trace,
    cfg: &SimConfig,
) -> Session {
    let n = ladder.segments().unwrap_or(VIDEO_SEGMENTS);
    let player_cfg = PlayerConfig {
        buffer_cap_s: cfg.buffer_cap_s,
        check_interval_s: cfg.check_interval_s,
        speed: 1.0,
    };
    // The core needs an `Instant` for player time 0; only differences from it count, and those
    // are exact in nanoseconds, so the wall clock read here does not change any result.
    let origin = Instant::now();
    let seg_s = vec![ladder.segment_duration_s(); n];
    let mut core = PlayerCore::new(abr, ladder.clone(), seg_s, player_cfg, origin);
    let link = Link::new(trace);
    let mut now = origin;
    loop {
        match core.poll_next(now) {
            Next::Done => break,
            Next::WaitUntil(until) => now = until.max(now + Duration::from_nanos(1)),
            Next::Fetch { segment, rep } => {
                let bytes = download(&mut core, &link, &mut now, segment, rep);
                core.handle_video_done(now, bytes);
                core.handle_segment_done(now, bytes, 0, "");
            }
        }
    }
    let report = core.report();
    let segments = report
        .segments
        .iter()
        .map(|s| SegmentRecord {
            index: s.index,
            rep: s.rep,
            bitrate_bps: s.bitrate_bps,
            bytes: s.bytes,
            download_s: s.download_s,
            buffer_s: s.buffer_s,
            abandoned: s.abandoned,
        })
        .collect();
    Session {
        rule: report.abr,
        family: trace.family,
        trace: trace.index,
        startup_s: report.startup_s,
        stalls: report.stalls,
        stall_s: report.stall_s,
        switches: report.switches,
        mean_bitrate_kbps: report.mean_bitrate_kbps,
        qoe: report.qoe,
        abandons: report.abandons,
        segments,
    }
}

/// Downloads `segment` from `rep` on over `link` from `now` on, as the fetcher does: a
/// request, progress at the core's checks, a new request lower when the core abandons.
/// Returns the bytes of the representation that completed; `now` ends at its last byte.
fn download(
    core: &mut PlayerCore,
    link: &Link,
    now: &mut Instant,
    segment: usize,
    mut rep: usize,
) -> u64 {
    let ladder_bytes = |core: &PlayerCore, rep| core.ladder().segment_bytes(rep, segment);
    'attempt: loop {
        core.handle_request_sent(*now);
        let total = ladder_bytes(core, rep);
        let total_bits = total as f64 * 8.0;
        let mut bits = 0.0;
        let mut t = core.player_time(*now);
        loop {
            let check = core.next_check_s().unwrap_or(f64::INFINITY);
            let (rate, change) = link.at(t);
            let finish = t + (total_bits - bits) / rate;
            if finish <= check.min(change) {
                *now = instant_at_least(core, finish);
                return total;
            }
            if change < check {
                bits += rate * (change - t);
                t = change;
                continue;
            }
            bits += rate * (check - t).max(0.0);
            *now = instant_at_least(core, check);
            t = core.player_time(*now);
            if let Some(lower) = core.handle_progress(*now, (bits / 8.0) as u64, total) {
                rep = lower;
                continue 'attempt;
            }
        }
    }
}

/// Means over the sessions of one rule on one family (or on all, `family: None`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The rule.
    pub rule: String,
    /// The family, or `None` for all traces.
    pub family: Option<Family>,
    /// Sessions summed up.
    pub sessions: usize,
    /// Mean QoE per session.
    pub mean_qoe: f64,
    /// Mean stall events per session.
    pub stalls: f64,
    /// Mean stall seconds per session.
    pub stall_s: f64,
    /// Sessions with at least one stall.
    pub sessions_stalled: usize,
    /// Mean switches per session.
    pub switches: f64,
    /// Mean bitrate, kbps.
    pub mean_bitrate_kbps: f64,
    /// Mean startup delay, seconds.
    pub startup_s: f64,
    /// Mean abandoned downloads per session.
    pub abandons: f64,
}

impl Summary {
    fn of(rule: &str, family: Option<Family>, sessions: &[&Session]) -> Summary {
        let k = sessions.len().max(1) as f64;
        let mean = |f: &dyn Fn(&Session) -> f64| sessions.iter().map(|s| f(s)).sum::<f64>() / k;
        Summary {
            rule: rule.to_string(),
            family,
            sessions: sessions.len(),
            mean_qoe: mean(&|s| s.qoe),
            stalls: mean(&|s| s.stalls as f64),
            stall_s: mean(&|s| s.stall_s),
            sessions_stalled: sessions.iter().filter(|s| s.stalls > 0).count(),
            switches: mean(&|s| s.switches as f64),
            mean_bitrate_kbps: mean(&|s| s.mean_bitrate_kbps),
            startup_s: mean(&|s| s.startup_s),
            abandons: mean(&|s| s.abandons as f64),
        }
    }
}

/// Least gain over throughput the goal asks for, over all traces.
pub const GOAL_GAIN: f64 = 0.10;
/// Most the default may fall below the best other rule on any one family.
pub const GOAL_FAMILY_SHORTFALL: f64 = 0.05;

/// The goal, measured: our default against the throughput rule and BOLA over all
/// traces, and against the best other rule on every family.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Goal {
    /// The rule checked (our default).
    pub rule: String,
    /// (its mean QoE − the throughput rule's) / |the throughput rule's|.
    pub qoe_gain_vs_throughput: f64,
    /// Its mean stall seconds per session.
    pub stall_s: f64,
    /// BOLA's mean stall seconds per session.
    pub bola_stall_s: f64,
    /// Per family present: how it compares with the best other rule there.
    pub families: Vec<FamilyGap>,
    /// Gain ≥ [`GOAL_GAIN`], stall seconds ≤ BOLA's, and on no family more than
    /// [`GOAL_FAMILY_SHORTFALL`] below the best other rule.
    pub met: bool,
}

/// Our default against the best other rule on one family.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FamilyGap {
    /// The family.
    pub family: Family,
    /// The other rule with the highest mean QoE on it.
    pub best_other: String,
    /// (our mean QoE − the best other's) / |the best other's|: negative when below.
    pub gap: f64,
}

impl Goal {
    /// The family where the default falls furthest below the best other rule (or leads least).
    pub fn worst_family(&self) -> Option<&FamilyGap> {
        self.families.iter().min_by(|a, b| a.gap.total_cmp(&b.gap))
    }
}

/// Every rule on the same traces: sessions and summaries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The seed of the traces and the videos.
    pub seed: u64,
    /// Traces per family (with `--trace-dir`: the files read).
    pub traces_per_family: usize,
    /// Segments of the video.
    pub segments: usize,
    /// The player's parameters.
    pub config: SimConfig,
    /// Per family then all traces, rules in the order given.
    pub summaries: Vec<Summary>,
    /// The goal check, when the default rule, throughput and BOLA all ran.
    pub goal: Option<Goal>,
    /// Every session.
    pub sessions: Vec<Session>,
    /// With `--trace-dir`: the file of each trace, by index (absent otherwise).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trace_files: Vec<String>,
}

/// The video played on `trace`: Pensieve's ladder with VBR sizes drawn from `seed` and the
/// trace's family and index (each trace has its own video, so no one video's hard scenes weigh
/// on every session).
pub fn video_for(trace: &Trace, seed: u64) -> Ladder {
    let stream = (trace.family as u64) << 32 | trace.index as u64;
    pensieve_video(VIDEO_SEGMENTS, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream)
}

/// Plays every trace of `per_family` per family drawn from `seed` with a fresh rule from
/// `build` each time.
pub fn play_all(
    build: &dyn Fn() -> Box<dyn Abr + Send>,
    per_family: usize,
    seed: u64,
    cfg: &SimConfig,
) -> Vec<Session> {
    play_traces(build, &trace_set(per_family, seed), seed, cfg)
}

/// Plays every trace of `traces` with a fresh rule from `build` each time, each on its own
/// video ([`video_for`] with `seed`).
pub fn play_traces(
    build: &dyn Fn() -> Box<dyn Abr + Send>,
    traces: &[Trace],
    seed: u64,
    cfg: &SimConfig,
) -> Vec<Session> {
    traces.iter().map(|trace| simulate(build(), &video_for(trace, seed), trace, cfg)).collect()
}

/// Runs every rule of `rules` over `per_family` traces of every family drawn from `seed`, each
/// trace with its own Pensieve video ([`video_for`]).
pub fn evaluate(rules: &[RuleKind], per_family: usize, seed: u64, cfg: &SimConfig) -> Report {
    evaluate_traces(rules, &trace_set(per_family, seed), seed, cfg)
}

/// [`evaluate`] on the families of `families` only (a family's sessions are the same as in a
/// run over all of them).
pub fn evaluate_families(
    rules: &[RuleKind],
    families: &[Family],
    per_family: usize,
    seed: u64,
    cfg: &SimConfig,
) -> Report {
    evaluate_traces(rules, &trace_set_of(families, per_family, seed), seed, cfg)
}

/// Runs every rule of `rules` over `traces` (from files: label them [`Family::File`], index in
/// order), each trace with its own Pensieve video drawn from `seed` ([`video_for`]). The table
/// has a block per family present, then one over all traces.
pub fn evaluate_traces(rules: &[RuleKind], traces: &[Trace], seed: u64, cfg: &SimConfig) -> Report {
    let mut sessions = Vec::new();
    for &rule in rules {
        sessions.extend(play_traces(&|| rule.build(), traces, seed, cfg));
    }
    let order = || Family::ALL.into_iter().chain([Family::File]);
    let count = |f: Family| traces.iter().filter(|t| t.family == f).count();
    let present: Vec<Family> = order().filter(|&f| count(f) > 0).collect();
    let per_family = order().map(count).max().unwrap_or(0);
    let mut summaries = Vec::new();
    let families = present.iter().copied().map(Some).chain([None]);
    for family in families {
        for &rule in rules {
            let of: Vec<&Session> = sessions
                .iter()
                .filter(|s| s.rule == rule.name() && family.is_none_or(|f| s.family == f))
                .collect();
            summaries.push(Summary::of(rule.name(), family, &of));
        }
    }
    let overall =
        |k: RuleKind| summaries.iter().find(|s| s.family.is_none() && s.rule == k.name()).cloned();
    let goal = match (
        overall(RuleKind::DEFAULT),
        overall(RuleKind::Throughput),
        overall(RuleKind::Bola),
    ) {
        (Some(ours), Some(thr), Some(bola)) => {
            let gain = (ours.mean_qoe - thr.mean_qoe) / thr.mean_qoe.abs().max(1e-9);
            let families: Vec<FamilyGap> = present
                .iter()
                .filter_map(|&f| {
                    let of = |s: &&Summary| s.family == Some(f);
                    let mine = summaries.iter().filter(of).find(|s| s.rule == ours.rule)?;
                    let best = summaries
                        .iter()
                        .filter(of)
                        .filter(|s| s.rule != ours.rule)
                        .max_by(|a, b| a.mean_qoe.total_cmp(&b.mean_qoe))?;
                    Some(FamilyGap {
                        family: f,
                        best_other: best.rule.clone(),
                        gap: (mine.mean_qoe - best.mean_qoe) / best.mean_qoe.abs().max(1e-9),
                    })
                })
                .collect();
            let families_ok = families.iter().all(|g| g.gap >= -GOAL_FAMILY_SHORTFALL);
            Some(Goal {
                rule: ours.rule,
                qoe_gain_vs_throughput: gain,
                stall_s: ours.stall_s,
                bola_stall_s: bola.stall_s,
                met: gain >= GOAL_GAIN && ours.stall_s <= bola.stall_s && families_ok,
                families,
            })
        }
        _ => None,
    };
    Report {
        seed,
        traces_per_family: per_family,
        segments: VIDEO_SEGMENTS,
        config: *cfg,
        summaries,
        goal,
        sessions,
        trace_files: Vec::new(),
    }
}

impl Report {
    /// The comparison as a text table (QoE and stalls are means per session).
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<11} {:<10} {:>5} {:>8} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "traces",
            "rule",
            "runs",
            "QoE",
            "vs thr",
            "stalls",
            "stall s",
            "stalled",
            "switches",
            "kbps",
            "startup"
        );
        for s in &self.summaries {
            let thr = self
                .summaries
                .iter()
                .find(|t| t.family == s.family && t.rule == RuleKind::Throughput.name());
            let vs = thr.map_or(String::from("-"), |t| {
                format!("{:+.1}%", 100.0 * (s.mean_qoe - t.mean_qoe) / t.mean_qoe.abs().max(1e-9))
            });
            let _ = writeln!(
                out,
                "{:<11} {:<10} {:>5} {:>8.2} {:>7} {:>7.2} {:>8.2} {:>8} {:>8.2} {:>8.0} {:>8.2}",
                s.family.map_or("all", Family::name),
                s.rule,
                s.sessions,
                s.mean_qoe,
                vs,
                s.stalls,
                s.stall_s,
                s.sessions_stalled,
                s.switches,
                s.mean_bitrate_kbps,
                s.startup_s
            );
        }
        if let Some(g) = &self.goal {
            let worst = g.worst_family().map_or(String::from("-"), |w| {
                format!("{:+.1}% on {} vs {}", 100.0 * w.gap, w.family.name(), w.best_other)
            });
            let _ = writeln!(
                out,
                "goal ({}): QoE {:+.1}% vs throughput (need >= +{:.0}%), stall {:.2} s vs BOLA {:.2} s per session, worst family {} (need >= -{:.0}%): {}",
                g.rule,
                100.0 * g.qoe_gain_vs_throughput,
                100.0 * GOAL_GAIN,
                g.stall_s,
                g.bola_stall_s,
                worst,
                100.0 * GOAL_FAMILY_SHORTFALL,
                if g.met { "met" } else { "NOT met" }
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::abr::{PlayerState, Progress, ThroughputSample};
    use crate::proto::trace::TracePoint;

    /// Always picks one representation.
    struct Fixed(usize);

    impl Abr for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }
        fn record(&mut self, _: ThroughputSample) {}
        fn choose(&mut self, _: &Ladder, _: &PlayerState) -> usize {
            self.0
        }
        fn abandon(&mut self, _: &Ladder, _: &Progress) -> Option<usize> {
            None
        }
    }

    /// One 1 Mbps representation, `n` CBR segments of 4 s (500 kB each).
    fn cbr(n: usize) -> Ladder {
        Ladder::new(vec![1_000_000], 4.0)
            .unwrap()
            .with_segment_sizes(vec![vec![500_000; n]])
            .unwrap()
    }

    #[test]
    fn fast_constant_link_starts_exactly_and_never_stalls() {
        let trace = Trace::constant(2_000_000.0).unwrap();
        let s = simulate(Box::new(Fixed(0)), &cbr(10), &trace, &SimConfig::default());
        // 4 Mb at 2 Mbps: 2 s per segment.
        assert!((s.startup_s - 2.0).abs() < 1e-9);
        assert_eq!(s.stalls, 0);
        assert_eq!(s.stall_s, 0.0);
        assert_eq!(s.switches, 0);
        assert!((s.qoe - 10.0).abs() < 1e-9);
        // The buffer grows by 2 s per segment: 4, 6, 8, ...
        assert!((s.segments[2].buffer_s - 8.0).abs() < 1e-9);
    }

    #[test]
    fn slow_constant_link_stalls_exactly() {
        // 4 Mb at 0.5 Mbps: 8 s per segment, 4 s of media each: after startup (8 s) every
        // further segment stalls 4 s. Three segments: two stalls, 8 s.
        let trace = Trace::constant(500_000.0).unwrap();
        let s = simulate(Box::new(Fixed(0)), &cbr(3), &trace, &SimConfig::default());
        assert!((s.startup_s - 8.0).abs() < 1e-9);
        assert_eq!(s.stalls, 2);
        assert!((s.stall_s - 8.0).abs() < 1e-9);
        assert!((s.qoe - (3.0 - 4.3 * 8.0)).abs() < 1e-9);
    }

    #[test]
    fn buffer_cap_makes_the_player_wait() {
        // 40 Mbps: 0.1 s per segment; the buffer never passes 60 s.
        let trace = Trace::constant(40_000_000.0).unwrap();
        let s = simulate(Box::new(Fixed(0)), &cbr(30), &trace, &SimConfig::default());
        let most = s.segments.iter().map(|r| r.buffer_s).fold(0.0, f64::max);
        assert!(most <= 60.0 + 1e-9 && most > 59.0);
        assert_eq!(s.stalls, 0);
    }

    #[test]
    fn trace_steps_are_integrated_exactly() {
        // 2 s at 1 Mbps then 4 Mbps: a 4 Mb segment takes 2 s (2 Mb) + 0.5 s (2 Mb).
        let trace = Trace::new(
            Family::Steps,
            0,
            vec![
                TracePoint { duration_s: 2.0, bps: 1e6 },
                TracePoint { duration_s: 100.0, bps: 4e6 },
            ],
        )
        .unwrap();
        let s = simulate(Box::new(Fixed(0)), &cbr(1), &trace, &SimConfig::default());
        assert!((s.startup_s - 2.5).abs() < 1e-9);
    }

    #[test]
    fn abandonment_refetches_lower() {
        // Two representations; the top one's segment would take 32 s at 0.5 Mbps.
        let l = Ladder::new(vec![300_000, 4_000_000], 4.0)
            .unwrap()
            .with_segment_sizes(vec![vec![150_000; 3], vec![2_000_000; 3]])
            .unwrap();
        let trace = Trace::constant(500_000.0).unwrap();
        let mut abr = crate::proto::abr::Hybrid::default();
        abr.record(ThroughputSample { bytes: 10_000_000, duration_s: 1.0 });
        let s = simulate(Box::new(abr), &l, &trace, &SimConfig::default());
        assert!(s.abandons >= 1);
        assert!(s.segments.iter().any(|r| r.abandoned && r.rep == 0));
    }

    #[test]
    fn a_link_above_the_top_rung_ends_on_the_top_rung_without_a_stall() {
        // 20 Mbps, well above Pensieve's 4.3 Mbps top: the default rule must climb to it.
        let trace = Trace::constant(20_000_000.0).unwrap();
        let video = pensieve_video(VIDEO_SEGMENTS, 3);
        let s = simulate(RuleKind::DEFAULT.build(), &video, &trace, &SimConfig::default());
        assert_eq!(s.segments.len(), VIDEO_SEGMENTS);
        assert_eq!(s.segments.last().unwrap().rep, video.top());
        assert_eq!(s.stalls, 0);
        assert_eq!(s.stall_s, 0.0);
    }

    #[test]
    fn trace_files_are_evaluated_as_their_own_family() {
        // A trace as `play --trace` reads it, 20 Mbps: every rule ends on the top rung.
        let parsed = crate::player::parse_trace("60 20000000\n").unwrap();
        let trace = Trace::new(Family::File, 0, parsed.points().to_vec()).unwrap();
        let r = evaluate_traces(&RuleKind::ALL, &[trace], 1, &SimConfig::default());
        assert_eq!(r.sessions.len(), RuleKind::ALL.len());
        assert_eq!(r.traces_per_family, 1);
        let families: Vec<Option<Family>> = r.summaries.iter().map(|s| s.family).collect();
        assert!(families.iter().all(|f| *f == Some(Family::File) || f.is_none()));
        assert!(r.table().contains("file "));
        for s in &r.sessions {
            assert_eq!(s.family, Family::File);
            assert_eq!(s.stalls, 0, "{}", s.rule);
            assert_eq!(
                s.segments.last().unwrap().rep,
                PENSIEVE_LADDER_KBPS.len() - 1,
                "{}",
                s.rule
            );
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_json() {
        let a = evaluate(&RuleKind::ALL, 2, 9, &SimConfig::default());
        let b = evaluate(&RuleKind::ALL, 2, 9, &SimConfig::default());
        assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
        let c = evaluate(&RuleKind::ALL, 2, 10, &SimConfig::default());
        assert_ne!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&c).unwrap());
    }

    #[test]
    fn every_family_is_deterministic_and_independent_of_the_others() {
        let cfg = SimConfig::default();
        // The seven families after the first four.
        let added = &Family::ALL[4..];
        assert_eq!(added[0], Family::Markov);
        let a = evaluate_families(&RuleKind::ALL, added, 1, 4, &cfg);
        let b = evaluate_families(&RuleKind::ALL, added, 1, 4, &cfg);
        assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
        assert_eq!(a.sessions.len(), added.len() * RuleKind::ALL.len());
        // A family played alone gives the sessions it gives among the others, and among all.
        let all = evaluate(&RuleKind::ALL, 1, 4, &cfg);
        for &f in added {
            let alone = evaluate_families(&RuleKind::ALL, &[f], 1, 4, &cfg);
            for s in &alone.sessions {
                assert!(a.sessions.contains(s), "{} {}", f.name(), s.rule);
                assert!(all.sessions.contains(s), "{} {}", f.name(), s.rule);
            }
        }
        // Another seed, other sessions.
        let c = evaluate_families(&RuleKind::ALL, added, 1, 5, &cfg);
        for &f in added {
            let of = |r: &Report| -> Vec<Session> {
                r.sessions.iter().filter(|s| s.family == f).cloned().collect()
            };
            assert_ne!(of(&a), of(&c), "{}", f.name());
        }
    }

    #[test]
    fn the_goal_checks_every_family_against_the_best_other_rule() {
        let r = evaluate_families(
            &RuleKind::ALL,
            &[Family::Low, Family::Step],
            1,
            3,
            &SimConfig::default(),
        );
        let g = r.goal.as_ref().unwrap();
        assert_eq!(g.families.len(), 2);
        for gap in &g.families {
            let of = |rule: &str| {
                r.summaries
                    .iter()
                    .find(|s| s.family == Some(gap.family) && s.rule == rule)
                    .unwrap()
                    .mean_qoe
            };
            let best = RuleKind::ALL
                .iter()
                .filter(|k| **k != RuleKind::DEFAULT)
                .map(|k| of(k.name()))
                .fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(of(&gap.best_other), best);
            let want = (of(RuleKind::DEFAULT.name()) - best) / best.abs();
            assert!((gap.gap - want).abs() < 1e-12);
        }
        let worst = g.worst_family().unwrap().gap;
        assert!(g.families.iter().all(|f| f.gap >= worst));
        if worst < -GOAL_FAMILY_SHORTFALL {
            assert!(!g.met);
        }
        assert!(r.table().contains("worst family"));
    }

    #[test]
    fn pensieve_video_is_deterministic_in_the_seed() {
        assert_eq!(pensieve_video(50, 1), pensieve_video(50, 1));
    }

    #[test]
    fn evaluation_runs_every_rule_on_the_same_traces() {
        let r = evaluate(&RuleKind::ALL, 1, 5, &SimConfig::default());
        let families = Family::ALL.len();
        assert_eq!(r.sessions.len(), families * 4);
        assert_eq!(r.summaries.len(), (families + 1) * 4);
        assert_eq!(r.goal.as_ref().unwrap().families.len(), families);
        assert!(r.goal.is_some());
        assert!(r.table().contains("hybrid"));
        let again = evaluate(&RuleKind::ALL, 1, 5, &SimConfig::default());
        assert_eq!(r, again);
    }
}
