//! `swarmcast sim overlay|swarm|dht|search ...`: run the seeded simulators of `sim::overlay`,
//! `sim::swarm`, `sim::dht` and `sim::search` and print their measurements (and optionally
//! write JSON).

use std::path::PathBuf;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use rand::SeedableRng;
use sim::overlay::{BroadcastStats, GraphStats, Report, Scenario};
use sim::swarm::{Arrivals, ClassStats, SwarmConfig, SwarmReport};

use crate::size_arg::parse_size;

/// Simulations.
#[derive(Subcommand)]
pub enum SimCommand {
    /// Simulate the P2P overlay (HyParView + Plumtree nodes) in virtual time.
    Overlay(OverlayArgs),
    /// Simulate one torrent's swarm in virtual time: every peer the engine's TorrentCore.
    Swarm(SwarmArgs),
    /// Simulate the Mainline DHT in virtual time: every node the DhtCore `swarmcast dht` runs.
    Dht(DhtArgs),
    /// Simulate unstructured search (flooding, expanding rings, random walks) on the overlay
    /// the membership core builds: every node the search core.
    Search(SearchArgs),
}

/// Arguments of `swarmcast sim search`.
#[derive(Args)]
pub struct SearchArgs {
    /// Nodes of the overlay (3 of them anchors).
    #[arg(long, default_value_t = 1000)]
    nodes: u32,
    /// Which search: flood (TTL 7), ring, walk, dht (the keyword index on as many DHT nodes),
    /// or all four.
    #[arg(long, value_enum, default_value_t = SearchMode::All)]
    mode: SearchMode,
    /// Share of the nodes that hold a popular item (rare items have one copy).
    #[arg(long, default_value_t = 0.01)]
    replication: f64,
    /// Queries per mode and popularity.
    #[arg(long, default_value_t = 100)]
    queries: usize,
    /// Random walkers per walk.
    #[arg(long, default_value_t = 16)]
    walkers: usize,
    /// Share of the nodes offline while each query runs (not the item's holders nor the
    /// asker), with no time for the overlay or the DHT tables to repair around them.
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Seed of the run (same seed, same numbers).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the table as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SearchMode {
    Flood,
    Ring,
    Walk,
    Dht,
    All,
}

/// Arguments of `swarmcast sim dht`.
#[derive(Args)]
pub struct DhtArgs {
    /// Honest nodes.
    #[arg(long, default_value_t = 10_000)]
    nodes: u32,
    /// Measured lookups of each kind (find_node of random targets, get_peers of announced
    /// info-hashes); under churn, spread over the run.
    #[arg(long, default_value_t = 1000)]
    lookups: u32,
    /// Median round-trip time of a pair of nodes (lognormal around it), e.g. 80ms.
    #[arg(long, default_value = "80ms")]
    rtt_median: String,
    /// Sigma of the pairs' lognormal round-trip times.
    #[arg(long, default_value_t = 0.5)]
    rtt_sigma: f64,
    /// Share of datagrams lost, e.g. 0.02.
    #[arg(long, default_value_t = 0.02)]
    loss: f64,
    /// Share of the nodes replaced per hour, e.g. 0.3 (0: no churn scenario).
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Hours the churn scenario runs.
    #[arg(long, default_value_t = 2.0)]
    churn_hours: f64,
    /// Sybil ids placed next to an item's target (0: no sybil scenario).
    #[arg(long, default_value_t = 0)]
    sybils: u32,
    /// Build the routing tables by real joins (slow past 10^4 nodes) instead of as after a
    /// bootstrap.
    #[arg(long)]
    join: bool,
    /// Seed of the run (same seed, same numbers).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the full report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Arguments of `swarmcast sim swarm`.
#[derive(Args)]
pub struct SwarmArgs {
    /// N, the number of leechers.
    #[arg(long)]
    peers: usize,
    /// File size F (k/M/G suffixes).
    #[arg(long, value_parser = parse_size)]
    file_size: u64,
    /// Seeder upload u_s, bytes per second.
    #[arg(long, value_parser = parse_size)]
    server_upload: u64,
    /// Every leecher's upload u, bytes per second.
    #[arg(long, value_parser = parse_size, required_unless_present = "peer_uploads")]
    peer_upload: Option<u64>,
    /// Leecher uploads as a list cycled over the N leechers (e.g. 2M,512k); overrides
    /// --peer-upload.
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    peer_uploads: Vec<u64>,
    /// Every leecher's download cap (default: unlimited).
    #[arg(long, value_parser = parse_size)]
    peer_download: Option<u64>,
    /// Piece size (power of two; default: what `swarmcast create` picks).
    #[arg(long, value_parser = parse_size)]
    piece_size: Option<u64>,
    /// Peers the tracker gives each node.
    #[arg(long, default_value_t = 30)]
    neighbors: u32,
    /// Regular unchoke slots per node (the notes: 4).
    #[arg(long, default_value_t = 4)]
    upload_slots: usize,
    /// Regular unchoke slots of a node while it seeds (at least --upload-slots).
    #[arg(long, default_value_t = 10)]
    seed_slots: usize,
    /// Share of leechers (at random) that upload nothing.
    #[arg(long, default_value_t = 0.0)]
    free_riders: f64,
    /// Share of leechers (at random) that leave as soon as they complete.
    #[arg(long, default_value_t = 0.0)]
    leave_after_complete: f64,
    /// How leechers arrive: `flash` (all at t = 0) or `poisson:RATE` (arrivals per second).
    #[arg(long, default_value = "flash", value_parser = parse_arrivals)]
    arrivals: Arrivals,
    /// Pick pieces at random instead of rarest first.
    #[arg(long)]
    random_pieces: bool,
    /// The seeder super-seeds (BEP 16) until every piece went out once.
    #[arg(long)]
    super_seed: bool,
    /// Leechers start from a magnet link: each fetches the info dictionary from peers (BEP 9)
    /// with the metadata core `get MAGNET` runs, then downloads.
    #[arg(long)]
    magnet: bool,
    /// One-way latency range of a link, in ms (e.g. 20..80).
    #[arg(long, default_value = "20..80", value_parser = parse_latency)]
    latency: (u64, u64),
    /// Caps count block payload only, as the engine's token bucket in the in-process `lab
    /// swarm` does (default: bytes on the wire with TCP/IP headers, as `lab swarm --netns`).
    #[arg(long)]
    payload_caps: bool,
    /// Seed of the run (same seed, same numbers).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop after this many seconds of virtual time.
    #[arg(long, default_value_t = 86_400)]
    time_limit: u64,
    /// Stop after this many seconds of wall time.
    #[arg(long, default_value_t = 3_600)]
    wall_limit: u64,
    /// Stop once the process uses more than this much memory (k/M/G suffixes).
    #[arg(long, value_parser = parse_size, default_value = "8G")]
    memory_limit: u64,
    /// Write the full report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_arrivals(s: &str) -> Result<Arrivals, String> {
    if s == "flash" {
        return Ok(Arrivals::Flash);
    }
    let rate = s
        .strip_prefix("poisson:")
        .and_then(|r| r.parse::<f64>().ok())
        .filter(|r| r.is_finite() && *r > 0.0)
        .ok_or_else(|| format!("`{s}`: use flash or poisson:RATE with RATE arrivals per second"))?;
    Ok(Arrivals::Poisson(rate))
}

fn parse_latency(s: &str) -> Result<(u64, u64), String> {
    let err = || format!("`{s}`: use MIN..MAX in milliseconds, e.g. 20..80");
    let (a, b) = s.split_once("..").ok_or_else(err)?;
    let (a, b) = (a.trim().parse().map_err(|_| err())?, b.trim().parse().map_err(|_| err())?);
    if a > b {
        return Err(err());
    }
    Ok((a, b))
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
    /// Unmeasured broadcasts before them, which let Plumtree prune the eager links into a tree
    /// (the first one already does; at 10^6 nodes each broadcast costs ~10^7 frames).
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Sources of the sampled BFS behind "hops to reach 99.9%" and "shortest-path hops".
    #[arg(long, default_value_t = 20)]
    bfs_sources: usize,
    /// Time between two joins, in microseconds (the join phase lasts nodes × this of virtual
    /// time; at 10^6 nodes the default 2000 means 2000 s of shuffling while joining).
    #[arg(long, default_value_t = 2000)]
    join_interval_us: u64,
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
        SimCommand::Swarm(a) => swarm(&a),
        SimCommand::Dht(a) => dht(&a),
        SimCommand::Search(a) => search(&a),
    }
}

fn search(a: &SearchArgs) -> Result<()> {
    use overlay::proto::search::{Config, Mode};
    use sim::search::{Net, Popularity};
    if a.nodes < 10 {
        bail!("--nodes must be at least 10");
    }
    if !(0.0..0.9).contains(&a.churn) {
        bail!("--churn is a share of the nodes in [0, 0.9), got {}", a.churn);
    }
    if !(a.replication > 0.0 && a.replication <= 1.0) {
        bail!("--replication is a share of the nodes in (0, 1], got {}", a.replication);
    }
    let started = std::time::Instant::now();
    let modes: Vec<Mode> = match a.mode {
        SearchMode::Flood => vec![Mode::Flood(7)],
        SearchMode::Ring => vec![Mode::Ring],
        SearchMode::Walk => vec![Mode::Walk],
        SearchMode::Dht => vec![],
        SearchMode::All => vec![Mode::Flood(7), Mode::Ring, Mode::Walk],
    };
    let with_dht = matches!(a.mode, SearchMode::Dht | SearchMode::All);
    let mut net = (!modes.is_empty()).then(|| {
        let scenario = Scenario::new(a.nodes, 3, a.seed);
        let config = Config { walkers: a.walkers, ..Config::default() };
        eprintln!("building the overlay of {} nodes (joins, then 90 s of settling)...", a.nodes);
        let mut net = Net::new(&scenario, config, &mut |line| eprintln!("  {line}"));
        net.churn = a.churn;
        net
    });
    let mut cells = Vec::new();
    let mut puts = Vec::new();
    for popularity in [Popularity::Replicated(a.replication), Popularity::Rare] {
        for &mode in &modes {
            eprintln!("  {} queries: {mode:?}, {popularity:?}", a.queries);
            if let Some(net) = &mut net {
                cells.push(net.measure(mode, popularity, a.queries));
            }
        }
        if with_dht {
            eprintln!("  {} queries: DHT keyword index, {popularity:?}", a.queries);
            // The DHT simulator's links, without loss and with the overlay simulation's
            // latencies about (20–80 ms one way there; a 100 ms median round trip here).
            let mut s = sim::dht::Scenario::new(a.nodes, a.seed);
            (s.loss, s.rtt_median) = (0.0, std::time::Duration::from_millis(100));
            let copies = popularity.copies(a.nodes as usize);
            let c =
                sim::dht::index_search(&s, copies, a.queries, a.churn, &mut |l| eprintln!("  {l}"));
            puts.push((sim::search::popularity_name(popularity), c.put_messages));
            cells.push(c.cell);
        }
    }
    println!(
        "search simulation: {} nodes, seed {}, {} queries a cell, {} walkers, {}% offline ({:.1} s)",
        a.nodes,
        a.seed,
        a.queries,
        a.walkers,
        a.churn * 100.0,
        started.elapsed().as_secs_f64()
    );
    println!("| mode | item on | success | messages / query | hops to 1st | ms to 1st (median / p90) | busiest node's messages |");
    println!("|---|---|---|---|---|---|---|");
    for c in &cells {
        println!(
            "| {} | {} | {:.1}% | {:.0} | {:.0} | {:.0} / {:.0} | {:.0} |",
            c.mode,
            c.popularity,
            c.success * 100.0,
            c.messages,
            c.hops_first,
            c.ms_first_median,
            c.ms_first_p90,
            c.busiest
        );
    }
    for (popularity, cost) in puts {
        println!("DHT keyword index, items on {popularity}: {cost:.0} messages per publish (one keyword of one file)");
    }
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&cells)?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn dht(a: &DhtArgs) -> Result<()> {
    if a.nodes < 16 {
        bail!("--nodes must be at least 16");
    }
    if !(0.0..1.0).contains(&a.loss) {
        bail!("--loss is a share of datagrams in [0, 1), got {}", a.loss);
    }
    if !(0.0..=10.0).contains(&a.churn) {
        bail!("--churn is a share of the nodes per hour in [0, 10], got {}", a.churn);
    }
    if !(a.churn_hours > 0.0 && a.churn_hours <= 48.0) {
        bail!("--churn-hours must be in (0, 48], got {}", a.churn_hours);
    }
    if !(0.0..=3.0).contains(&a.rtt_sigma) {
        bail!("--rtt-sigma must be in [0, 3], got {}", a.rtt_sigma);
    }
    let mut s = sim::dht::Scenario::new(a.nodes, a.seed);
    s.rtt_median = humantime::parse_duration(&a.rtt_median)
        .ok()
        .filter(|d| (Duration::from_millis(1)..=Duration::from_secs(10)).contains(d))
        .with_context(|| format!("--rtt-median {:?}: say e.g. 80ms (1ms to 10s)", a.rtt_median))?;
    s.rtt_sigma = a.rtt_sigma;
    s.loss = a.loss;
    s.lookups = a.lookups;
    s.churn_per_hour = a.churn;
    s.churn_duration = Duration::from_secs_f64(a.churn_hours * 3600.0);
    s.sybils = a.sybils;
    s.join = a.join;
    let started = std::time::Instant::now();
    let report = sim::dht::run(&s, &mut |line| {
        eprintln!("[{:6.1} s] {line}", started.elapsed().as_secs_f64());
    });
    print_dht(&report);
    println!(
        "({} datagrams delivered, {} lost; {:.0} s virtual, {:.1} s wall)",
        report.datagrams,
        report.lost,
        report.virtual_secs,
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &a.json {
        crate::lab_cmd::write_json(path, &report)?;
    }
    Ok(())
}

fn print_dht(r: &sim::dht::Report) {
    let s = &r.scenario;
    println!(
        "DHT simulation: {} nodes, seed {}, RTT median {} ms (lognormal, sigma {}), {}% of \
         datagrams lost, tables {} ({:.1} nodes each)",
        s.nodes,
        s.seed,
        s.rtt_median.as_millis(),
        s.rtt_sigma,
        s.loss * 100.0,
        if s.join { "by real joins" } else { "as after a bootstrap" },
        r.table_mean
    );
    println!(
        "  {:<26} {:>6} {:>10} {:>10} {:>16} {:>13} {:>9} {:>9}",
        "lookup",
        "count",
        "median ms",
        "p99 ms",
        "messages med/p99",
        "≥7 of true 8",
        "all 8",
        "success"
    );
    let row = |name: &str, l: &sim::dht::LookupStats, first: bool| {
        let (median, p99) =
            if first { (l.first_median_ms, l.first_p99_ms) } else { (l.median_ms, l.p99_ms) };
        let found = |v: f64| {
            if l.found_7_of_8 + l.found_8_of_8 > 0.0 || !first {
                format!("{:.1}%", v * 100.0)
            } else {
                "-".into()
            }
        };
        println!(
            "  {:<26} {:>6} {:>10.0} {:>10.0} {:>16} {:>13} {:>9} {:>8.1}%",
            name,
            l.count,
            median,
            p99,
            format!("{:.0}/{:.0}", l.messages_median, l.messages_p99),
            found(l.found_7_of_8),
            found(l.found_8_of_8),
            l.success * 100.0
        );
    };
    row("find_node", &r.find_node, false);
    row("get_peers (to first peers)", &r.get_peers, true);
    row("get_peers (to the end)", &r.get_peers, false);
    if let Some(y) = &r.sybil {
        println!(
            "sybils: {} ids closer to an item's target than any honest node; {} gets each way",
            y.sybils, y.gets
        );
        println!(
            "  {:<26} item found by {}/{} gets; the put reached {} honest nodes of 8",
            "BEP 42 lookup rule (ours)", y.found_with_rule, y.gets, y.stored_honest_with_rule
        );
        println!(
            "  {:<26} item found by {}/{} gets; the put reached {} honest nodes of 8",
            "plain Kademlia", y.found_without_rule, y.gets, y.stored_honest_without_rule
        );
    }
    if let Some(c) = &r.churn {
        println!(
            "churn: {:.0}% of the nodes replaced per hour for {:.1} h ({} replaced)",
            s.churn_per_hour * 100.0,
            c.hours,
            c.replaced
        );
        row("get_peers under churn", &c.get_peers, true);
        row("BEP 44 get under churn", &c.get_item, true);
        row("keyword index under churn", &c.get_index, true);
    }
}

fn swarm(a: &SwarmArgs) -> Result<()> {
    if a.peers == 0 {
        bail!("--peers must be at least 1");
    }
    for (name, f) in
        [("--free-riders", a.free_riders), ("--leave-after-complete", a.leave_after_complete)]
    {
        if !(0.0..=1.0).contains(&f) {
            bail!("{name} is a share of the leechers in [0, 1], got {f}");
        }
    }
    let mut uploads = crate::lab_cmd::uploads(a.peer_upload, &a.peer_uploads, a.peers);
    // Free riders: a random share of the leechers, from the run's seed.
    let riders = (a.free_riders * a.peers as f64).round() as usize;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed ^ 0x5eed_f4ee);
    for i in rand::seq::index::sample(&mut rng, a.peers, riders) {
        uploads[i] = 0;
    }
    let piece_size =
        a.piece_size.map(|p| u32::try_from(p).context("--piece-size is too large")).transpose()?;
    let mut config = SwarmConfig::uniform(a.peers, a.file_size, a.server_upload, 0, a.seed);
    config.peer_uploads = uploads;
    config.piece_size = piece_size;
    config.download_limit = a.peer_download;
    config.neighbors = a.neighbors;
    config.upload_slots = a.upload_slots;
    config.seed_slots = a.seed_slots;
    config.leave_after_complete = a.leave_after_complete;
    config.arrivals = a.arrivals;
    config.rarest_first = !a.random_pieces;
    config.super_seed = a.super_seed;
    config.magnet = a.magnet;
    config.latency_min = Duration::from_millis(a.latency.0);
    config.latency_max = Duration::from_millis(a.latency.1);
    config.wire_overhead = !a.payload_caps;
    config.time_limit = Duration::from_secs(a.time_limit);
    config.wall_limit = Duration::from_secs(a.wall_limit);
    config.memory_limit = Some(a.memory_limit);
    let started = std::time::Instant::now();
    let report = sim::swarm::run(&config, |t, complete, delivered| {
        eprintln!(
            "[{:6.1} s wall] {t:7.1} s virtual: {complete}/{} complete, {:.1}% delivered",
            started.elapsed().as_secs_f64(),
            a.peers,
            delivered * 100.0
        );
    })?;
    print_swarm(&report);
    if let Some(path) = &a.json {
        crate::lab_cmd::write_json(path, &report)?;
    }
    Ok(())
}

fn print_swarm(report: &SwarmReport) {
    let r = &report.lab;
    println!(
        "simulated swarm N={} F={:.1} MiB ({} pieces of {} KiB): measured {:.2} s, bound {:.2} s ({}), ratio {:.3}",
        r.n,
        r.file_size as f64 / 1048576.0,
        r.pieces,
        r.piece_size / 1024,
        r.measured_s,
        r.bound_s,
        r.bound_term,
        r.ratio
    );
    println!(
        "  upload utilization: seeder {:.1}%, peers {:.1}%; bytes served by peers: {:.1}% ({})",
        r.seeder_utilization * 100.0,
        r.peer_utilization * 100.0,
        r.peer_upload_share * 100.0,
        if report.config.wire_overhead { "bytes on the wire" } else { "payload bytes" }
    );
    let g = &r.gap;
    println!(
        "  unused capacity: start-up {:.2} s (until {:.2} s), middle {:.2} s, tail {:.2} s (from {:.2} s, 90% delivered), duplicates {:.2} s",
        g.startup_s, g.startup_ends_s, g.middle_s, g.tail_s, g.tail_from_s, g.duplicates_s
    );
    let mut times: Vec<f64> = r.peers.iter().map(|p| p.completed_s).collect();
    times.sort_by(f64::total_cmp);
    if let (Some(first), Some(last)) = (times.first(), times.last()) {
        println!(
            "  completion since the first arrival: first {first:.2} s, median {:.2} s, last {last:.2} s",
            times[times.len() / 2]
        );
    }
    let class = |name: &str, c: &Option<ClassStats>| {
        if let Some(c) = c {
            println!(
                "  {name:<13} {:>6} peers: completion mean {:.2} s, median {:.2} s, last {:.2} s",
                c.count, c.mean_s, c.median_s, c.max_s
            );
        }
    };
    class("contributors", &report.contributors);
    class("free riders", &report.free_riders);
    class("stayed", &report.stayed);
    class("left", &report.left);
    if let Some(c) = &report.metadata_fetch {
        println!(
            "  metadata fetch {:>5} peers: mean {:.2} s, median {:.2} s, last {:.2} s after arrival; {} asked the tracker again",
            c.count, c.mean_s, c.median_s, c.max_s, report.metadata_asked_again.unwrap_or(0)
        );
    }
    println!(
        "  ({} events, {} unneeded blocks, {:.1} s wall)",
        report.events, report.wasted_blocks, report.wall_s
    );
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
    if a.bfs_sources == 0 {
        bail!("--bfs-sources must be at least 1");
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
    scenario.warmup = a.warmup;
    scenario.bfs_sources = a.bfs_sources;
    scenario.join_interval = Duration::from_micros(a.join_interval_us);
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
        crate::lab_cmd::write_json(path, &report)?;
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
