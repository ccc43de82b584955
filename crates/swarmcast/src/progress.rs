//! Progress display: a live bar on a terminal (percent, down/up rates, peers, ETA), plain log
//! lines every few seconds otherwise (pipes, CI logs).

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use torrent::session::Stats;

/// True when progress should be drawn as bars.
pub fn interactive() -> bool {
    std::io::stderr().is_terminal()
}

/// A byte-count bar (hidden when stderr is not a terminal).
pub fn bytes_bar(msg: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    if !interactive() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(msg.to_string());
    bar
}

/// A bar for one torrent, drawn into `multi` if given.
pub fn torrent_bar(name: &str, total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if !interactive() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {percent:>3}% {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix(name.to_string());
    bar
}

/// Rates from successive samples of a session's counters.
pub struct RateMeter {
    last: Instant,
    down: u64,
    up: u64,
}

impl RateMeter {
    pub fn new(stats: &Stats) -> Self {
        RateMeter {
            last: Instant::now(),
            down: stats.downloaded.load(Ordering::Relaxed),
            up: stats.uploaded.load(Ordering::Relaxed),
        }
    }

    /// (download, upload) bytes per second since the previous call.
    pub fn sample(&mut self, stats: &Stats) -> (f64, f64) {
        let now = Instant::now();
        let secs = now.duration_since(self.last).as_secs_f64().max(1e-3);
        let down = stats.downloaded.load(Ordering::Relaxed);
        let up = stats.uploaded.load(Ordering::Relaxed);
        let r = ((down - self.down) as f64 / secs, (up - self.up) as f64 / secs);
        (self.last, self.down, self.up) = (now, down, up);
        r
    }
}

/// `12.3 MiB/s`.
pub fn rate(bps: f64) -> String {
    format!("{:.1} MiB/s", bps / 1048576.0)
}

/// One status line: rates, peers, ETA.
pub fn status(stats: &Stats, down: f64, up: f64) -> String {
    let left = stats
        .bytes_total
        .load(Ordering::Relaxed)
        .saturating_sub(stats.bytes_have.load(Ordering::Relaxed));
    let eta = if stats.complete.load(Ordering::Relaxed) {
        "done".to_string()
    } else if down > 1.0 {
        format!("ETA {}s", (left as f64 / down).ceil() as u64)
    } else {
        "ETA -".to_string()
    };
    format!(
        "down {} up {} peers {} {eta}",
        rate(down),
        rate(up),
        stats.peers.load(Ordering::Relaxed)
    )
}

/// Reports a session's progress until aborted.
pub fn spawn_reporter(stats: Arc<Stats>, name: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let total = stats.bytes_total.load(Ordering::Relaxed);
        let bar = torrent_bar(&name, total);
        let mut meter = RateMeter::new(&stats);
        let period =
            if interactive() { Duration::from_millis(500) } else { Duration::from_secs(5) };
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let (down, up) = meter.sample(&stats);
            let line = status(&stats, down, up);
            if interactive() {
                bar.set_position(stats.bytes_have.load(Ordering::Relaxed));
                bar.set_message(line);
            } else {
                eprintln!("{name}: {:.1}% {line}", stats.progress() * 100.0);
            }
        }
    })
}
