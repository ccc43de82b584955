//! `swarmcast search WORDS`: joins the overlay through an anchor as a short-lived node (a fresh
//! key, nothing shared), asks the overlay by flooding, expanding rings or random walks, and
//! prints each result as it arrives, then every file found with its sources and magnet. With
//! `--mode dht`, it joins the DHT instead and reads the keyword index ([`crate::dht_index`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use overlay::chat::envelope::{dht_contacts_from, Sync};
use overlay::chat::inert::inert;
use overlay::driver::{Driver, Event};
use overlay::identity::Identity;
use overlay::proto::search::{self, Mode, Record, MAX_TTL};
use overlay::transport::Endpoint;
use serde::Serialize;
use tokio::sync::mpsc;

/// How `swarmcast search` asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SearchMode {
    /// One flood of TTL --ttl (Gnutella's brute force).
    Flood,
    /// Floods of TTL 1, 2, 4, 7 until --results results.
    Ring,
    /// Random walkers checking back with us (Lv et al.) until --results results.
    Walk,
    /// The DHT's keyword index (joined through --dht-bootstrap, or through the DHT nodes the
    /// overlay's nodes name when only --anchor is given): every word looked up, the records
    /// that name them all kept.
    Dht,
    /// Expanding rings (cheap for popular files, a full flood for rare ones) and, at the same
    /// time, the DHT's keyword index (joined through --dht-bootstrap, or the DHT node the first
    /// overlay neighbour names); each file and publisher once.
    Auto,
}

/// Arguments of `swarmcast search`.
#[derive(clap::Args)]
pub struct SearchArgs {
    /// Words of the name (every one must match).
    #[arg(required = true)]
    pub words: Vec<String>,
    /// Anchor node to join through, HOST:PORT (repeatable).
    #[arg(long = "anchor")]
    pub anchors: Vec<String>,
    /// A DHT node to join through for --mode dht and auto, HOST:PORT (repeatable): a swarmcast
    /// node's (`swarmcast dht node`, or a sharing node's seeding port).
    #[arg(long = "dht-bootstrap")]
    pub dht_bootstrap: Vec<String>,
    /// How to search.
    #[arg(long, value_enum, default_value_t = SearchMode::Auto)]
    pub mode: SearchMode,
    /// TTL of a flood (at most 7).
    #[arg(long, default_value_t = MAX_TTL)]
    pub ttl: u8,
    /// Results after which rings and walks stop.
    #[arg(long, default_value_t = 10)]
    pub results: usize,
    /// Give up after this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// UDP address to listen on (walkers' results come straight here).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Address other nodes should dial, if not the listening one.
    #[arg(long)]
    pub advertise: Option<SocketAddr>,
    /// One JSON object per line: each result as it comes, then a summary.
    #[arg(long)]
    pub json: bool,
}

/// One file found, with everyone who shares it.
struct Found {
    record: Record,
    publishers: Vec<String>,
    peers: Vec<SocketAddr>,
    hops: u8,
}

