//! `swarmcast stream ...`: the streaming commands of issue 5. `stream eval` runs the ABR rules of
//! `stream::abr` on the seeded traces of `stream::eval` and prints the table; `package` and
//! `origin` live in `stream_serve.rs`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use stream::abr::RuleKind;
use stream::eval::{evaluate, SimConfig};

/// Streaming commands.
#[derive(Subcommand)]
pub enum StreamCommand {
    /// Compare the ABR rules (throughput, BOLA, dynamic, hybrid) by Pensieve's QoE, stalls and
    /// switches on seeded bandwidth traces, in virtual time.
    Eval(EvalArgs),
    /// Simulate the router's placement of viewers on edges (consistent hashing with bounded
    /// loads against plain consistent hashing), Zipf movie popularity.
    CdnSim(CdnSimArgs),
    /// `package` and `origin`.
    #[command(flatten)]
    Serve(crate::stream_serve::StreamServeCommand),
}

/// Arguments of `swarmcast stream eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// Traces per family (steps, walk, 3g, 4g); every rule plays the same ones.
    #[arg(long, default_value_t = 50)]
    traces: usize,
    /// Seed of the traces and of the video's segment sizes (same seed, same numbers).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the report (summaries and every session) as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Arguments of `swarmcast stream cdn-sim`.
#[derive(Args)]
pub struct CdnSimArgs {
    /// Edges.
    #[arg(long, default_value_t = 3)]
    edges: usize,
    /// Viewers placed one after another.
    #[arg(long, default_value_t = 50)]
    viewers: usize,
    /// Distinct movies.
    #[arg(long, default_value_t = 100)]
    movies: usize,
    /// Zipf exponent of movie popularity.
    #[arg(long, default_value_t = 0.8)]
    zipf: f64,
    /// Balance factor c of the bounded loads.
    #[arg(long, default_value_t = stream::placement::BALANCE)]
    balance: f64,
    /// Runs (seeds 1..=N).
    #[arg(long, default_value_t = 10)]
    runs: u64,
}

/// Runs a `swarmcast stream` subcommand.
pub async fn run(cmd: StreamCommand) -> Result<()> {
    match cmd {
        StreamCommand::Eval(a) => eval(&a),
        StreamCommand::CdnSim(a) => cdn_sim(&a),
        StreamCommand::Serve(c) => crate::stream_serve::run(c).await,
    }
}

fn eval(a: &EvalArgs) -> Result<()> {
    if a.traces == 0 || a.traces > 10_000 {
        bail!("--traces is per family and must be in 1..=10000, got {}", a.traces);
    }
    let report = evaluate(&RuleKind::ALL, a.traces, a.seed, &SimConfig::default());
    println!(
        "ABR rules on {} traces per family (seed {}), Pensieve's ladder, {} segments of 4 s; \
         means per session",
        a.traces, a.seed, report.segments
    );
    print!("{}", report.table());
    if let Some(path) = &a.json {
        let json = serde_json::to_vec_pretty(&report).context("cannot encode the report")?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    Ok(())
}

fn cdn_sim(a: &CdnSimArgs) -> Result<()> {
    use rand::SeedableRng;
    use stream::placement::{zipf_movies, Placement};
    if a.edges == 0 || a.viewers == 0 || a.movies == 0 || a.runs == 0 {
        bail!("--edges, --viewers, --movies and --runs must be at least 1");
    }
    if a.balance.is_nan() || a.balance < 1.0 {
        bail!("--balance must be at least 1 (1.25 is HAProxy's hash-balance-factor 125)");
    }
    let names: Vec<String> = (1..=a.edges).map(|i| format!("edge{i}")).collect();
    println!(
        "{} viewers on {} edges, {} movies with Zipf({}) popularity; max/avg edge load per run",
        a.viewers, a.edges, a.movies, a.zipf
    );
    println!(
        "{:>5} {:>22} {:>22} {:>12}",
        "seed", "bounded loads (c)", "plain consistent hash", "movies"
    );
    let (mut worst_bounded, mut worst_plain) = (0.0f64, 0.0f64);
    for seed in 1..=a.runs {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let viewers = zipf_movies(&mut rng, a.movies, a.zipf, a.viewers);
        let mut bounded = Placement::new(&names, a.balance);
        let mut plain = Placement::new(&names, f64::INFINITY);
        for m in &viewers {
            bounded.place(m).context("no healthy edge")?;
            plain.place(m).context("no healthy edge")?;
        }
        let distinct: std::collections::BTreeSet<&String> = viewers.iter().collect();
        let (b, p) = (bounded.imbalance(), plain.imbalance());
        worst_bounded = worst_bounded.max(b);
        worst_plain = worst_plain.max(p);
        println!("{seed:>5} {b:>22.3} {p:>22.3} {:>12}", distinct.len());
    }
    println!("{:>5} {worst_bounded:>22.3} {worst_plain:>22.3}", "worst");
    println!("goal max/avg <= 1.25: {}", if worst_bounded <= 1.25 { "met" } else { "missed" });
    Ok(())
}
