//! The chat part of `swarmcast demo`: an anchor and N chat nodes in this process (real QUIC on
//! loopback, each with its own key and SQLite history in a temporary directory). Everyone says
//! hello, a third of the nodes leave, the rest keep talking, and one direct message shows that
//! only its recipient can read it. Prints how many deliveries arrived and how fast.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use overlay::chat::{self, ChatConfig, ChatEvent, Command};
use tokio::sync::mpsc;

struct DemoNode {
    cmd: Option<mpsc::Sender<Command>>,
}

/// Starts a node whose events are forwarded, stamped, to `all` as `(index, time, event)`.
async fn start(
    dir: &std::path::Path,
    index: usize,
    nick: String,
    anchors: Vec<SocketAddr>,
    all: mpsc::Sender<(usize, Instant, ChatEvent)>,
) -> Result<(DemoNode, SocketAddr)> {
    let config = ChatConfig {
        data: dir.join(&nick),
        listen: "127.0.0.1:0".parse().expect("static address"),
        advertise: None,
        anchors,
        nick,
        rooms: vec!["general".into()],
        node: Default::default(),
        share: Vec::new(),
        dht: None,
    };
    let (cmd, cmd_rx) = mpsc::channel(16);
    let (ev_tx, mut ev_rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        if let Err(e) = chat::run(config, cmd_rx, ev_tx).await {
            eprintln!("chat node {index} stopped: {e}");
        }
    });
    let addr = loop {
        match tokio::time::timeout(Duration::from_secs(10), ev_rx.recv()).await {
            Ok(Some(ChatEvent::Ready { addr, .. })) => break addr.parse()?,
            Ok(Some(_)) => {}
            _ => bail!("chat node {index} did not start"),
        }
    };
    tokio::spawn(async move {
        while let Some(ev) = ev_rx.recv().await {
            // Bounded: a node whose events are not read waits (and its own queue fills).
            if all.send((index, Instant::now(), ev)).await.is_err() {
                return;
            }
        }
    });
    Ok((DemoNode { cmd: Some(cmd) }, addr))
}

/// Waits until every `(receiver, text)` pair in `want` was seen; returns the arrival times.
async fn collect(
    rx: &mut mpsc::Receiver<(usize, Instant, ChatEvent)>,
    want: &BTreeMap<(usize, String), ()>,
    timeout: Duration,
) -> BTreeMap<(usize, String), Instant> {
    let mut got = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while got.len() < want.len() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((i, t, ChatEvent::Message { text, .. } | ChatEvent::Dm { text, .. }))) => {
                let key = (i, text);
                if want.contains_key(&key) {
                    got.entry(key).or_insert(t);
                }
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    got
}

fn latency_line(
    sent: &BTreeMap<String, Instant>,
    got: &BTreeMap<(usize, String), Instant>,
) -> String {
    let mut ms: Vec<f64> = got
        .iter()
        .filter_map(|((_, text), t)| {
            sent.get(text).map(|s| t.duration_since(*s).as_secs_f64() * 1e3)
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        return "no deliveries".into();
    }
    let median = ms[ms.len() / 2];
    format!("latency median {median:.1} ms, max {:.1} ms", ms[ms.len() - 1])
}

/// Runs the chat demo with `n` nodes (plus an anchor).
pub async fn run(n: usize) -> Result<()> {
    if n < 3 {
        bail!("the chat demo needs at least 3 nodes");
    }
    let work = tempfile::tempdir().context("cannot make a temporary directory")?;
    let (all_tx, mut all_rx) = mpsc::channel(4096);
    eprintln!("\nchat: starting an anchor and {n} nodes over QUIC on loopback...");
    let (_anchor, anchor_addr) =
        start(work.path(), usize::MAX, "anchor".into(), vec![], all_tx.clone()).await?;
    let mut nodes = Vec::new();
    for i in 0..n {
        let (node, _) =
            start(work.path(), i, format!("n{i}"), vec![anchor_addr], all_tx.clone()).await?;
        nodes.push(node);
    }
    // Wait until every node has a neighbor.
    let mut with_neighbor = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while with_neighbor.len() < n {
        match tokio::time::timeout_at(deadline, all_rx.recv()).await {
            Ok(Some((i, _, ChatEvent::Neighbor { up: true, .. }))) if i < n => {
                with_neighbor.insert(i);
            }
            Ok(Some(_)) => {}
            _ => bail!("only {} of {n} nodes found a neighbor in 20 s", with_neighbor.len()),
        }
    }

    // Round 1: everyone says hello.
    let mut sent = BTreeMap::new();
    let mut want = BTreeMap::new();
    let start_all = Instant::now();
    for (i, node) in nodes.iter().enumerate() {
        let text = format!("hello from n{i}");
        sent.insert(text.clone(), Instant::now());
        let cmd = node.cmd.as_ref().expect("all nodes run in round 1");
        cmd.send(Command::Say { room: "general".into(), text: text.clone() }).await?;
        for j in (0..n).filter(|&j| j != i) {
            want.insert((j, text.clone()), ());
        }
    }
    let got = collect(&mut all_rx, &want, Duration::from_secs(30)).await;
    println!(
        "chat: {n} nodes said hello: {}/{} deliveries in {:.0} ms ({})",
        got.len(),
        want.len(),
        start_all.elapsed().as_secs_f64() * 1e3,
        latency_line(&sent, &got)
    );

    // A third leave; the rest keep talking.
    let leaving = n / 3;
    for node in nodes.iter_mut().skip(n - leaving) {
        node.cmd = None;
    }
    let stay = n - leaving;
    // Give the others a moment to notice (their connections close) before talking again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut sent, mut want) = (BTreeMap::new(), BTreeMap::new());
    for (i, node) in nodes.iter().enumerate().take(stay) {
        let text = format!("n{i} after {leaving} left");
        sent.insert(text.clone(), Instant::now());
        let cmd = node.cmd.as_ref().expect("staying nodes run");
        cmd.send(Command::Say { room: "general".into(), text: text.clone() }).await?;
        for j in (0..stay).filter(|&j| j != i) {
            want.insert((j, text.clone()), ());
        }
    }
    let got = collect(&mut all_rx, &want, Duration::from_secs(30)).await;
    println!(
        "chat: {leaving} nodes left; 1 s later the other {stay} talk: {}/{} deliveries ({})",
        got.len(),
        want.len(),
        latency_line(&sent, &got)
    );

    // A direct message from n0 to n1.
    let secret = "a direct message only n1 can read";
    let cmd = nodes[0].cmd.as_ref().expect("n0 stays");
    cmd.send(Command::Msg { to: "n1".into(), text: secret.into() }).await?;
    let mut readers = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Some((i, _, ev))) = tokio::time::timeout_at(deadline, all_rx.recv()).await {
        if let ChatEvent::Dm { text, .. } = ev {
            if text == secret {
                readers.push(format!("n{i}"));
            }
        }
    }
    println!("chat: n0 sent n1 a sealed direct message; nodes that could read it: {readers:?}");
    println!(
        "chat: try it yourself: `swarmcast anchor --listen 127.0.0.1:4500` and, in other terminals, \
         `swarmcast chat --anchor 127.0.0.1:4500 --nick NAME`"
    );
    Ok(())
}