impl Found {
    fn magnet(&self) -> String {
        crate::share::magnet(&self.record.name, self.record.info_hash, &self.peers)
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line<'a> {
    Result {
        name: String,
        size: u64,
        info_hash: String,
        sources: usize,
        hops: u8,
        publisher: &'a str,
        magnet: String,
    },
    Done {
        files: usize,
        results: usize,
        refused_records: u64,
        millis: u128,
    },
}

/// `swarmcast search`.
pub async fn run(args: SearchArgs) -> Result<()> {
    let text = args.words.join(" ");
    if search::keywords(&text).is_empty() {
        bail!("search for at least one word of two letters or more");
    }
    let mode = match args.mode {
        SearchMode::Flood => Mode::Flood(args.ttl.clamp(1, MAX_TTL)),
        SearchMode::Ring | SearchMode::Auto => Mode::Ring,
        SearchMode::Walk => Mode::Walk,
        SearchMode::Dht => return run_dht(&args, &text).await,
    };
    if args.anchors.is_empty() {
        bail!("give an overlay node to join through: --anchor HOST:PORT (or use --mode dht)");
    }
    let auto = args.mode == SearchMode::Auto;
    let anchors = crate::anchors::resolve(&args.anchors).await?;
    let identity = Identity::generate(&mut rand::rng());
    let endpoint = Endpoint::bind(&identity, args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let advertise = args.advertise.unwrap_or(endpoint.local_addr()?);
    let mut driver = Driver::start(endpoint, advertise, Default::default(), anchors, Vec::new());
    let config = search::Config { enough: args.results.max(1), ..Default::default() };
    driver.enable_search(config);
    let started = tokio::time::Instant::now();
    let deadline = started + args.timeout;
    // With --mode auto the DHT's index is read at the same time, joined through
    // --dht-bootstrap or through the DHT node our first neighbour names.
    let (dht_tx, mut dht_rx) = mpsc::channel::<(Record, u8)>(64);
    let mut dht_tx = auto.then_some(dht_tx);
    let mut dht_task = None;
    if auto && !args.dht_bootstrap.is_empty() {
        let tx = dht_tx.take().expect("not taken yet");
        dht_task =
            Some(tokio::spawn(dht_side(args.listen, args.dht_bootstrap.clone(), text.clone(), tx)));
    }
    // Join first: a search needs a neighbour to go to.
    let joined = tokio::time::timeout_at(deadline, async {
        loop {
            if let Event::NeighborUp(peer) = driver.next_event().await {
                return peer;
            }
        }
    })
    .await;
    let Ok(first) = joined else {
        driver.shutdown().await;
        bail!(
            "could not join the overlay within {}: is a node listening at {}?",
            humantime::format_duration(args.timeout),
            args.anchors.join(", ")
        );
    };
    let asked = match dht_tx.is_some() {
        true => {
            let ask = postcard::to_allocvec(&Sync::DhtAsk).context("encoding a DHT question")?;
            driver.direct(first, ask).is_ok().then_some(first)
        }
        false => None,
    };
    let id = driver.search(&text, mode).map_err(|e| anyhow::anyhow!("cannot search: {e}"))?;
    let mut found: BTreeMap<[u8; 20], Found> = BTreeMap::new();
    let mut results = 0;
    let mut timed_out = false;
    let (mut overlay_done, mut dht_done) = (false, !auto);
    while !(overlay_done && dht_done) {
        // No way into the DHT: the neighbour was not asked, or named no DHT node by the time
        // the overlay's search ended.
        if dht_tx.is_some() && (asked.is_none() || overlay_done) {
            dht_tx = None;
            dht_done = true;
            continue;
        }
        // The overlay node is polled to the end (while the DHT's lookups run, it keeps its
        // connections), and what it reports after its search ended is ignored.
        let event = tokio::time::timeout_at(deadline, async {
            tokio::select! {
                ev = driver.next_event() => Some(ev),
                r = dht_rx.recv(), if !dht_done => r.map(|(record, hops)| {
                    Event::Search(search::Output::Result { id, record, hops })
                }),
            }
        })
        .await;
        let Ok(event) = event else {
            timed_out = true;
            break;
        };
        let Some(event) = event else {
            // The DHT side ended (its sender dropped).
            dht_done = dht_tx.is_none();
            continue;
        };
        match event {
            Event::Search(search::Output::Result { id: of, record, hops }) if of == id => {
                results += usize::from(add_result(&mut found, record, hops, args.json));
            }
            Event::Search(search::Output::Done { id: of, .. }) if of == id => overlay_done = true,
            Event::Direct { from, payload } if Some(from) == asked && dht_tx.is_some() => {
                let Ok(Sync::DhtContacts { addrs }) = overlay::wire::from_canonical(&payload)
                else {
                    continue;
                };
                let contacts: Vec<String> =
                    dht_contacts_from(addrs, from.addr).iter().map(ToString::to_string).collect();
                let tx = dht_tx.take().expect("checked");
                match contacts.is_empty() {
                    true => dht_done = true,
                    false => {
                        dht_task =
                            Some(tokio::spawn(dht_side(args.listen, contacts, text.clone(), tx)));
                    }
                }
            }
            _ => {}
        }
    }
    let mut refused = driver.refused_records();
    driver.shutdown().await;
    if let Some(task) = dht_task {
        // Ended by now unless the search timed out.
        if timed_out {
            task.abort();
        }
        match task.await {
            Ok(Ok(n)) => refused += n as u64,
            Ok(Err(e)) => eprintln!("DHT: {e:#}; the results are the overlay's"),
            Err(e) if !timed_out => {
                eprintln!("DHT: the lookup task failed ({e}); the results are the overlay's")
            }
            Err(_) => {}
        }
    }
    if timed_out {
        say_timed_out(&args);
    }
    print_summary(&found, results, refused, started, args.json)
}

/// The DHT half of `--mode auto`: joins the DHT through `bootstrap` and sends what the keyword
/// index holds for `text` to `results`; returns how many entries were refused.
async fn dht_side(
    listen: SocketAddr,
    bootstrap: Vec<String>,
    text: String,
    results: mpsc::Sender<(Record, u8)>,
) -> Result<usize> {
    let node = crate::dht_cmd::node_for_torrent(listen.ip(), &bootstrap, None, None)
        .await
        .with_context(|| format!("could not join the DHT through {}", bootstrap.join(", ")))?;
    crate::dht_index::find(Arc::new(node), &search::keywords(&text), results).await
}

/// `swarmcast search --mode dht`.
async fn run_dht(args: &SearchArgs, text: &str) -> Result<()> {
    let started = tokio::time::Instant::now();
    let mut bootstrap = args.dht_bootstrap.clone();
    if bootstrap.is_empty() {
        if args.anchors.is_empty() {
            bail!("--mode dht needs a way in: --anchor HOST:PORT or --dht-bootstrap HOST:PORT");
        }
        // The overlay's nodes name their DHT nodes.
        let contacts =
            crate::dht_index::contacts_via_overlay(&args.anchors, args.listen, args.timeout)
                .await?;
        bootstrap = contacts.iter().map(ToString::to_string).collect();
    }
    let (tx, mut rx) = mpsc::channel(64);
    let lookup = tokio::spawn(dht_side(args.listen, bootstrap, text.to_string(), tx));
    // Each result is printed as its word's lookup ends; one --timeout covers joining the DHT
    // and the lookups.
    let mut files: BTreeMap<[u8; 20], Found> = BTreeMap::new();
    let mut results = 0;
    let all = tokio::time::timeout_at(started + args.timeout, async {
        while let Some((record, hops)) = rx.recv().await {
            results += usize::from(add_result(&mut files, record, hops, args.json));
        }
    })
    .await;
    let refused = match all {
        Ok(()) => lookup.await.context("the lookup task failed")??,
        Err(_) => {
            lookup.abort();
            say_timed_out(args);
            0
        }
    };
    print_summary(&files, results, refused as u64, started, args.json)
}

/// Says that `--timeout` cut a search short (not in `--json`, whose summary line has its time).
fn say_timed_out(args: &SearchArgs) {
    if !args.json {
        eprintln!(
            "stopped after {} (--timeout); the results so far:",
            humantime::format_duration(args.timeout)
        );
    }
}

/// Counts a result under its file (by info-hash: its publishers, its sources, the fewest hops)
/// and prints it; false (and nothing printed) if that publisher was counted for it already
/// (found both in the overlay and in the DHT).
fn add_result(found: &mut BTreeMap<[u8; 20], Found>, record: Record, hops: u8, json: bool) -> bool {
    let publisher = record.publisher.to_string();
    if let Some(f) = found.get_mut(&record.info_hash) {
        if f.publishers.contains(&publisher) {
            f.hops = f.hops.min(hops);
            return false;
        }
    }
    let f = found.entry(record.info_hash).or_insert_with(|| Found {
        record: record.clone(),
        publishers: Vec::new(),
        peers: Vec::new(),
        hops,
    });
    f.publishers.push(publisher.clone());
    f.hops = f.hops.min(hops);
    for p in &record.peers {
        if !f.peers.contains(p) && f.peers.len() < 16 {
            f.peers.push(*p);
        }
    }
    print_result(f, &publisher, hops, json);
    true
}

fn print_summary(
    found: &BTreeMap<[u8; 20], Found>,
    results: usize,
    refused: u64,
    started: tokio::time::Instant,
    json: bool,
) -> Result<()> {
    if json {
        let done = Line::Done {
            files: found.len(),
            results,
            refused_records: refused,
            millis: started.elapsed().as_millis(),
        };
        println!("{}", serde_json::to_string(&done)?);
    } else {
        println!(
            "{} files from {results} results in {:.1} s",
            found.len(),
            started.elapsed().as_secs_f64()
        );
        for f in found.values() {
            println!(
                "{}  {} bytes  {} sources, nearest {} hops  {}",
                inert(&f.record.name),
                f.record.size,
                f.publishers.len(),
                f.hops,
                f.magnet()
            );
        }
    }
    Ok(())
}

fn print_result(f: &Found, publisher: &str, hops: u8, json: bool) {
    if json {
        let line = Line::Result {
            name: inert(&f.record.name),
            size: f.record.size,
            info_hash: hex::encode(f.record.info_hash),
            sources: f.publishers.len(),
            hops,
            publisher,
            magnet: f.magnet(),
        };
        println!("{}", serde_json::to_string(&line).expect("a result encodes to JSON"));
    } else {
        eprintln!(
            "found {} ({} bytes) at {hops} hops from {}",
            inert(&f.record.name),
            f.record.size,
            &publisher[..16]
        );
    }
}
