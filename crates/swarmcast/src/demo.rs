//! `swarmcast demo`: the whole job on one machine with no setup. It writes a random file, makes a
//! torrent for it, starts a tracker, one seed and N leechers (all real sessions talking TCP on
//! loopback), shows their progress, prints how long distribution took, and checks every
//! leecher's bytes against the original.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::MultiProgress;
use rand::RngCore;
use torrent::metainfo::{CreateOptions, Metainfo};
use torrent::session::{Role, Session, SessionConfig};
use torrent::tracker::server::{TrackerConfig, TrackerServer};

use crate::progress;

pub async fn run(leechers: usize, size: u64, upload_limit: Option<u64>) -> Result<()> {
    if leechers == 0 || size == 0 {
        bail!("the demo needs at least one leecher and a file size above 0");
    }
    let work = tempfile::tempdir().context("cannot make a temporary directory")?;
    let seed_dir = work.path().join("seed");
    std::fs::create_dir_all(&seed_dir)?;
    let file = seed_dir.join("demo.bin");
    eprintln!("writing a {:.1} MiB random file...", size as f64 / 1048576.0);
    {
        let mut data = vec![0u8; size as usize];
        rand::rng().fill_bytes(&mut data);
        std::fs::write(&file, &data)?;
    }

    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("static address");
    let tracker = TrackerServer::bind(loopback, TrackerConfig::default()).await?;
    let announce = format!("http://{}/announce", tracker.local_addr());
    let tracker_task = tokio::spawn(tracker.run());

    let opts = CreateOptions { trackers: vec![announce.clone()], ..Default::default() };
    let bytes = torrent::metainfo::create(&file, &opts, &mut |_, _| {})?;
    let meta = Metainfo::from_bytes(&bytes)?;
    eprintln!(
        "torrent: {} pieces of {} KiB, tracker {announce}",
        meta.info.num_pieces(),
        meta.info.piece_length / 1024
    );

    let config = |seed_when_done| SessionConfig {
        listen: loopback,
        upload_limit,
        seed_when_done,
        ..SessionConfig::default()
    };
    let seed = Session::start(meta.clone(), seed_dir.clone(), Role::Seed, config(true)).await?;
    let started = Instant::now();
    let mut peers = Vec::new();
    for i in 0..leechers {
        let dir = work.path().join(format!("leecher{i}"));
        // Leechers stay to seed for each other until everyone is done.
        peers.push(Session::start(meta.clone(), dir, Role::Download, config(true)).await?);
    }

    let multi = MultiProgress::new();
    let bars: Vec<_> = (0..leechers)
        .map(|i| multi.add(progress::torrent_bar(&format!("leecher {i}"), size)))
        .collect();
    let mut meters: Vec<_> = peers.iter().map(|p| progress::RateMeter::new(p.stats())).collect();
    let mut done_at: Vec<Option<f64>> = vec![None; leechers];
    let deadline = Duration::from_secs(600);
    let mut last_log = Instant::now();
    while done_at.iter().any(Option::is_none) {
        if started.elapsed() > deadline {
            bail!("the demo did not finish within {} s", deadline.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        for (i, p) in peers.iter().enumerate() {
            let st = p.stats();
            if done_at[i].is_none() && st.complete.load(Ordering::Acquire) {
                done_at[i] = Some(started.elapsed().as_secs_f64());
            }
            let (down, up) = meters[i].sample(st);
            bars[i].set_position(st.bytes_have.load(Ordering::Relaxed));
            bars[i].set_message(progress::status(st, down, up));
        }
        if !progress::interactive() && last_log.elapsed() > Duration::from_secs(2) {
            last_log = Instant::now();
            let pct: Vec<String> =
                peers.iter().map(|p| format!("{:.0}%", p.stats().progress() * 100.0)).collect();
            eprintln!("{:.1}s: {}", started.elapsed().as_secs_f64(), pct.join(" "));
        }
    }
    let total = started.elapsed().as_secs_f64();
    for b in &bars {
        b.finish();
    }
    let original = std::fs::read(&file)?;
    for i in 0..leechers {
        let got = std::fs::read(work.path().join(format!("leecher{i}/demo.bin")))?;
        if got != original {
            bail!("leecher {i}'s copy differs from the original");
        }
    }
    let seed_up = seed.stats().uploaded.load(Ordering::Relaxed) as f64;
    let all = size as f64 * leechers as f64;
    println!(
        "distributed {:.1} MiB to {leechers} leechers in {total:.2} s",
        size as f64 / 1048576.0
    );
    for (i, t) in done_at.iter().enumerate() {
        println!("  leecher {i}: complete at {:.2} s", t.unwrap_or(total));
    }
    println!(
        "the seed uploaded {:.0}% of all bytes; the leechers uploaded the other {:.0}% to each other",
        100.0 * seed_up / all,
        100.0 * (1.0 - seed_up / all).max(0.0)
    );
    println!("every copy is byte-for-byte equal to the original");
    for p in peers {
        p.shutdown().await;
    }
    seed.shutdown().await;
    tracker_task.abort();
    Ok(())
}
