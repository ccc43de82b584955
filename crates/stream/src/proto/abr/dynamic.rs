//! dash.js's default `abrDynamic` strategy: the throughput rule while the buffer is short, BOLA
//! once it is long, with hysteresis: switch to BOLA at 12 s of buffer or more, back to the
//! throughput rule below 6 s, and keep the current rule in between. It starts on throughput.

use super::{
    dashjs_abandon, Abr, Bola, Ladder, PlayerState, Progress, Throughput, ThroughputSample,
};

/// dash.js's dynamic strategy (see the module header).
#[derive(Debug, Clone, PartialEq)]
pub struct Dynamic {
    throughput: Throughput,
    bola: Bola,
    using_bola: bool,
    /// Buffer level (s) at or above which BOLA takes over.
    bola_on_s: f64,
    /// Buffer level (s) below which the throughput rule takes back over.
    bola_off_s: f64,
}

impl Default for Dynamic {
    fn default() -> Self {
        Dynamic {
            throughput: Throughput::default(),
            bola: Bola::default(),
            using_bola: false,
            bola_on_s: 12.0,
            bola_off_s: 6.0,
        }
    }
}

impl Dynamic {
    /// Whether BOLA made (or will make) the current choice.
    pub fn using_bola(&self) -> bool {
        self.using_bola
    }
}

impl Abr for Dynamic {
    fn name(&self) -> &'static str {
        "dynamic"
    }

    fn record(&mut self, sample: ThroughputSample) {
        self.throughput.record(sample);
        self.bola.record(sample);
    }

    fn choose(&mut self, ladder: &Ladder, state: &PlayerState) -> usize {
        self.using_bola = if self.using_bola {
            state.buffer_s >= self.bola_off_s
        } else {
            state.buffer_s >= self.bola_on_s
        };
        if self.using_bola {
            self.bola.choose(ladder, state)
        } else {
            self.throughput.choose(ladder, state)
        }
    }

    fn abandon(&mut self, ladder: &Ladder, progress: &Progress) -> Option<usize> {
        dashjs_abandon(ladder, progress, 0.9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::abr::tests::pensieve;

    #[test]
    fn switches_rules_with_hysteresis() {
        let l = pensieve();
        let mut d = Dynamic::default();
        d.record(ThroughputSample { bytes: 250_000, duration_s: 4.0 }); // 0.5 Mbps → 300k
        let at =
            |buffer_s| PlayerState { segment: 9, segments_total: None, buffer_s, last: Some(0) };
        // 10 s: still throughput (not yet 12 s).
        assert_eq!(d.choose(&l, &at(10.0)), 0);
        assert!(!d.using_bola());
        // 12 s: BOLA; 8 s: still BOLA (above 6 s); 5 s: back to throughput.
        d.choose(&l, &at(12.0));
        assert!(d.using_bola());
        d.choose(&l, &at(8.0));
        assert!(d.using_bola());
        d.choose(&l, &at(5.0));
        assert!(!d.using_bola());
    }

    #[test]
    fn high_buffer_follows_bola() {
        let l = pensieve();
        let mut d = Dynamic::default();
        d.record(ThroughputSample { bytes: 5_000_000, duration_s: 4.0 }); // 10 Mbps
        let s = PlayerState { segment: 9, segments_total: None, buffer_s: 30.0, last: Some(5) };
        assert_eq!(d.choose(&l, &s), 5);
        assert!(d.using_bola());
    }
}
