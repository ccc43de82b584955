//! Bandwidth traces (sans-IO): the piecewise-constant [`Trace`] that `swarmcast play --trace`
//! throttles to and `stream eval` plays, its seeded generators ([`Trace::generate`], one per
//! [`Family`]), the trace as a [`Link`], and [`TracePacer`], which says when bytes may be taken
//! over a trace.
//!
//! **Families** (1 s steps unless said; no public trace set is reachable offline, so these are
//! synthetic shapes: `steps`, `walk`, `3g` and `4g` after the papers' descriptions; `markov`,
//! `step`, `oscillation` and `low` textbook shapes with stated parameters; `hsdpa`, `lte` and
//! `broadband` drawn to the published statistics of public trace sets, scaled to the ladder
//! `stream eval` plays; see [`Family`]). A generated trace lasts [`TRACE_S`] seconds and loops,
//! as every trace does when a session outlasts it.
//!
//! Nothing here reads a clock: times are player seconds passed in; randomness comes from a
//! seeded ChaCha stream.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Seconds each generated trace lasts before it loops.
pub const TRACE_S: usize = 400;
/// Most points a trace may have (traces can come from files).
pub const MAX_TRACE_POINTS: usize = 1 << 20;

/// A trace that cannot drive the simulator.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TraceError {
    /// No point, or more than [`MAX_TRACE_POINTS`].
    #[error("a trace needs 1..={MAX_TRACE_POINTS} points, got {0}")]
    BadLength(usize),
    /// A point with a non-positive or non-finite duration or rate.
    #[error("trace point {0} needs a positive, finite duration and rate")]
    BadPoint(usize),
}

