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

/// Runs a `swarmcast stream` subcommand.
pub async fn run(cmd: StreamCommand) -> Result<()> {
    match cmd {
        StreamCommand::Eval(a) => eval(&a),
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
