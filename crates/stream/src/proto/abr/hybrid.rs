//! `Hybrid`, our default rule: a throughput/buffer hybrid that plans a few segments ahead.
//!
//! - **Throughput, conservatively.** The estimate is the harmonic mean of the last 5 download
//!   rates (one slow download pulls it down hard; a fast burst barely lifts it), divided by
//!   `1 + the largest relative error` the estimate made over the last 5 downloads (as
//!   RobustMPC, Yin et al., SIGCOMM 2015) and never above dash.js's min(3 s, 8 s) EWMA. The
//!   safety margin therefore grows when the network is erratic, and the first download after a
//!   drop moves it down at once (fast down-switch).
//! - **Buffer.** For each candidate plan of representations over the next `horizon` (5)
//!   segments the rule simulates the buffer with that estimate and the *real* size of each
//!   segment (VBR sizes when the ladder knows them) and scores the plan by the player's
//!   objective (Pensieve's linear QoE: Mbps played − 4.3 × seconds stalled − Mbps switched),
//!   minus 2 per second the plan ends below a reserve. The reserve is the buffer that would
//!   carry the lowest representation to the end of the video through a drop to a tenth of the
//!   estimate (with the real segment sizes), at least 16 s and at most 24 s: the everyday 16 s
//!   when the link sits far above the lowest rung, more as it nears it (a deep drop there
//!   leaves nothing to switch down to, only the buffer). It is cut to the video left after the
//!   plan: buffer past the last segment protects nothing. The score is the weighted sum over
//!   two throughput scenarios: the estimate (weight 0.95) and half of it (0.05), so a plan that
//!   only works if the estimate holds pays for the drop it cannot survive. The margin therefore
//!   grows as the buffer shrinks (a stall costs more than any bitrate gain), and a long buffer is
//!   spent on quality only down to the reserve.
//! - **Anti-oscillation.** The switch penalty is in the objective, and an up-switch needs
//!   `up_confirm` consecutive decisions that want to go up (sustained headroom); a down-switch
//!   happens at once.
//! - **Abandonment.** After a 0.5 s grace time, each option is valued with the same objective
//!   at the rate seen so far: finishing the download (its bitrate, minus the stall and the
//!   reserve it eats; the planner's reserve, not cut at the end of the video) against fetching the segment again from scratch at each lower
//!   representation; the best lower one wins if it beats finishing.
//!
//! The parameters were chosen on seeds 1–3 of `swarmcast stream eval` and checked on seeds 4–5;
//! the drop reserve was chosen on seeds 1–10 of the eleven families and checked on 11–20
//! (docs/abr.md).

use std::collections::VecDeque;

use super::{Abr, DualEwma, Ladder, PlayerState, Progress, ThroughputSample};

/// Parameters of [`Hybrid`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HybridConfig {
    /// Segments planned ahead.
    pub horizon: usize,
    /// Downloads the harmonic mean and the error window look back on.
    pub history: usize,
    /// QoE cost of one second of stall (Pensieve's linear metric: 4.3 per s).
    pub stall_penalty: f64,
    /// QoE cost of one Mbps of switch (Pensieve: 1).
    pub switch_penalty: f64,
    /// Decisions in a row that must want to go up before an up-switch.
    pub up_confirm: u32,
    /// Seconds a download runs before the abandonment rule may judge it.
    pub abandon_grace_s: f64,
    /// Buffer, seconds, a plan should leave at its end (a reserve against the next drop).
    pub reserve_s: f64,
    /// QoE cost per second a plan ends below `reserve_s`.
    pub reserve_penalty: f64,
    /// Share of the estimate a deep drop leaves: the reserve grows to carry the lowest
    /// representation through such a drop to the end of the video (see [`Hybrid::reserve_s`]).
    pub drop_share: f64,
    /// Most seconds the reserve grows to for a deep drop.
    pub reserve_max_s: f64,
    /// Throughput scenarios a plan is scored under, as (weight, share of the estimate); the
    /// plan's score is the weighted sum (a drop the estimate does not foresee still counts).
    pub scenarios: [(f64, f64); 3],
}

