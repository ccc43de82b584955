//! The streaming part of `swarmcast demo`: ffmpeg packages a 24 s test clip as DASH, then an
//! origin, 3 edges and the router run in this process on loopback, 6 headless players stream the
//! movie through the router (each throttled to 1 Mbit/s, at 2× speed), and the edge holding
//! the most players is stopped halfway. Prints where each player streamed from, its failovers,
//! stalls and QoE. Without ffmpeg on PATH the part is skipped with a message saying what to
//! install (the rest of the demo needs nothing).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use stream::edge::{EdgeConfig, EdgeServer};
use stream::origin::OriginServer;
use stream::package::{self, PackageOptions, Source};
use stream::player::{play, PlayEvent, PlayOptions};
use stream::proto::abr::RuleKind;
use stream::proto::player::PlayerConfig;
use stream::proto::trace::Trace;
use stream::router::{EdgeSpec, RouterConfig, RouterServer};

const PLAYERS: usize = 6;

fn ffmpeg_present() -> bool {
    std::process::Command::new("ffmpeg")
        .arg("-version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs the streaming demo (or says why it cannot).
pub async fn run() -> Result<()> {
    if !ffmpeg_present() {
        eprintln!(
            "\nstream: skipped: ffmpeg is not installed (apt-get install ffmpeg), and the demo \
             packages its clip with it"
        );
        return Ok(());
    }
    let work = tempfile::tempdir().context("cannot make a temporary directory")?;
    let content = work.path().join("content");
    eprintln!("\nstream: packaging a 24 s test clip (180p 200k, 360p 600k, 2 s segments)...");
    let ladder = package::parse_ladder("180p:200k,360p:600k")?;
    let mut opts =
        PackageOptions::new(Source::Test(Duration::from_secs(24)), content.join("movie1"), ladder);
    opts.segment = Duration::from_secs(2);
    opts.audio_bitrate = 64_000;
    let report = tokio::task::spawn_blocking(move || package::package(&opts))
        .await
        .context("packaging task")??;
    let measured: Vec<String> = report
        .representations
        .iter()
        .map(|r| match &r.rung {
            Some(rung) => format!("{} {rung} {} kb/s", r.kind, r.measured_bps / 1000),
            None => format!("{} {} kb/s", r.kind, r.measured_bps / 1000),
        })
        .collect();
    println!("stream: packaged; measured {}", measured.join(", "));

    let any: SocketAddr = "127.0.0.1:0".parse().expect("static address");
    let origin = OriginServer::bind(any, &content).await?;
    let origin_url = format!("http://{}", origin.local_addr());
    tokio::spawn(origin.run());
    let mut edges = Vec::new();
    let mut specs = Vec::new();
    for i in 1..=3 {
        let name = format!("edge{i}");
        let edge =
            EdgeServer::bind(any, EdgeConfig::new(origin_url.clone(), 64 << 20, name.clone()))
                .await?;
        let url = format!("http://{}", edge.local_addr());
        specs.push(EdgeSpec { name, url: url.clone() });
        edges.push((url, tokio::spawn(edge.run())));
    }
    let mut config = RouterConfig::new(specs);
    config.probe_interval = Duration::from_millis(500);
    let router = RouterServer::bind(any, None, config).await?;
    let manifest = format!("http://{}/play/movie1/manifest.mpd", router.local_addr());
    tokio::spawn(router.run());
    println!("stream: origin, 3 edges and the router up; {PLAYERS} players on {manifest}");

    // Each player reports once (its first segment's server), so PLAYERS slots never fill.
    let (tx, mut first_base) = tokio::sync::mpsc::channel::<(usize, String)>(PLAYERS);
    let mut players = Vec::new();
    for i in 0..PLAYERS {
        let opts = PlayOptions {
            url: manifest.clone(),
            rule: RuleKind::DEFAULT,
            config: PlayerConfig { speed: 2.0, ..PlayerConfig::default() },
            trace: Some(Trace::constant(1_000_000.0)?),
            peer_wait_s: stream::player::DEFAULT_PEER_WAIT_S,
            stop_after_s: None,
        };
        let tx = tx.clone();
        players.push(tokio::spawn(async move {
            let mut told = false;
            play(&opts, |ev| {
                if let (PlayEvent::Segment { segment, .. }, false) = (ev, told) {
                    told = true;
                    let _ = tx.try_send((i, segment.base_url.clone()));
                }
            })
            .await
        }));
    }
    // Stop the edge most players started on, once every player has a segment.
    let mut started = vec![String::new(); PLAYERS];
    for _ in 0..PLAYERS {
        let (i, base) = tokio::time::timeout(Duration::from_secs(30), first_base.recv())
            .await
            .context("a player did not start within 30 s")?
            .context("players stopped")?;
        started[i] = base;
    }
    let busiest = (0..edges.len())
        .max_by_key(|&e| started.iter().filter(|b| b.starts_with(&edges[e].0)).count())
        .expect("three edges");
    tokio::time::sleep(Duration::from_secs(1)).await;
    edges[busiest].1.abort();
    println!("stream: stopped edge{} ({}) mid-stream", busiest + 1, edges[busiest].0);

    for (i, p) in players.into_iter().enumerate() {
        let r = p.await.context("player task")??;
        let from = if started[i].starts_with(&edges[busiest].0) { "stopped edge" } else { "other" };
        println!(
            "stream: player {i}: {} segments, mean {:.0} kb/s, startup {:.2} s, {} failovers, \
             {} stalls ({:.2} s), QoE {:.2}  [started on the {from}]",
            r.segments.len(),
            r.mean_bitrate_kbps,
            r.startup_s,
            r.failovers,
            r.stalls,
            r.stall_s,
            r.qoe
        );
    }
    println!(
        "stream: try it yourself: `swarmcast stream package --test-source 60s --out DIR/movie1`, \
         `swarmcast stream origin --dir DIR`, then open http://127.0.0.1:8080/player/movie1"
    );
    Ok(())
}