/// The shapes of bandwidth the traces follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Steps: a level held 20–60 s, drawn from 0.35, 0.6, 1.0, 1.6, 2.5, 4 and 6 Mbps.
    Steps,
    /// A random walk in log-bandwidth, every second × e^N(0, 0.12), reflected into 0.2–8 Mbps.
    Walk,
    /// 3G-like (after the Norwegian HSDPA commute logs of Riiser et al. 2013 that Pensieve and
    /// MPC use): a log-AR(1) level around 1.2 Mbps clamped to 0.2–3 Mbps, per-second jitter
    /// (σ = 0.2), and frequent deep dips (5% of seconds start an outage of 1–6 s at 30–150
    /// kbps: tunnels, handovers).
    #[serde(rename = "3g")]
    Cellular3g,
    /// 4G-like (after the Belgian LTE logs of van der Hooft et al. 2016): a log-AR(1) level
    /// around 12 Mbps clamped to 2–40 Mbps, high variance (σ = 0.3 jitter per second), and
    /// dips (2% of seconds start 1–3 s at 0.3–1.5 Mbps).
    #[serde(rename = "4g")]
    Lte4g,
    /// Read from a file (`stream eval --trace-dir`). It has no shape of its own:
    /// [`Trace::generate`] draws steps for it.
    File,
    // The families below come after `File` so that the discriminants of the first five (which
    // seed their traces and videos) stay as they were: old reports stay reproducible.
    /// Markov-modulated: five bandwidth states 0.5, 1, 2, 4 and 8 Mbps (an octave apart,
    /// spanning Pensieve's 0.3–4.3 Mbps ladder from below its second rung to above its top),
    /// the first drawn uniformly. A state is held for an exponential time of mean 20 s
    /// ([`MARKOV_HOLD_S`]; ~10 changes in a 200 s session); the next state is any other, chosen
    /// with weight 2^-distance (neighbours most likely, a fall from 8 to 0.5 Mbps possible).
    /// Within a state, every second (a shorter last piece when the state ends) is the state's
    /// rate × a mean-1 log-normal factor, σ = 0.15. The parameters are ours; the construction
    /// is that of the synthetic Markov traces of MPC (Yin et al., SIGCOMM 2015) and Pensieve
    /// (Mao et al., SIGCOMM 2017), with exponential holds and log-normal rather than Gaussian
    /// noise (never negative).
    Markov,
    /// A step drop, the classic reaction test: a constant high rate H (uniform 2.5–6 Mbps, so
    /// the top rung is sustainable before the drop) until the drop time (uniform 30–90 s: the
    /// buffer is partly built), then f × H (f uniform 0.10–0.35: 0.25–2.1 Mbps) for 20–80 s,
    /// after which it comes back to H (with chance 0.6) or stays low to the end of the trace.
    /// No noise, so the reaction itself is measured. Parameters are ours.
    Step,
    /// A square wave between a high rate H (uniform 2–5 Mbps) and L = H × (0.2–0.4), half a
    /// period each, with a period uniform in 20–60 s (several to fifteen segments: slower than
    /// one download, fast enough to fool an average) and a uniform phase. No noise. Parameters
    /// are ours.
    Oscillation,
    /// A low constant rate, uniform 0.4–0.9 Mbps: around the ladder's second rung (750 kbps),
    /// whose complex scenes need up to ~2× its rate: the test is to stay low without stalling
    /// and take 750 kbps only when it holds. Parameters are ours.
    Low,
    /// 3G-like, drawn to the published statistics of the Norwegian HSDPA commute logs (Riiser et
    /// al., MMSys 2013: Telenor's 3G/HSDPA network around Oslo, 1 s samples along metro, tram,
    /// train, bus, ferry and car routes; route means around 1–2 Mbps, samples from 0 in tunnels
    /// up to ~5–6 Mbps, high variance, outages of seconds to tens of seconds; numbers as
    /// reported in the paper and the papers that use the set, not recomputed here). Used: a
    /// per-trace mean log-uniform in 0.8–2.5 Mbps (a route; mean of means ~1.5 Mbps) × a
    /// mean-1 log-normal fading (log-AR(1), 0.95 per second: fades of tens of seconds;
    /// stationary σ = 0.55: coefficient of variation ~0.6), capped at 6 Mbps; outages start at
    /// 1/150 per second and last 2–15 s at 1–5% of the trace's mean (tunnels, handovers).
    /// No scaling: the set already sits on Pensieve's ladder (Pensieve evaluates on it).
    Hsdpa,
    /// 4G/LTE-like, drawn to the published statistics of the Belgian 4G/LTE logs (van der Hooft
    /// et al., IEEE Communications Letters 2016: 40 logs in and around Ghent, on foot, bicycle,
    /// bus, tram, train and car; means of tens of Mbps, samples from 0 up to ~95 Mbps, a wide
    /// spread; numbers as reported, not recomputed here), then **scaled by 0.1** to Pensieve's
    /// ladder (whose top is 4.3 Mbps: unscaled, every rule would sit on the top rung and the
    /// family would test nothing). Used, after scaling: a per-trace mean log-uniform in
    /// 1–5 Mbps (10–50 Mbps unscaled), a mean-1 log-normal fading (log-AR(1), 0.85 per second:
    /// faster than 3G; stationary σ = 0.6: coefficient of variation ~0.65), capped at 9.5 Mbps
    /// (95); drops start at 1/120 per second and last 1–4 s at 2–10% of the mean (handovers).
    Lte,
    /// Broadband-like, drawn to the published statistics of the FCC's Measuring Broadband
    /// America (fixed lines, DSL to fibre: steady rates close to the subscribed tier, tiers
    /// from a few Mbps to tens and beyond, small variation, occasional congestion). The rate is
    /// chosen as Pensieve chose its FCC traces (Mao et al. 2017 kept those with a mean of
    /// 0.2–6 Mbps, so the ladder is tested rather than topped): a per-trace mean log-uniform in
    /// 0.5–6 Mbps (0.5 rather than 0.2: below the lowest rung every rule stalls alike and the
    /// session says nothing about the rule), a mean-1 log-normal wobble (log-AR(1), 0.9 per
    /// second, stationary σ = 0.06: coefficient of variation ~6%), and congestion episodes
    /// starting at 1/200 per second, 5–20 s at 50–80% of the mean.
    Broadband,
}

impl Family {
    /// Every generated family, in table order.
    pub const ALL: [Family; 11] = [
        Family::Steps,
        Family::Walk,
        Family::Cellular3g,
        Family::Lte4g,
        Family::Markov,
        Family::Step,
        Family::Oscillation,
        Family::Low,
        Family::Hsdpa,
        Family::Lte,
        Family::Broadband,
    ];

    /// The family `name` names ([`Family::name`]; `file` included), if any.
    pub fn from_name(name: &str) -> Option<Family> {
        Family::ALL.into_iter().chain([Family::File]).find(|f| f.name().eq_ignore_ascii_case(name))
    }

    /// Its short name.
    pub fn name(self) -> &'static str {
        match self {
            Family::Steps => "steps",
            Family::Walk => "walk",
            Family::Cellular3g => "3g",
            Family::Lte4g => "4g",
            Family::File => "file",
            Family::Markov => "markov",
            Family::Step => "step",
            Family::Oscillation => "oscillation",
            Family::Low => "low",
            Family::Hsdpa => "hsdpa",
            Family::Lte => "lte",
            Family::Broadband => "broadband",
        }
    }
}

/// One piece of a trace: `bps` for `duration_s` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TracePoint {
    /// How long the rate holds, seconds.
    pub duration_s: f64,
    /// Bandwidth, bits per second.
    pub bps: f64,
}

/// A piecewise-constant bandwidth trace (it loops when a session outlasts it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trace {
    /// The family it was drawn from.
    pub family: Family,
    /// Its index in the family.
    pub index: usize,
    points: Vec<TracePoint>,
}