impl Default for HybridConfig {
    fn default() -> Self {
        HybridConfig {
            horizon: 5,
            history: 5,
            stall_penalty: 4.3,
            switch_penalty: 1.0,
            up_confirm: 2,
            abandon_grace_s: 0.5,
            reserve_s: 16.0,
            reserve_penalty: 2.0,
            drop_share: 0.1,
            reserve_max_s: 24.0,
            scenarios: [(0.95, 1.0), (0.05, 0.5), (0.0, 0.25)],
        }
    }
}

/// What every plan of one decision is scored against.
#[derive(Debug, Clone, Copy)]
struct Outlook {
    /// The throughput estimate, bits per second.
    bps: f64,
    /// The buffer, seconds, a plan should leave ([`Hybrid::reserve_s`], cut at the video's end).
    reserve_s: f64,
}

/// Our rule (see the module header).
#[derive(Debug, Clone, PartialEq)]
pub struct Hybrid {
    config: HybridConfig,
    /// The last `history` download rates, bits per second, oldest first.
    rates: VecDeque<f64>,
    /// Relative errors of the last `history` predictions.
    errors: VecDeque<f64>,
    /// The harmonic-mean prediction made before the latest download (to measure its error).
    prediction: Option<f64>,
    ewma: DualEwma,
    /// Consecutive decisions whose plan wanted to go above the last choice.
    up_votes: u32,
}

impl Default for Hybrid {
    fn default() -> Self {
        Hybrid::new(HybridConfig::default())
    }
}

impl Hybrid {
    /// A rule with these parameters.
    pub fn new(config: HybridConfig) -> Self {
        Hybrid {
            config,
            rates: VecDeque::new(),
            errors: VecDeque::new(),
            prediction: None,
            ewma: DualEwma::default(),
            up_votes: 0,
        }
    }

    /// The conservative throughput estimate in bits per second (`None` before a sample).
    pub fn estimate_bps(&self) -> Option<f64> {
        let harmonic = self.harmonic_mean()?;
        let worst_error = self.errors.iter().copied().fold(0.0, f64::max);
        let robust = harmonic / (1.0 + worst_error);
        Some(self.ewma.estimate_bps().map_or(robust, |e| robust.min(e)))
    }

    fn harmonic_mean(&self) -> Option<f64> {
        if self.rates.is_empty() {
            return None;
        }
        let inv: f64 = self.rates.iter().map(|r| 1.0 / r).sum();
        Some(self.rates.len() as f64 / inv)
    }

    /// The best plan's first representation for this estimate (no up-switch confirmation).
    fn plan(&self, ladder: &Ladder, state: &PlayerState, bps: f64) -> usize {
        let remaining =
            state.segments_total.map_or(usize::MAX, |n| n.saturating_sub(state.segment));
        let horizon = self.config.horizon.min(remaining).max(1);
        // Buffer left after the last segment protects nothing: the reserve is at most the video
        // still to come after the plan.
        let after_s = remaining.saturating_sub(horizon) as f64 * ladder.segment_duration_s();
        let reserve = self
            .reserve_s(
                ladder,
                bps,
                state.segment + horizon,
                state.segment.saturating_add(remaining),
            )
            .min(after_s);
        let mut best = (f64::NEG_INFINITY, 0);
        let mut plan = vec![0usize; horizon];
        let outlook = Outlook { bps, reserve_s: reserve };
        self.search(ladder, state, outlook, &mut plan, 0, &mut best);
        best.1
    }

    /// The buffer, seconds, a plan should leave when the throughput is estimated at `bps` and
    /// the video goes on from segment `from` (past the plan). A drop to `drop_share` of the
    /// estimate that lasts to the end of the video leaves the player on the lowest
    /// representation; the reserve is the buffer that carries it through at that rate without
    /// a stall (the largest shortfall, over the segments to come, of the media played against
    /// the media fetched, with each segment's real size): most of the rest of the video when the
    /// link sits near the lowest rung, nothing when it sits far above it. It is at least
    /// `reserve_s` (the everyday margin) and at most `reserve_max_s`.
    pub fn reserve_s(&self, ladder: &Ladder, bps: f64, from: usize, segments: usize) -> f64 {
        let c = &self.config;
        let most = c.reserve_max_s.max(c.reserve_s);
        let drop_bps = c.drop_share * bps;
        // A live stream has no end: ten minutes ahead is as far as a drop is followed (a drain
        // slow enough to need more than that to reach the cap is no danger).
        let lookahead = (600.0 / ladder.segment_duration_s()).ceil() as usize;
        let end = segments.min(from.saturating_add(lookahead));
        let (mut behind, mut need) = (0.0f64, 0.0f64);
        for segment in from..end {
            behind += ladder.segment_bytes(0, segment) as f64 * 8.0 / drop_bps
                - ladder.segment_duration_s();
            need = need.max(behind);
            if need >= most {
                break;
            }
        }
        need.clamp(c.reserve_s, most)
    }

