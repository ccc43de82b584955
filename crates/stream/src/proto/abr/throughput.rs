//! The throughput rule, as dash.js's `ThroughputRule`: estimate the throughput with two EWMAs
//! (half-lives 3 s and 8 s, the smaller wins) and pick the highest declared bitrate at most
//! 0.9 × that estimate. The lowest representation before the first measurement.

use super::{dashjs_abandon, Abr, DualEwma, Ladder, PlayerState, Progress, ThroughputSample};

/// dash.js's throughput rule (see the module header).
#[derive(Debug, Clone, PartialEq)]
pub struct Throughput {
    estimator: DualEwma,
    /// Share of the estimate the chosen bitrate may use (dash.js: 0.9).
    safety: f64,
}

impl Default for Throughput {
    fn default() -> Self {
        Throughput { estimator: DualEwma::default(), safety: 0.9 }
    }
}

impl Throughput {
    /// The current throughput estimate in bits per second (`None` before the first sample).
    pub fn estimate_bps(&self) -> Option<f64> {
        self.estimator.estimate_bps()
    }

    /// The representation the estimate sustains, without updating any state.
    pub fn sustainable(&self, ladder: &Ladder) -> usize {
        match self.estimate_bps() {
            Some(bps) => ladder.highest_declared_at_most(bps * self.safety),
            None => 0,
        }
    }
}

impl Abr for Throughput {
    fn name(&self) -> &'static str {
        "throughput"
    }

    fn record(&mut self, sample: ThroughputSample) {
        self.estimator.record(sample);
    }

    fn choose(&mut self, ladder: &Ladder, _state: &PlayerState) -> usize {
        self.sustainable(ladder)
    }

    fn abandon(&mut self, ladder: &Ladder, progress: &Progress) -> Option<usize> {
        dashjs_abandon(ladder, progress, self.safety)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::abr::tests::pensieve;

    fn state(buffer_s: f64) -> PlayerState {
        PlayerState { segment: 5, segments_total: Some(50), buffer_s, last: Some(2) }
    }

    #[test]
    fn lowest_before_any_sample() {
        assert_eq!(Throughput::default().choose(&pensieve(), &state(30.0)), 0);
    }

    #[test]
    fn picks_the_highest_bitrate_under_nine_tenths_of_the_estimate() {
        let l = pensieve();
        let mut t = Throughput::default();
        // Exactly 2 Mbps: 0.9 × 2 = 1.8 Mbps sustains 1200k, not 1850k.
        t.record(ThroughputSample { bytes: 1_000_000, duration_s: 4.0 });
        assert!((t.estimate_bps().unwrap() - 2_000_000.0).abs() < 1e-6);
        assert_eq!(t.choose(&l, &state(2.0)), 2);
        // Buffer does not matter to this rule.
        assert_eq!(t.choose(&l, &state(50.0)), 2);
        // Low throughput, low buffer: the lowest.
        let mut t = Throughput::default();
        t.record(ThroughputSample { bytes: 100_000, duration_s: 4.0 });
        assert_eq!(t.choose(&l, &state(0.5)), 0);
    }

    #[test]
    fn a_drop_pulls_the_estimate_down_fast() {
        let l = pensieve();
        let mut t = Throughput::default();
        for _ in 0..5 {
            t.record(ThroughputSample { bytes: 2_500_000, duration_s: 2.0 }); // 10 Mbps
        }
        assert_eq!(t.choose(&l, &state(20.0)), 5);
        t.record(ThroughputSample { bytes: 500_000, duration_s: 4.0 }); // 1 Mbps
                                                                        // Fast EWMA: 10e6·2^(-4/3) + 1e6·(1 - 2^(-4/3)) (its weight is long since saturated).
        let a = 0.5f64.powf(4.0 / 3.0);
        let total = 14.0f64;
        let fast = (10e6 * (1.0 - 0.5f64.powf(10.0 / 3.0)) * a + 1e6 * (1.0 - a))
            / (1.0 - 0.5f64.powf(total / 3.0));
        assert!((t.estimate_bps().unwrap() - fast).abs() < 1e-3);
        assert_eq!(t.choose(&l, &state(20.0)), l.highest_declared_at_most(fast * 0.9));
    }
}