impl Trace {
    /// A trace from its points (checked: every duration and rate positive and finite).
    pub fn new(family: Family, index: usize, points: Vec<TracePoint>) -> Result<Self, TraceError> {
        if points.is_empty() || points.len() > MAX_TRACE_POINTS {
            return Err(TraceError::BadLength(points.len()));
        }
        for (i, p) in points.iter().enumerate() {
            let ok = |v: f64| v.is_finite() && v > 0.0;
            if !ok(p.duration_s) || !ok(p.bps) {
                return Err(TraceError::BadPoint(i));
            }
        }
        Ok(Trace { family, index, points })
    }

    /// A constant trace (labelled as steps).
    pub fn constant(bps: f64) -> Result<Self, TraceError> {
        Trace::new(Family::Steps, 0, vec![TracePoint { duration_s: 3600.0, bps }])
    }

    /// Its points.
    pub fn points(&self) -> &[TracePoint] {
        &self.points
    }

    /// Time-weighted mean bandwidth, bits per second.
    pub fn mean_bps(&self) -> f64 {
        let t: f64 = self.points.iter().map(|p| p.duration_s).sum();
        self.points.iter().map(|p| p.duration_s * p.bps).sum::<f64>() / t
    }

    /// Draws trace `index` of `family`; the same `(family, index, seed)` gives the same trace.
    pub fn generate(family: Family, index: usize, seed: u64) -> Trace {
        let mut rng = family_rng(family, index, seed);
        let points = match family {
            Family::Steps | Family::File => steps(&mut rng),
            Family::Walk => walk(&mut rng),
            Family::Cellular3g => cellular(&mut rng, &CELL_3G),
            Family::Lte4g => cellular(&mut rng, &CELL_4G),
            Family::Markov => {
                let path = markov_path(&mut rng);
                markov_points(&mut rng, &path)
            }
            Family::Step => step(&mut rng),
            Family::Oscillation => oscillation(&mut rng),
            Family::Low => low(&mut rng),
            Family::Hsdpa => fading(&mut rng, &HSDPA),
            Family::Lte => fading(&mut rng, &LTE),
            Family::Broadband => fading(&mut rng, &BROADBAND),
        };
        // Every generator clamps its rates to a positive range and uses positive durations.
        Trace::new(family, index, points).expect("generated traces are valid")
    }
}