    /// Depth-first enumeration of every plan (ladder^horizon; 6^5 = 7776 for Pensieve's).
    fn search(
        &self,
        ladder: &Ladder,
        state: &PlayerState,
        outlook: Outlook,
        plan: &mut Vec<usize>,
        depth: usize,
        best: &mut (f64, usize),
    ) {
        if depth == plan.len() {
            let score = self
                .config
                .scenarios
                .iter()
                .filter(|(w, _)| *w > 0.0)
                .map(|&(w, share)| {
                    w * self.score(ladder, state, outlook.bps * share, outlook.reserve_s, plan)
                })
                .sum::<f64>();
            // Strictly better only: among equal plans the lower first choice wins.
            if score > best.0 {
                *best = (score, plan[0]);
            }
            return;
        }
        for rep in 0..ladder.len() {
            plan[depth] = rep;
            self.search(ladder, state, outlook, plan, depth + 1, best);
        }
    }

    /// The QoE a plan would earn if the throughput stayed at `bps`.
    fn score(
        &self,
        ladder: &Ladder,
        state: &PlayerState,
        bps: f64,
        reserve: f64,
        plan: &[usize],
    ) -> f64 {
        let mut buffer = state.buffer_s;
        let mut prev = state.last.map(|r| ladder.bitrate_bps(r) as f64 / 1e6);
        let mut score = 0.0;
        for (k, &rep) in plan.iter().enumerate() {
            let mbps = ladder.bitrate_bps(rep) as f64 / 1e6;
            let download_s = ladder.segment_bytes(rep, state.segment + k) as f64 * 8.0 / bps;
            let stall = (download_s - buffer).max(0.0);
            buffer = (buffer - download_s).max(0.0) + ladder.segment_duration_s();
            score += mbps - self.config.stall_penalty * stall;
            if let Some(p) = prev {
                score -= self.config.switch_penalty * (mbps - p).abs();
            }
            prev = Some(mbps);
        }
        score - self.config.reserve_penalty * (reserve - buffer).max(0.0)
    }
}

impl Abr for Hybrid {
    fn name(&self) -> &'static str {
        "hybrid"
    }

    fn record(&mut self, sample: ThroughputSample) {
        let Some(bps) = sample.bps() else { return };
        if let Some(p) = self.prediction.take() {
            push_bounded(&mut self.errors, (p - bps).abs() / bps, self.config.history);
        }
        push_bounded(&mut self.rates, bps, self.config.history);
        self.ewma.record(sample);
        self.prediction = self.harmonic_mean();
    }

    fn choose(&mut self, ladder: &Ladder, state: &PlayerState) -> usize {
        let Some(bps) = self.estimate_bps() else { return 0 };
        let want = self.plan(ladder, state, bps);
        let Some(last) = state.last else { return want };
        if want <= last {
            self.up_votes = 0;
            return want;
        }
        self.up_votes += 1;
        if self.up_votes >= self.config.up_confirm {
            self.up_votes = 0;
            want
        } else {
            last
        }
    }

    fn abandon(&mut self, ladder: &Ladder, p: &Progress) -> Option<usize> {
        if p.rep == 0
            // Elapsed times are differences of seconds counted from whole nanoseconds, so one
            // that is exactly the grace can come out a hair under it (0.4999999999999999):
            // a nanosecond of tolerance keeps the boundary where the config puts it.
            || p.elapsed_s + 1e-9 < self.config.abandon_grace_s
            || p.bytes_received >= p.bytes_total
        {
            return None;
        }
        let rate = ThroughputSample { bytes: p.bytes_received, duration_s: p.elapsed_s }.bps()?;
        let left_s = (p.bytes_total - p.bytes_received) as f64 * 8.0 / rate;
        // Value each option by the planner's objective at the rate seen so far: the bitrate it
        // plays, minus the stall it causes, minus the reserve it eats (a slow download that
        // finishes still drains the buffer the next segments need). A lower representation
        // starts from scratch.
        let c = &self.config;
        // The reserve as the planner sees it, but not cut at the end of the video: the rate
        // seen so far lags a drop in the middle of the download, and the full reserve keeps a
        // late download from eating the last segments' buffer on that stale rate.
        let segments = p.segments_total.unwrap_or(usize::MAX);
        let reserve =
            self.reserve_s(ladder, self.estimate_bps().unwrap_or(rate), p.segment + 1, segments);
        let value = |r: usize, secs: f64| {
            let after = (p.buffer_s - secs).max(0.0) + ladder.segment_duration_s();
            ladder.bitrate_bps(r) as f64 / 1e6
                - c.stall_penalty * (secs - p.buffer_s).max(0.0)
                - c.reserve_penalty * (reserve - after).max(0.0)
        };
        let keep = value(p.rep, left_s);
        let (best, best_value) = (0..p.rep)
            .map(|r| (r, value(r, ladder.segment_bytes(r, p.segment) as f64 * 8.0 / rate)))
            .fold((p.rep, keep), |acc, x| if x.1 > acc.1 { x } else { acc });
        (best < p.rep && best_value > keep).then_some(best)
    }
}

