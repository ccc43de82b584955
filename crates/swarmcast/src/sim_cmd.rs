//! `swarmcast sim overlay ...`: runs the seeded overlay simulator of `sim::overlay` and prints
//! its measurements as a table (and optionally as JSON).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use sim::overlay::{BroadcastStats, GraphStats, Report, Scenario};

/// Simulations.
#[derive(Subcommand)]
pub enum SimCommand {
    /// Simulate the P2P overlay (HyParView + Plumtree nodes) in virtual time.
    Overlay(OverlayArgs),
}

/// Arguments of `swarmcast sim overlay`.
#[derive(Args)]
pub struct OverlayArgs {
    /// Nodes that join (anchors included).
    #[arg(long, default_value_t = 1000)]
    nodes: u32,
    /// Anchors (nodes 0..A), the contacts every joiner is given.
    #[arg(long, default_value_t = 3)]
    anchors: u32,
    /// Crash this share of all nodes at once (random, anchors included), e.g. 0.8.
    #[arg(long)]
    crash: Option<f64>,
    /// Seed of the run (same seed, same numbers).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the full report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Neighbor threshold (largest active view); default: the membership default.
    #[arg(long)]
    active_max: Option<usize>,
    /// Newcomers that join after every anchor crashed (0: skip that scenario).
    #[arg(long, default_value_t = 20)]
    newcomers: u32,
    /// Plumtree optimization threshold (rounds an IHAVE must save to swap tree links);
    /// default: the broadcast default.
    #[arg(long)]
    optimization_threshold: Option<u16>,
    /// Measured broadcasts on the settled overlay.
    #[arg(long, default_value_t = 20)]
    broadcasts: usize,
    /// Plumtree: wait after an IHAVE of a missing message before the first GRAFT, in ms;
    /// default: the broadcast default.
    #[arg(long)]
    graft_timeout_ms: Option<u64>,
    /// Plumtree: largest delay before queued IHAVEs are flushed, in ms; default: the broadcast
    /// default.
    #[arg(long)]
    ihave_interval_ms: Option<u64>,
}

/// Runs a `swarmcast sim` subcommand.
pub fn run(cmd: SimCommand) -> Result<()> {
    match cmd {
        SimCommand::Overlay(a) => overlay(&a),
    }
}

fn overlay(a: &OverlayArgs) -> Result<()> {
    if a.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    if let Some(f) = a.crash {
        if !(0.0..1.0).contains(&f) {
            bail!("--crash is a share of the nodes in [0, 1), got {f}");
        }
    }
    let mut scenario = Scenario::new(a.nodes, a.anchors, a.seed);
    if let Some(k) = a.active_max {
        if k == 0 {
            bail!("--active-max must be at least 1");
        }
        scenario = scenario.with_active_max(k);
    }
    if let Some(t) = a.optimization_threshold {
        scenario.broadcast.optimization_threshold = t;
    }
    if let Some(ms) = a.graft_timeout_ms {
        scenario.broadcast.graft_timeout_1 = std::time::Duration::from_millis(ms);
    }
    if let Some(ms) = a.ihave_interval_ms {
        scenario.broadcast.ihave_interval = std::time::Duration::from_millis(ms);
    }
    scenario.crash = a.crash;
    scenario.newcomers = a.newcomers;
    scenario.broadcasts = a.broadcasts;
    let started = std::time::Instant::now();
    let verbose = a.nodes >= 5000;
    let report = sim::overlay::run(&scenario, &mut |line| {
        if verbose {
            eprintln!("[{:6.1} s] {line}", started.elapsed().as_secs_f64());
        }
    });
    print_report(&report);
    println!(
        "({} frames, {} of them 2-hop lists; {:.0} s virtual, {:.1} s wall)",
        report.frames,
        report.frames_neighbors,
        report.virtual_secs,
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &a.json {
        let json = serde_json::to_string_pretty(&report).context("report to JSON")?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn print_report(r: &Report) {
    println!(
        "overlay simulation: {} nodes, {} anchors, active_max {}, seed {}",
        r.nodes, r.anchors, r.active_max, r.seed
    );
    print_graph("settled overlay", &r.graph);
    print_broadcast("broadcasts (warmed-up tree)", &r.broadcast);
    if let Some(c) = &r.crash {
        println!(
            "crash {:.0}%: {} crashed ({} anchors), {} survivors",
            c.fraction * 100.0,
            c.crashed,
            c.anchors_crashed,
            c.survivors
        );
        print_broadcast("first broadcast after crash", &c.first);
        print_broadcast("broadcasts after healing", &c.after_heal);
        print_graph("overlay after healing", &c.graph_after_heal);
    }
    println!("  {:<38} {}", "isolated (end)", r.isolated);
    println!("  {:<38} {}", "isolated knowing a live anchor", r.isolated_knowing_live_anchor);
    if let Some(d) = &r.anchors_down {
        println!("every anchor down:");
        println!("  {:<38} {}/{}", "newcomers joined", d.joined, d.newcomers);
        println!("  {:<38} {:.4}", "delivery of a newcomer's broadcast", d.delivery);
        println!("  {:<38} {}", "components", d.components);
    }
}

fn print_graph(title: &str, g: &GraphStats) {
    println!("{title}:");
    println!("  {:<38} {}", "live nodes", g.live);
    println!("  {:<38} {} (largest {})", "components", g.components, g.largest_component);
    println!("  {:<38} {}", "isolated", g.isolated);
    let hist: Vec<String> = g.degree.histogram.iter().map(|(d, n)| format!("{d}:{n}")).collect();
    println!(
        "  {:<38} mean {:.2}, min {}, max {}  [{}]",
        "active degree",
        g.degree.mean,
        g.degree.min,
        g.degree.max,
        hist.join(" ")
    );
    println!("  {:<38} {:.1}", "passive view mean", g.passive_mean);
    println!("  {:<38} {}", "asymmetric links", g.asymmetric_links);
    println!(
        "  {:<38} max {}, mean {:.2}{}",
        "hops to reach 99.9%",
        g.hops_999.max,
        g.hops_999.mean,
        if g.hops_999.short_sources > 0 {
            format!(" ({} sources fall short)", g.hops_999.short_sources)
        } else {
            String::new()
        }
    );
    println!(
        "  {:<38} mean {:.2}, max {}",
        "shortest-path hops", g.path_hops_mean, g.path_hops_max
    );
}

fn print_broadcast(title: &str, b: &BroadcastStats) {
    println!("{title} ({}):", b.count);
    println!("  {:<38} mean {:.4}, min {:.4}", "delivery", b.delivery, b.delivery_min);
    println!("  {:<38} {}", "missed (node, message) pairs", b.missed);
    println!("  {:<38} {:.3}", "RMR", b.rmr);
    println!("  {:<38} mean {:.1}, max {}", "last delivery hop", b.ldh, b.ldh_max);
}
