//! Issue 4 end to end: one anchor and 20 chat nodes as real processes on loopback, talking
//! QUIC. Every node receives every room message; after 5 nodes and the anchor are killed the
//! rest keep chatting; the killed ones, restarted while the anchor is still down, re-join
//! through peers they remember and catch up on what they missed; a direct message is readable
//! by its recipient only.

mod harness;

use std::path::Path;
use std::time::Duration;

use harness::{require, start_anchor, swarmcast, wait_for, Proc};

const NODES: usize = 20;
const KILLED: usize = 5;

fn start_node(i: usize, anchor: u16, dir: &Path) -> Proc {
    let mut cmd = swarmcast();
    cmd.args(["chat", "--script", "--nick", &format!("n{i}")])
        .args(["--anchor", &format!("127.0.0.1:{anchor}")])
        .arg("--data")
        .arg(dir.join(format!("n{i}")));
    let mut p = Proc::spawn_piped(&format!("n{i}"), cmd, dir);
    p.wait_output("\"type\":\"ready\"", Duration::from_secs(30));
    p
}

/// The room texts a node printed as received messages.
fn received(p: &Proc) -> Vec<String> {
    p.stdout_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "message")
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .collect()
}

fn wait_all_received(nodes: &[(usize, &Proc)], texts: &[(usize, String)], timeout: Duration) {
    let what = format!("{} nodes to receive {} messages", nodes.len(), texts.len());
    let missing = || {
        let mut missing = Vec::new();
        for (i, p) in nodes {
            let got = received(p);
            for (author, t) in texts {
                if author != i && !got.contains(t) {
                    missing.push(format!("n{i} lacks {t:?}"));
                }
            }
        }
        missing
    };
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if missing().is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = missing();
    assert!(
        m.is_empty(),
        "timed out waiting for {what}: {} missing, e.g. {:?}",
        m.len(),
        &m[..m.len().min(10)]
    );
}

#[test]
fn twenty_nodes_chat_survive_crashes_catch_up_and_keep_dms_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut anchor, port) = start_anchor(dir.path());

    let mut nodes: Vec<Proc> = (0..NODES).map(|i| start_node(i, port, dir.path())).collect();
    for p in &mut nodes {
        p.wait_output("\"type\":\"neighbor\",\"up\":true", Duration::from_secs(30));
    }

    // Round 1: everyone says hello; everyone hears everyone.
    let round1: Vec<(usize, String)> =
        (0..NODES).map(|i| (i, format!("hello from n{i}"))).collect();
    for (i, text) in &round1 {
        nodes[*i].send_line(text);
    }
    let all: Vec<(usize, &Proc)> = nodes.iter().enumerate().collect();
    wait_all_received(&all, &round1, Duration::from_secs(60));

    // Kill 5 nodes and the anchor; the 15 others keep chatting.
    anchor.kill();
    for p in &mut nodes[NODES - KILLED..] {
        p.kill();
    }
    let survivors = NODES - KILLED;
    let round2: Vec<(usize, String)> =
        (0..survivors).map(|i| (i, format!("after the crash, n{i}"))).collect();
    for (i, text) in &round2 {
        nodes[*i].send_line(text);
    }
    let alive: Vec<(usize, &Proc)> = nodes[..survivors].iter().enumerate().collect();
    wait_all_received(&alive, &round2, Duration::from_secs(90));

    // The killed ones come back (same data directories) and, with the anchor still down,
    // re-join through the peers they remember and catch up on round 2.
    for (i, node) in nodes.iter_mut().enumerate().skip(survivors) {
        let log = dir.path().join(format!("n{i}.first.out"));
        std::fs::rename(&node.stdout, &log).expect("keep the first run's log");
        *node = start_node(i, port, dir.path());
    }
    let back: Vec<(usize, &Proc)> = nodes.iter().enumerate().skip(survivors).collect();
    wait_all_received(&back, &round2, Duration::from_secs(90));
    for (i, p) in &back {
        let out = p.stdout_text();
        assert!(
            out.contains("\"via\":\"sync\""),
            "n{i} should have caught up by anti-entropy:\n{out}"
        );
    }

    // A direct message from n0 to n1: n1 reads it, nobody else can.
    let secret = "the-secret-is-swordfish";
    nodes[0].send_line(&format!("/msg n1 {secret}"));
    wait_for("n1 to receive the direct message", Duration::from_secs(30), || {
        nodes[1].stdout_text().lines().any(|l| l.contains("\"type\":\"dm\"") && l.contains(secret))
    });
    // Let the sealed envelope reach everyone else too, then check none of them shows or
    // stores the plaintext.
    std::thread::sleep(Duration::from_secs(3));
    for (i, p) in nodes.iter().enumerate().skip(2) {
        assert!(!p.stdout_text().contains(secret), "n{i} printed n1's direct message");
    }
    for entry in std::fs::read_dir(dir.path()).expect("read test dir") {
        let path = entry.expect("dir entry").path();
        if path.file_name().is_some_and(|n| n == "n0") || !path.is_dir() {
            continue;
        }
        for db in std::fs::read_dir(&path).expect("node dir") {
            let db = db.expect("entry").path();
            let bytes = std::fs::read(&db).expect("read db file");
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds the direct message in plaintext",
                db.display()
            );
        }
    }
}

/// The terminal UI in a real pty (util-linux `script`): a typed line is shown as sent, `/peers`
/// answers, an unknown command gets a hint, `/quit` leaves with status 0 and the terminal
/// restored.
#[test]
fn terminal_ui_sends_lists_peers_and_quits() {
    require("script");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("tui.log");
    let bin = env!("CARGO_BIN_EXE_swarmcast");
    let data = dir.path().join("tui");
    let inner = format!("{bin} chat --nick tuitest --data {}", data.display());
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qfc", &inner]).arg(&log);
    let mut p = Proc::spawn_piped("script", cmd, dir.path());
    let screen = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("the UI to start", Duration::from_secs(20), || screen().contains("you are tuitest"));
    p.send_line("hi there\r/peers\r/bogus\r");
    wait_for("the UI to show the sent line", Duration::from_secs(20), || {
        let s = screen();
        s.contains("#general <tuitest> hi there")
            && s.contains("0 neighbors")
            && s.contains("unknown command /bogus")
    });
    p.send_line("/quit\r");
    let status = p.wait(Duration::from_secs(20));
    assert!(status.success(), "{}", p.output());
    // The alternate screen was left (ESC [ ? 1049 l).
    assert!(screen().contains("\u{1b}[?1049l"), "terminal not restored");
}