fn push_bounded(q: &mut VecDeque<f64>, v: f64, cap: usize) {
    q.push_back(v);
    while q.len() > cap.max(1) {
        q.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::abr::tests::pensieve;

    fn state(buffer_s: f64, last: Option<usize>) -> PlayerState {
        PlayerState { segment: 10, segments_total: Some(50), buffer_s, last }
    }

    fn steady(h: &mut Hybrid, bps: f64, n: usize) {
        for _ in 0..n {
            h.record(ThroughputSample { bytes: (bps / 2.0) as u64, duration_s: 4.0 });
        }
    }

    #[test]
    fn low_buffer_and_low_throughput_take_the_lowest() {
        let l = pensieve();
        let mut h = Hybrid::default();
        steady(&mut h, 400_000.0, 5);
        assert_eq!(h.choose(&l, &state(1.0, Some(3))), 0);
    }

    #[test]
    fn steady_plenty_reaches_the_top_after_confirmation() {
        let l = pensieve();
        let mut h = Hybrid::default();
        steady(&mut h, 20_000_000.0, 5);
        // The plan wants the top; the first vote holds the last choice, the second goes up.
        assert_eq!(h.choose(&l, &state(20.0, Some(2))), 2);
        assert_eq!(h.choose(&l, &state(20.0, Some(2))), 5);
        // Startup (no last choice) needs no confirmation.
        let mut h = Hybrid::default();
        steady(&mut h, 20_000_000.0, 1);
        assert_eq!(h.choose(&l, &state(0.0, None)), 5);
    }

    #[test]
    fn down_switch_is_immediate() {
        let l = pensieve();
        let mut h = Hybrid::default();
        steady(&mut h, 10_000_000.0, 5);
        steady(&mut h, 500_000.0, 1);
        assert!(h.choose(&l, &state(4.0, Some(5))) <= 1);
    }

    #[test]
    fn estimate_is_the_harmonic_mean_divided_by_the_worst_error() {
        let mut h = Hybrid::default();
        h.record(ThroughputSample { bytes: 500_000, duration_s: 2.0 }); // 2 Mbps
        assert!((h.estimate_bps().unwrap() - 2e6).abs() < 1e-6);
        h.record(ThroughputSample { bytes: 500_000, duration_s: 1.0 }); // 4 Mbps
                                                                        // Prediction 2 Mbps vs 4 Mbps: error 0.5. Harmonic mean of 2 and 4: 8/3 Mbps.
        let robust = (8e6 / 3.0) / 1.5;
        assert!(robust < h.ewma.estimate_bps().unwrap());
        assert!((h.estimate_bps().unwrap() - robust).abs() < 1e-6);
    }

    #[test]
    fn the_reserve_grows_as_the_link_nears_the_lowest_rung() {
        let l = pensieve();
        let h = Hybrid::default();
        // 10 Mbps: a drop to a tenth (1 Mbps) still carries the 300k rung; the everyday 16 s.
        assert_eq!(h.reserve_s(&l, 10e6, 10, 50), 16.0);
        // 2.5 Mbps: a drop to 250 kbps fetches a 4 s segment of 300k in 4.8 s, 0.8 s behind
        // per segment: 25 segments to the end need 20 s.
        assert!((h.reserve_s(&l, 2.5e6, 25, 50) - 20.0).abs() < 1e-9);
        // ... 40 segments would need 32 s: the cap is 24.
        assert_eq!(h.reserve_s(&l, 2.5e6, 10, 50), 24.0);
        // 1 Mbps: 8 s behind per segment; near the end the everyday margin is the floor.
        assert_eq!(h.reserve_s(&l, 1e6, 10, 50), 24.0);
        assert_eq!(h.reserve_s(&l, 1e6, 49, 50), 16.0);
        // A live stream (no end) is followed ten minutes ahead, not forever.
        assert_eq!(h.reserve_s(&l, 1e6, 10, usize::MAX), 24.0);
        assert_eq!(h.reserve_s(&l, 10e6, 10, usize::MAX), 16.0);
    }

    #[test]
    fn the_last_segments_spend_the_reserve() {
        let l = pensieve();
        let mut h = Hybrid::default();
        steady(&mut h, 3e6, 5);
        // 14 s of buffer at 3 Mbps: two top segments take 11.5 s. Mid-video that would leave
        // the buffer far under the reserve; with two segments left nothing needs it.
        assert!(h.choose(&l, &state(14.0, Some(5))) < 5);
        let last_two = PlayerState { segment: 48, ..state(14.0, Some(5)) };
        assert_eq!(h.choose(&l, &last_two), 5);
    }

    #[test]
    fn abandons_a_download_that_would_stall() {
        let l = pensieve();
        let mut h = Hybrid::default();
        // A 10 Mbps estimate: the reserve is the everyday 16 s.
        steady(&mut h, 10e6, 5);
        // 2.15 MB at 1 Mbps: 16.2 s left with 3 s of buffer: a 13.2 s stall. 300k's 150 kB
        // take 1.2 s and leave the most buffer (5.8 s; the reserve is 16 s): the lowest wins.
        let p = Progress {
            segment: 0,
            rep: 5,
            bytes_received: 125_000,
            bytes_total: 2_150_000,
            elapsed_s: 1.0,
            buffer_s: 3.0,
            segments_total: l.segments(),
        };
        assert_eq!(h.abandon(&l, &p), Some(0));
        // 20 s of buffer: finishing leaves 7.8 s, 8.2 s under the 16 s reserve: 4.3 - 2 × 8.2
        // = -12.1. 1850k's 925 kB take 7.4 s and leave 16.6 s: 1.85, the best option.
        assert_eq!(h.abandon(&l, &Progress { buffer_s: 20.0, ..p }), Some(3));
        // 30 s: finishing leaves 17.8 s, above the reserve; no reason to give up the top.
        assert_eq!(h.abandon(&l, &Progress { buffer_s: 30.0, ..p }), None);
        // Within the grace time: no judgement yet.
        assert_eq!(h.abandon(&l, &Progress { elapsed_s: 0.25, ..p }), None);
        // Exactly the grace, as a difference of floats gives it (0.7 - 0.2 < 0.5): judged.
        let at_grace = Progress { elapsed_s: 0.7 - 0.2, bytes_received: p.bytes_received / 2, ..p };
        assert!(at_grace.elapsed_s < 0.5);
        assert_eq!(
            h.abandon(&l, &at_grace),
            h.abandon(&l, &Progress { elapsed_s: 0.5, ..at_grace })
        );
        assert!(h.abandon(&l, &Progress { elapsed_s: 0.5, ..at_grace }).is_some());
        // Estimated at 1 Mbps, the link sits near the 300k rung: the reserve is 24 s, and at
        // 30 s finishing (17.8 s left) costs 4.3 - 2 × 6.2 = -8.1; 1850k's 7.4 s leave 26.6 s.
        let mut near = Hybrid::default();
        steady(&mut near, 1e6, 5);
        assert_eq!(near.abandon(&l, &Progress { buffer_s: 30.0, ..p }), Some(3));
    }
}