/// The random stream of trace `index` of `family` under `seed`.
fn family_rng(family: Family, index: usize, seed: u64) -> ChaCha8Rng {
    let stream = (family as u64) << 32 | index as u64;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// An exponential draw of mean `mean` (inverse CDF; 1 - u is in (0, 1]).
fn exponential(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
    let u: f64 = rng.random();
    -mean * (1.0 - u).ln()
}

/// A draw log-uniform in `lo..hi`.
fn log_uniform(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    rng.random_range(lo.ln()..hi.ln()).exp()
}

/// A standard normal draw (Box–Muller); the evaluation's VBR sizes use it too.
pub(crate) fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller; 1 - u keeps the logarithm's argument in (0, 1].
    let u: f64 = rng.random();
    let v: f64 = rng.random();
    (-2.0 * (1.0 - u).ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

fn steps(rng: &mut ChaCha8Rng) -> Vec<TracePoint> {
    const LEVELS_MBPS: [f64; 7] = [0.35, 0.6, 1.0, 1.6, 2.5, 4.0, 6.0];
    let mut points = Vec::new();
    let mut t = 0.0;
    while t < TRACE_S as f64 {
        let hold = rng.random_range(20..=60) as f64;
        let level = LEVELS_MBPS[rng.random_range(0..LEVELS_MBPS.len())];
        points.push(TracePoint { duration_s: hold, bps: level * 1e6 });
        t += hold;
    }
    points
}

fn walk(rng: &mut ChaCha8Rng) -> Vec<TracePoint> {
    let (lo, hi) = (0.2e6f64.ln(), 8e6f64.ln());
    let mut x = rng.random_range(0.5e6f64.ln()..5e6f64.ln());
    (0..TRACE_S)
        .map(|_| {
            x += 0.12 * normal(rng);
            if x < lo {
                x = 2.0 * lo - x;
            }
            if x > hi {
                x = 2.0 * hi - x;
            }
            TracePoint { duration_s: 1.0, bps: x.clamp(lo, hi).exp() }
        })
        .collect()
}

/// Parameters of the cellular shapes.
struct Cellular {
    mean_bps: f64,
    min_bps: f64,
    max_bps: f64,
    /// AR(1) coefficient of the log level per second.
    ar: f64,
    /// Innovation σ of the log level per second.
    sigma: f64,
    /// σ of the per-second jitter around the level.
    jitter: f64,
    /// Chance that a second starts a dip.
    dip_chance: f64,
    /// Dip length range, seconds.
    dip_s: (u32, u32),
    /// Dip rate range, bits per second.
    dip_bps: (f64, f64),
}

const CELL_3G: Cellular = Cellular {
    mean_bps: 1.2e6,
    min_bps: 0.2e6,
    max_bps: 3.0e6,
    ar: 0.9,
    sigma: 0.25,
    jitter: 0.2,
    dip_chance: 0.05,
    dip_s: (1, 6),
    dip_bps: (30e3, 150e3),
};

const CELL_4G: Cellular = Cellular {
    mean_bps: 12e6,
    min_bps: 2e6,
    max_bps: 40e6,
    ar: 0.85,
    sigma: 0.35,
    jitter: 0.3,
    dip_chance: 0.02,
    dip_s: (1, 3),
    dip_bps: (0.3e6, 1.5e6),
};

fn cellular(rng: &mut ChaCha8Rng, c: &Cellular) -> Vec<TracePoint> {
    let mean = c.mean_bps.ln();
    let mut x = mean + c.sigma / (1.0 - c.ar * c.ar).sqrt() * normal(rng);
    let mut dip_left = 0;
    let mut dip_rate = 0.0;
    (0..TRACE_S)
        .map(|_| {
            x = mean + c.ar * (x - mean) + c.sigma * normal(rng);
            let level = x.exp().clamp(c.min_bps, c.max_bps);
            if dip_left == 0 && rng.random_bool(c.dip_chance) {
                dip_left = rng.random_range(c.dip_s.0..=c.dip_s.1);
                dip_rate = rng.random_range(c.dip_bps.0..c.dip_bps.1);
            }
            let bps = if dip_left > 0 {
                dip_left -= 1;
                dip_rate
            } else {
                (level * (c.jitter * normal(rng)).exp()).clamp(c.min_bps, c.max_bps)
            };
            TracePoint { duration_s: 1.0, bps }
        })
        .collect()
}

/// The states of [`Family::Markov`], bits per second.
pub const MARKOV_BPS: [f64; 5] = [0.5e6, 1e6, 2e6, 4e6, 8e6];
/// Mean holding time of a [`Family::Markov`] state, seconds.
pub const MARKOV_HOLD_S: f64 = 20.0;
/// σ of the log-normal noise within a [`Family::Markov`] state.
const MARKOV_SIGMA: f64 = 0.15;
/// Shortest hold (an exponential draw can be ~0; a point needs a positive duration).
const MARKOV_MIN_HOLD_S: f64 = 0.05;

/// The state path of a [`Family::Markov`] trace: (state, seconds held), covering [`TRACE_S`].
fn markov_path(rng: &mut ChaCha8Rng) -> Vec<(usize, f64)> {
    let n = MARKOV_BPS.len();
    let mut state = rng.random_range(0..n);
    let mut path = Vec::new();
    let mut t = 0.0;
    while t < TRACE_S as f64 {
        let hold = exponential(rng, MARKOV_HOLD_S).max(MARKOV_MIN_HOLD_S).min(TRACE_S as f64 - t);
        path.push((state, hold));
        t += hold;
        // The next state: any other, weight 2^-distance.
        let weight =
            |j: usize| if j == state { 0.0 } else { 0.5f64.powi(j.abs_diff(state) as i32) };
        let total: f64 = (0..n).map(weight).sum();
        let mut pick = rng.random_range(0.0..total);
        let mut next = if state == 0 { 1 } else { 0 };
        for j in 0..n {
            let w = weight(j);
            if w > 0.0 {
                next = j;
                if pick < w {
                    break;
                }
                pick -= w;
            }
        }
        state = next;
    }
    path
}

/// The points of a [`Family::Markov`] trace along `path`: 1 s pieces (a shorter last one),
/// each the state's rate × a mean-1 log-normal factor.
fn markov_points(rng: &mut ChaCha8Rng, path: &[(usize, f64)]) -> Vec<TracePoint> {
    let mut points = Vec::new();
    for &(state, hold) in path {
        let mut left = hold;
        while left > 1e-9 {
            let d = left.min(1.0);
            let noise = (MARKOV_SIGMA * normal(rng) - MARKOV_SIGMA * MARKOV_SIGMA / 2.0).exp();
            points.push(TracePoint { duration_s: d, bps: MARKOV_BPS[state] * noise });
            left -= d;
        }
    }
    points
}

/// A [`Family::Step`] trace: high, a drop to a fraction, maybe back.
fn step(rng: &mut ChaCha8Rng) -> Vec<TracePoint> {
    let high = rng.random_range(2.5e6..6e6);
    let drop_at = rng.random_range(30.0..90.0);
    let low = high * rng.random_range(0.10..0.35);
    let low_s = rng.random_range(20.0..80.0);
    let back = rng.random_bool(0.6);
    let end = TRACE_S as f64;
    let mut points = vec![TracePoint { duration_s: drop_at, bps: high }];
    if back {
        points.push(TracePoint { duration_s: low_s, bps: low });
        points.push(TracePoint { duration_s: end - drop_at - low_s, bps: high });
    } else {
        points.push(TracePoint { duration_s: end - drop_at, bps: low });
    }
    points
}

/// A [`Family::Oscillation`] trace: a square wave, high half first, from a random phase.
fn oscillation(rng: &mut ChaCha8Rng) -> Vec<TracePoint> {
    let period: f64 = rng.random_range(20.0..60.0);
    let high = rng.random_range(2e6..5e6);
    let low = high * rng.random_range(0.2..0.4);
    let phase = rng.random_range(0.0..period);
    let half = period / 2.0;
    let end = TRACE_S as f64;
    // The piece the phase falls in, then whole half periods, the last one cut at the end.
    let (mut is_high, first) =
        if phase < half { (true, half - phase) } else { (false, period - phase) };
    let mut points = Vec::new();
    let mut t = 0.0;
    let mut d = first;
    while t < end - 1e-9 {
        let d_here = d.min(end - t);
        points.push(TracePoint { duration_s: d_here, bps: if is_high { high } else { low } });
        t += d_here;
        is_high = !is_high;
        d = half;
    }
    points
}

/// A [`Family::Low`] trace: one constant rate.
fn low(rng: &mut ChaCha8Rng) -> Vec<TracePoint> {
    vec![TracePoint { duration_s: TRACE_S as f64, bps: rng.random_range(0.4e6..0.9e6) }]
}

/// Parameters of the families drawn to published statistics ([`fading`]).
struct Fading {
    /// Range of the per-trace mean (log-uniform), bits per second.
    mean_bps: (f64, f64),
    /// AR(1) coefficient per second of the log fading.
    ar: f64,
    /// Stationary σ of the log fading (the fading factor has mean 1).
    sigma: f64,
    /// Highest rate, bits per second.
    max_bps: f64,
    /// Chance that a second starts an outage (or a congestion episode).
    outage_chance: f64,
    /// Outage length range, whole seconds.
    outage_s: (u32, u32),
    /// Outage rate as a share of the trace's mean, range.
    outage_share: (f64, f64),
}

/// Lowest rate of a generated second, bits per second (a trace point must be positive).
const FLOOR_BPS: f64 = 5e3;

const HSDPA: Fading = Fading {
    mean_bps: (0.8e6, 2.5e6),
    ar: 0.95,
    sigma: 0.55,
    max_bps: 6e6,
    outage_chance: 1.0 / 150.0,
    outage_s: (2, 15),
    outage_share: (0.01, 0.05),
};

const LTE: Fading = Fading {
    mean_bps: (1e6, 5e6),
    ar: 0.85,
    sigma: 0.6,
    max_bps: 9.5e6,
    outage_chance: 1.0 / 120.0,
    outage_s: (1, 4),
    outage_share: (0.02, 0.10),
};

const BROADBAND: Fading = Fading {
    mean_bps: (0.5e6, 6e6),
    ar: 0.9,
    sigma: 0.06,
    max_bps: f64::INFINITY,
    outage_chance: 1.0 / 200.0,
    outage_s: (5, 20),
    outage_share: (0.5, 0.8),
};

/// A trace drawn to published statistics: a per-trace mean × a mean-1 log-normal fading,
/// capped, with outages (1 s points).
fn fading(rng: &mut ChaCha8Rng, f: &Fading) -> Vec<TracePoint> {
    let mean = log_uniform(rng, f.mean_bps.0, f.mean_bps.1);
    let innovation = f.sigma * (1.0 - f.ar * f.ar).sqrt();
    let mut y = f.sigma * normal(rng);
    let mut outage_left = 0;
    let mut outage_bps = 0.0;
    (0..TRACE_S)
        .map(|_| {
            y = f.ar * y + innovation * normal(rng);
            if outage_left == 0 && rng.random_bool(f.outage_chance) {
                outage_left = rng.random_range(f.outage_s.0..=f.outage_s.1);
                outage_bps = mean * rng.random_range(f.outage_share.0..f.outage_share.1);
            }
            let bps = if outage_left > 0 {
                outage_left -= 1;
                outage_bps
            } else {
                mean * (y - f.sigma * f.sigma / 2.0).exp()
            };
            TracePoint { duration_s: 1.0, bps: bps.clamp(FLOOR_BPS, f.max_bps) }
        })
        .collect()
}

/// A trace as a link: its rate at any player time and when that rate next changes (the trace
/// starts at player time 0 and loops). [`TracePacer`] and `stream eval` read traces through it.
#[derive(Debug, Clone)]
pub struct Link {
    points: Vec<TracePoint>,
    /// Player time at which each point starts, within one period.
    starts: Vec<f64>,
    period_s: f64,
}

impl Link {
    /// `trace` as a link.
    pub fn new(trace: &Trace) -> Self {
        let points = trace.points().to_vec();
        let mut starts = Vec::with_capacity(points.len());
        let mut t = 0.0;
        for p in &points {
            starts.push(t);
            t += p.duration_s;
        }
        Link { points, starts, period_s: t }
    }

    /// The rate at `t` and the time its point ends (after `t`: a boundary that rounding puts
    /// at or before `t` is moved a nanosecond on, so time always advances).
    pub fn at(&self, t: f64) -> (f64, f64) {
        let in_period = t.rem_euclid(self.period_s);
        let i = self.starts.partition_point(|&s| s <= in_period).saturating_sub(1);
        let p = self.points[i];
        let end = t - in_period + self.starts[i] + p.duration_s;
        (p.bps, end.max(t + 1e-9))
    }
}

/// Throttles reads to a bandwidth trace: a [`Link`] of the trace's rate (in player time) that
/// banks at most `burst_s` of idle capacity (a token bucket of that depth). Sans-IO: it says
/// when bytes may be taken.
#[derive(Debug, Clone)]
pub struct TracePacer {
    link: Link,
    /// Player time until which the link is busy with bytes already taken.
    busy_until_s: f64,
    /// Idle player seconds the link may bank (the bucket's depth, as time at the trace rate).
    burst_s: f64,
}

impl TracePacer {
    /// A pacer over `trace`, which starts at player time 0, banking at most `burst_s` player
    /// seconds of idle link (0: none; a little absorbs the reader's timer granularity).
    pub fn new(trace: &Trace, burst_s: f64) -> Self {
        TracePacer { link: Link::new(trace), busy_until_s: 0.0, burst_s: burst_s.max(0.0) }
    }

    /// Takes `bytes` that arrived at player time `now_s`; returns the player time at which
    /// the link would have delivered them (the reader waits until then).
    pub fn take(&mut self, now_s: f64, bytes: u64) -> f64 {
        let mut t = self.busy_until_s.max(now_s - self.burst_s);
        let mut bits = bytes as f64 * 8.0;
        loop {
            let (bps, end) = self.link.at(t);
            if bits <= bps * (end - t) {
                t += bits / bps;
                break;
            }
            bits -= bps * (end - t);
            t = end;
        }
        self.busy_until_s = t;
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn traces_are_deterministic_in_the_seed() {
        for f in Family::ALL {
            assert_eq!(Trace::generate(f, 3, 7), Trace::generate(f, 3, 7));
            assert_ne!(Trace::generate(f, 3, 7), Trace::generate(f, 3, 8));
            assert_ne!(Trace::generate(f, 3, 7), Trace::generate(f, 4, 7));
        }
    }
    #[test]
    fn traces_stay_in_their_ranges() {
        for i in 0..20 {
            let t = Trace::generate(Family::Cellular3g, i, 1);
            assert!(t.points().iter().all(|p| p.bps >= 30e3 && p.bps <= 3e6));
            let t = Trace::generate(Family::Lte4g, i, 1);
            assert!(t.points().iter().all(|p| p.bps >= 0.3e6 && p.bps <= 40e6));
            let t = Trace::generate(Family::Walk, i, 1);
            assert!(t.points().iter().all(|p| p.bps >= 0.2e6 - 1.0 && p.bps <= 8e6 + 1.0));
        }
    }

    fn total_s(trace: &Trace) -> f64 {
        trace.points().iter().map(|p| p.duration_s).sum()
    }

    /// Coefficient of variation of a trace's rate over time.
    fn cv(trace: &Trace) -> f64 {
        let mean = trace.mean_bps();
        let t = total_s(trace);
        let var =
            trace.points().iter().map(|p| p.duration_s * (p.bps - mean).powi(2)).sum::<f64>() / t;
        var.sqrt() / mean
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    #[test]
    fn the_added_families_last_the_trace_length() {
        // (`steps` ends on the hold that crosses it, as it always did.)
        for f in &Family::ALL[4..] {
            let f = *f;
            for i in 0..10 {
                let t = Trace::generate(f, i, 2);
                assert!((total_s(&t) - TRACE_S as f64).abs() < 1e-6, "{} {i}", f.name());
            }
        }
    }

    #[test]
    fn markov_visits_several_states_and_holds_them_for_the_stated_mean() {
        let mut seen = [false; MARKOV_BPS.len()];
        let (mut holds, mut held_s) = (0usize, 0.0);
        for i in 0..100 {
            let path = markov_path(&mut family_rng(Family::Markov, i, 1));
            let mut states: Vec<usize> = path.iter().map(|&(s, _)| s).collect();
            // A state is never followed by itself: each entry of the path is one hold.
            assert!(states.windows(2).all(|w| w[0] != w[1]));
            states.sort_unstable();
            states.dedup();
            assert!(states.len() >= 3, "trace {i} visits {states:?}");
            for s in states {
                seen[s] = true;
            }
            // Every hold but the last, which the trace's end cuts.
            for &(_, hold) in &path[..path.len() - 1] {
                holds += 1;
                held_s += hold;
            }
            // The trace follows the path: each hold's points sum to it, each within 5 σ of
            // the state's rate.
            let trace = Trace::generate(Family::Markov, i, 1);
            let mut points = trace.points().iter();
            for &(state, hold) in &path {
                let mut left = hold;
                while left > 1e-9 {
                    let p = points.next().unwrap();
                    let ratio = (p.bps / MARKOV_BPS[state]).ln();
                    assert!(ratio.abs() < 5.0 * MARKOV_SIGMA, "trace {i}: {} vs {state}", p.bps);
                    left -= p.duration_s;
                }
                assert!(left.abs() < 1e-6);
            }
            assert!(points.next().is_none());
        }
        assert!(seen.iter().all(|&s| s), "every state is visited: {seen:?}");
        // ~1900 exponential holds of mean 20 s: the sample mean is within ±3 s (6 standard
        // errors).
        let mean_hold = held_s / holds as f64;
        assert!((mean_hold - MARKOV_HOLD_S).abs() < 3.0, "mean hold {mean_hold} s over {holds}");
    }

    #[test]
    fn step_drops_at_the_stated_time_to_the_stated_fraction() {
        let (mut back, mut stay) = (0, 0);
        for i in 0..100 {
            let t = Trace::generate(Family::Step, i, 1);
            let p = t.points();
            let (high, drop_at) = (p[0].bps, p[0].duration_s);
            assert!((2.5e6..6e6).contains(&high), "{high}");
            assert!((30.0..90.0).contains(&drop_at), "{drop_at}");
            // High just before the drop, the fraction just after.
            let link = Link::new(&t);
            assert_eq!(link.at(drop_at - 0.01).0, high);
            let fraction = link.at(drop_at + 0.01).0 / high;
            assert!((0.10..0.35).contains(&fraction), "{fraction}");
            match p.len() {
                2 => stay += 1,
                3 => {
                    back += 1;
                    assert!((20.0..80.0).contains(&p[1].duration_s));
                    assert_eq!(p[2].bps, high);
                }
                n => panic!("{n} points"),
            }
        }
        // Back up with chance 0.6: both kinds occur.
        assert!(back > 40 && stay > 20, "back {back}, stay {stay}");
    }

    #[test]
    fn oscillation_has_the_stated_period_and_two_levels() {
        for i in 0..100 {
            let t = Trace::generate(Family::Oscillation, i, 1);
            let p = t.points();
            let half = p[1].duration_s;
            let period = 2.0 * half;
            assert!((20.0..60.0).contains(&period), "{period}");
            // Whole half periods between the first piece (the phase) and the last (the end).
            assert!(p[1..p.len() - 1].iter().all(|q| (q.duration_s - half).abs() < 1e-9));
            assert!(p[0].duration_s <= half + 1e-9 && p[p.len() - 1].duration_s <= half + 1e-9);
            // Two levels, alternating, the low one 0.2–0.4 of the high one.
            let high = p.iter().map(|q| q.bps).fold(0.0, f64::max);
            let low = p.iter().map(|q| q.bps).fold(f64::INFINITY, f64::min);
            assert!((2e6..5e6).contains(&high));
            assert!((0.2..0.4).contains(&(low / high)));
            assert!(p.iter().all(|q| q.bps == high || q.bps == low));
            assert!(p.windows(2).all(|w| w[0].bps != w[1].bps));
            // Periodic: the rate repeats one period later.
            let (link, mut x) = (Link::new(&t), 0.3);
            while x + period < TRACE_S as f64 {
                assert_eq!(link.at(x).0, link.at(x + period).0, "trace {i} at {x}");
                x += 0.7;
            }
        }
    }

    #[test]
    fn low_is_one_rate_around_the_second_rung() {
        for i in 0..100 {
            let t = Trace::generate(Family::Low, i, 1);
            assert_eq!(t.points().len(), 1);
            assert!((0.4e6..0.9e6).contains(&t.points()[0].bps));
        }
    }

    /// Seconds of `trace` in outages: runs of at least `min_s` seconds below `share` of its mean.
    fn outage_seconds(trace: &Trace, share: f64, min_s: usize) -> usize {
        let cut = share * trace.mean_bps();
        let mut total = 0;
        let mut run = 0;
        for p in trace.points().iter().chain([&TracePoint { duration_s: 1.0, bps: f64::MAX }]) {
            if p.bps < cut {
                run += 1;
            } else {
                if run >= min_s {
                    total += run;
                }
                run = 0;
            }
        }
        total
    }

    /// (mean of the per-trace means, median per-trace coefficient of variation, the 90th over
    /// the 10th percentile of the per-trace means, share of traces with an outage, share of
    /// seconds in outages) over 200 traces of `family`.
    fn statistics(family: Family) -> (f64, f64, f64, f64, f64) {
        let traces: Vec<Trace> = (0..200).map(|i| Trace::generate(family, i, 1)).collect();
        let mut means: Vec<f64> = traces.iter().map(Trace::mean_bps).collect();
        let mean = means.iter().sum::<f64>() / means.len() as f64;
        means.sort_by(f64::total_cmp);
        let spread = means[179] / means[19];
        let cvs = median(traces.iter().map(cv).collect());
        let outages: Vec<usize> = traces.iter().map(|t| outage_seconds(t, 0.15, 2)).collect();
        let with = outages.iter().filter(|&&s| s > 0).count() as f64 / 200.0;
        let share = outages.iter().sum::<usize>() as f64 / (200 * TRACE_S) as f64;
        (mean, cvs, spread, with, share)
    }

    #[test]
    fn hsdpa_has_the_published_mean_spread_and_outages() {
        let (mean, cv, spread, with, share) = statistics(Family::Hsdpa);
        // Means of 1–2 Mbps (0.8–2.5 log-uniform: 1.49 before outages), high variance (σ 0.55:
        // CV ~0.6), outages in most traces (1/150 per s, 2–15 s: ~5% of the time).
        assert!((1.1e6..1.8e6).contains(&mean), "mean {mean}");
        assert!((0.4..0.9).contains(&cv), "cv {cv}");
        assert!(spread > 1.8, "spread {spread}");
        assert!(with > 0.8, "with outages {with}");
        assert!((0.02..0.10).contains(&share), "outage share {share}");
        for i in 0..50 {
            let t = Trace::generate(Family::Hsdpa, i, 1);
            assert!(t.points().iter().all(|p| p.bps >= FLOOR_BPS && p.bps <= 6e6));
        }
    }

    #[test]
    fn lte_has_the_published_spread_scaled_to_the_ladder() {
        let (mean, cv, spread, with, _) = statistics(Family::Lte);
        // 10–50 Mbps × 0.1: 1–5 Mbps log-uniform (2.5 before drops and the cap); wide spread
        // (σ 0.6: CV ~0.65) within a trace and between traces; drops in most traces.
        assert!((2.0e6..3.2e6).contains(&mean), "mean {mean}");
        assert!((0.45..0.9).contains(&cv), "cv {cv}");
        assert!(spread > 2.5, "spread {spread}");
        assert!(with > 0.6, "with drops {with}");
        for i in 0..50 {
            let t = Trace::generate(Family::Lte, i, 1);
            assert!(t.points().iter().all(|p| p.bps >= FLOOR_BPS && p.bps <= 9.5e6));
        }
    }

    #[test]
    fn broadband_is_steady_at_rates_across_the_ladder() {
        let (mean, cv, spread, _, _) = statistics(Family::Broadband);
        // 0.5–6 Mbps log-uniform (2.2), steady (σ 0.06 and rare congestion: CV well under 0.2).
        assert!((1.7e6..2.7e6).contains(&mean), "mean {mean}");
        assert!(cv < 0.2, "cv {cv}");
        assert!(spread > 5.0, "spread {spread}");
        for i in 0..200 {
            let m = Trace::generate(Family::Broadband, i, 1).mean_bps();
            assert!((0.4e6..6.6e6).contains(&m), "{m}");
        }
    }

    #[test]
    fn families_have_their_names() {
        for f in Family::ALL.into_iter().chain([Family::File]) {
            assert_eq!(Family::from_name(f.name()), Some(f));
            assert_eq!(serde_json::to_string(&f).unwrap(), format!("\"{}\"", f.name()));
        }
        assert_eq!(Family::from_name("5g"), None);
    }

    #[test]
    fn trace_rejects_bad_points() {
        assert_eq!(Trace::new(Family::Walk, 0, vec![]), Err(TraceError::BadLength(0)));
        let bad = vec![TracePoint { duration_s: 1.0, bps: 0.0 }];
        assert_eq!(Trace::new(Family::Walk, 0, bad), Err(TraceError::BadPoint(0)));
    }
}
