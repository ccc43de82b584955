//! Bandwidth traces (sans-IO): the piecewise-constant [`Trace`] that `swarmcast play --trace`
//! throttles to and `stream eval` plays, its seeded generators ([`Trace::generate`], one per
//! [`Family`]), and [`TracePacer`], which says when bytes may be taken over a trace.
//!
//! **Families** (1 s steps unless said; no public trace set is reachable offline, so these are
//! synthetic shapes after the papers' descriptions; see [`Family`]). A generated trace lasts
//! [`TRACE_S`] seconds and loops, as every trace does when a session outlasts it.
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
}

impl Family {
    /// Every generated family, in table order.
    pub const ALL: [Family; 4] = [Family::Steps, Family::Walk, Family::Cellular3g, Family::Lte4g];

    /// Its short name.
    pub fn name(self) -> &'static str {
        match self {
            Family::Steps => "steps",
            Family::Walk => "walk",
            Family::Cellular3g => "3g",
            Family::Lte4g => "4g",
            Family::File => "file",
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
        let stream = (family as u64) << 32 | index as u64;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        let points = match family {
            Family::Steps | Family::File => steps(&mut rng),
            Family::Walk => walk(&mut rng),
            Family::Cellular3g => cellular(&mut rng, &CELL_3G),
            Family::Lte4g => cellular(&mut rng, &CELL_4G),
        };
        // Every generator clamps its rates to a positive range and uses positive durations.
        Trace::new(family, index, points).expect("generated traces are valid")
    }
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

    #[test]
    fn trace_rejects_bad_points() {
        assert_eq!(Trace::new(Family::Walk, 0, vec![]), Err(TraceError::BadLength(0)));
        let bad = vec![TracePoint { duration_s: 1.0, bps: 0.0 }];
        assert_eq!(Trace::new(Family::Walk, 0, bad), Err(TraceError::BadPoint(0)));
    }
}
