//! `swarmcast stream ...`: the streaming commands of issue 5. `stream eval` runs the ABR rules of
//! `stream::proto::abr` on the seeded traces of `stream::proto::trace` (or the trace files of
//! `--trace-dir`) with `stream::eval` and prints the table; `package` and `origin` live in
//! `stream_serve.rs`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use stream::eval::{evaluate_families, evaluate_traces, SimConfig};
use stream::player::{parse_trace, MAX_TRACE_BYTES};
use stream::proto::abr::RuleKind;
use stream::proto::trace::{Family, Trace};

/// Most trace files `stream eval --trace-dir` reads.
const MAX_TRACE_FILES: usize = 10_000;

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
    /// Traces per family; every rule plays the same ones.
    #[arg(long, default_value_t = 50)]
    traces: usize,
    /// The generated families to play, comma-separated (default: all of steps, walk, 3g, 4g,
    /// markov, step, oscillation, low, hsdpa, lte, broadband). A family's sessions do not
    /// depend on which others run.
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_family, conflicts_with = "trace_dir")]
    families: Vec<Family>,
    /// Seed of the traces and of the video's segment sizes (same seed, same numbers).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Play the trace files of this directory (the formats `swarmcast play --trace` reads,
    /// every regular file in name order) instead of the generated traces.
    #[arg(long, value_name = "DIR", conflicts_with = "traces")]
    trace_dir: Option<PathBuf>,
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
    #[arg(long, default_value_t = stream::proto::placement::BALANCE)]
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
    let report = match &a.trace_dir {
        None => {
            let mut families: Vec<Family> =
                if a.families.is_empty() { Family::ALL.to_vec() } else { a.families.clone() };
            // Table order, each once.
            families.sort_by_key(|f| Family::ALL.iter().position(|g| g == f));
            families.dedup();
            let report = evaluate_families(
                &RuleKind::ALL,
                &families,
                a.traces,
                a.seed,
                &SimConfig::default(),
            );
            println!(
                "ABR rules on {} traces per family (seed {}), Pensieve's ladder, {} segments of \
                 4 s; means per session",
                a.traces, a.seed, report.segments
            );
            report
        }
        Some(dir) => {
            let (names, traces) = read_trace_dir(dir)?;
            let mut report =
                evaluate_traces(&RuleKind::ALL, &traces, a.seed, &SimConfig::default());
            report.trace_files = names;
            println!(
                "ABR rules on {} trace files of {} (videos from seed {}), Pensieve's ladder, {} \
                 segments of 4 s; means per session",
                traces.len(),
                dir.display(),
                a.seed,
                report.segments
            );
            report
        }
    };
    print!("{}", report.table());
    if let Some(path) = &a.json {
        let json = serde_json::to_vec_pretty(&report).context("cannot encode the report")?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    Ok(())
}

/// A generated family by name (`file` is not one: use `--trace-dir`).
fn parse_family(name: &str) -> Result<Family, String> {
    match Family::from_name(name.trim()) {
        Some(f) if f != Family::File => Ok(f),
        _ => {
            let names: Vec<&str> = Family::ALL.iter().map(|f| f.name()).collect();
            Err(format!("unknown trace family {name:?}: use {}", names.join(", ")))
        }
    }
}

/// Reads every regular file of `dir` in name order as a trace ([`parse_trace`]), labelled
/// [`Family::File`] with its position as index; returns the file names with them.
fn read_trace_dir(dir: &Path) -> Result<(Vec<String>, Vec<Trace>)> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            if paths.len() == MAX_TRACE_FILES {
                bail!("{} has more than {MAX_TRACE_FILES} files", dir.display());
            }
            paths.push(entry.path());
        }
    }
    if paths.is_empty() {
        bail!("{} has no trace file", dir.display());
    }
    paths.sort();
    let mut names = Vec::with_capacity(paths.len());
    let mut traces = Vec::with_capacity(paths.len());
    for (index, path) in paths.iter().enumerate() {
        let len = std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        if len > MAX_TRACE_BYTES as u64 {
            bail!("{}: {len} bytes, more than the {MAX_TRACE_BYTES}-byte limit", path.display());
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let parsed = parse_trace(&text).with_context(|| format!("{}", path.display()))?;
        // parse_trace checked the points; relabelling cannot make them invalid.
        traces.push(Trace::new(Family::File, index, parsed.points().to_vec())?);
        names.push(path.file_name().unwrap_or_default().to_string_lossy().into_owned());
    }
    Ok((names, traces))
}

fn cdn_sim(a: &CdnSimArgs) -> Result<()> {
    use rand::SeedableRng;
    use stream::proto::placement::{zipf_movies, Placement};
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_dir_files_are_read_in_name_order_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.txt"), "10 2000000\n").unwrap();
        std::fs::write(dir.path().join("a.json"), r#"[{"duration_s": 5, "bps": 300000}]"#).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let (names, traces) = read_trace_dir(dir.path()).unwrap();
        assert_eq!(names, ["a.json", "b.txt"]);
        assert_eq!(traces[0].points()[0].bps, 300_000.0);
        assert_eq!((traces[1].family, traces[1].index), (Family::File, 1));
        std::fs::write(dir.path().join("c.txt"), "not a trace\n").unwrap();
        let e = format!("{:#}", read_trace_dir(dir.path()).unwrap_err());
        assert!(e.contains("c.txt") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn families_parse_by_name_and_file_is_refused() {
        assert_eq!(parse_family("hsdpa"), Ok(Family::Hsdpa));
        assert_eq!(parse_family("3G"), Ok(Family::Cellular3g));
        for f in Family::ALL {
            assert_eq!(parse_family(f.name()), Ok(f));
        }
        assert!(parse_family("file").unwrap_err().contains("broadband"));
        assert!(parse_family("5g").is_err());
    }
}
