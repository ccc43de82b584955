//! BOLA (Spiteri, Urgaonkar, Sitaraman, "BOLA: Near-optimal bitrate adaptation for online
//! videos", INFOCOM 2016) in the form of dash.js's `BolaRule`.
//!
//! Utilities are `ln(bitrate)` shifted so the lowest is 1. With the buffer level `Q` in seconds
//! the rule picks the representation maximizing `(V·(u_m + γp) − Q) / bitrate_m` (the
//! Lyapunov drift-plus-penalty form). dash.js's parameters: the buffer target
//! `T = max(18 s, 10 s + 2 s × representations)`, `γp = (u_top − 1) / (T / 10 s − 1)`,
//! `V = 10 s / γp`, so the lowest representation wins below ~10 s of buffer and the top one
//! near `T`. Like dash.js, the first segment is chosen by throughput (startup state) and, in
//! its BOLA-O variant (the default here, as in dash.js), an up-switch is capped at what the
//! throughput sustains (or the previous choice) to avoid oscillation; [`Bola::basic`] turns
//! that cap off. Abandonment: dash.js's common rule.

use super::{dashjs_abandon, Abr, DualEwma, Ladder, PlayerState, Progress, ThroughputSample};

/// dash.js's smallest buffer target base, seconds.
const MINIMUM_BUFFER_S: f64 = 10.0;
/// dash.js's extra buffer target per representation, seconds.
const MINIMUM_BUFFER_PER_LEVEL_S: f64 = 2.0;

/// The BOLA rule (see the module header).
#[derive(Debug, Clone, PartialEq)]
pub struct Bola {
    estimator: DualEwma,
    /// dash.js's stable buffer time (18 s).
    buffer_target_s: f64,
    /// Cap up-switches at the throughput's choice (dash.js's BOLA-O).
    cap_up_switch: bool,
    safety: f64,
}

impl Default for Bola {
    fn default() -> Self {
        Bola {
            estimator: DualEwma::default(),
            buffer_target_s: 18.0,
            cap_up_switch: true,
            safety: 0.9,
        }
    }
}

impl Bola {
    /// BOLA-BASIC: no up-switch cap.
    pub fn basic() -> Self {
        Bola { cap_up_switch: false, ..Bola::default() }
    }

    /// The pure BOLA choice for a buffer of `buffer_s` seconds (no startup, no cap).
    pub fn quality_for_buffer(&self, ladder: &Ladder, buffer_s: f64) -> usize {
        let rates = ladder.bitrates_bps();
        let low = (rates[0] as f64).ln();
        let top_utility = (rates[ladder.top()] as f64).ln() - low + 1.0;
        if ladder.len() == 1 {
            return 0;
        }
        let target = self
            .buffer_target_s
            .max(MINIMUM_BUFFER_S + MINIMUM_BUFFER_PER_LEVEL_S * ladder.len() as f64);
        let gp = (top_utility - 1.0) / (target / MINIMUM_BUFFER_S - 1.0);
        let vp = MINIMUM_BUFFER_S / gp;
        let mut best = 0;
        let mut best_score = f64::NEG_INFINITY;
        for (i, &r) in rates.iter().enumerate() {
            let utility = (r as f64).ln() - low + 1.0;
            let score = (vp * (utility + gp) - buffer_s) / r as f64;
            // Ties go to the higher representation, as in dash.js.
            if score >= best_score {
                best = i;
                best_score = score;
            }
        }
        best
    }

    fn sustainable(&self, ladder: &Ladder) -> usize {
        self.estimator
            .estimate_bps()
            .map_or(0, |bps| ladder.highest_declared_at_most(bps * self.safety))
    }
}

impl Abr for Bola {
    fn name(&self) -> &'static str {
        "bola"
    }

    fn record(&mut self, sample: ThroughputSample) {
        self.estimator.record(sample);
    }

    fn choose(&mut self, ladder: &Ladder, state: &PlayerState) -> usize {
        let Some(last) = state.last else {
            // Startup: nothing buffered to reason about yet.
            return self.sustainable(ladder);
        };
        let mut q = self.quality_for_buffer(ladder, state.buffer_s);
        if self.cap_up_switch && q > last {
            let by_throughput = self.sustainable(ladder);
            if q > by_throughput {
                q = by_throughput.max(last);
            }
        }
        q
    }

    fn abandon(&mut self, ladder: &Ladder, progress: &Progress) -> Option<usize> {
        dashjs_abandon(ladder, progress, self.safety)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::abr::tests::pensieve;

    fn state(buffer_s: f64, last: usize) -> PlayerState {
        PlayerState { segment: 10, segments_total: Some(50), buffer_s, last: Some(last) }
    }

    #[test]
    fn buffer_drives_the_choice() {
        let l = pensieve();
        let b = Bola::basic();
        // Target 22 s for six levels: the lowest under ~10 s, the top at the target.
        assert_eq!(b.quality_for_buffer(&l, 0.0), 0);
        assert_eq!(b.quality_for_buffer(&l, 8.0), 0);
        assert_eq!(b.quality_for_buffer(&l, 22.0), 5);
        assert_eq!(b.quality_for_buffer(&l, 60.0), 5);
        // Monotone in the buffer.
        let mut prev = 0;
        for tenth in 0..300 {
            let q = b.quality_for_buffer(&l, tenth as f64 / 10.0);
            assert!(q >= prev);
            prev = q;
        }
    }

    #[test]
    fn high_buffer_goes_up_even_on_a_slow_estimate_without_the_cap() {
        let l = pensieve();
        let mut b = Bola::basic();
        b.record(ThroughputSample { bytes: 250_000, duration_s: 4.0 }); // 0.5 Mbps
        assert_eq!(b.choose(&l, &state(25.0, 0)), 5);
        assert_eq!(b.choose(&l, &state(1.0, 5)), 0);
        // BOLA-O caps the up-switch at the previous choice when the throughput sustains less.
        let mut o = Bola::default();
        o.record(ThroughputSample { bytes: 250_000, duration_s: 4.0 });
        assert_eq!(o.choose(&l, &state(25.0, 2)), 2);
        // ... and at the throughput's choice when that is higher than the previous one.
        let mut o = Bola::default();
        o.record(ThroughputSample { bytes: 1_000_000, duration_s: 4.0 }); // 2 Mbps → 1200k
        assert_eq!(o.choose(&l, &state(25.0, 0)), 2);
    }

    #[test]
    fn startup_uses_throughput() {
        let l = pensieve();
        let mut b = Bola::default();
        let first = PlayerState { segment: 0, segments_total: None, buffer_s: 0.0, last: None };
        assert_eq!(b.choose(&l, &first), 0);
        b.record(ThroughputSample { bytes: 5_000_000, duration_s: 4.0 }); // 10 Mbps
        assert_eq!(b.choose(&l, &first), 5);
    }
}
