//! The newcomer's first command, `swarmcast demo`, runs every part and reports success: the
//! swarm's copies are byte-for-byte equal, every chat message is delivered and the direct
//! message is read by its recipient only, and every player streams the whole clip, the ones on
//! the stopped edge by failing over.

mod harness;

use std::time::Duration;

use harness::{require, swarmcast, Proc};

#[test]
fn demo_runs_every_part() {
    require("ffmpeg");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = swarmcast();
    cmd.args(["demo", "--size", "4M", "--leechers", "3", "--chat-nodes", "6"]);
    let mut p = Proc::spawn("demo", cmd, dir.path());
    let status = p.wait(Duration::from_secs(180));
    let out = p.stdout_text();
    assert!(status.success(), "{}", p.output());
    assert!(out.contains("every copy is byte-for-byte equal to the original"), "{out}");
    assert!(out.contains("chat: 6 nodes said hello: 30/30 deliveries"), "{out}");
    assert!(out.contains("the other 4 talk: 12/12 deliveries"), "{out}");
    assert!(out.contains("nodes that could read it: [\"n1\"]"), "{out}");
    let players: Vec<&str> = out.lines().filter(|l| l.starts_with("stream: player ")).collect();
    assert_eq!(players.len(), 6, "{out}");
    for line in &players {
        assert!(line.contains(": 12 segments,"), "a player did not play the whole clip: {line}");
        if line.contains("started on the stopped edge") {
            assert!(!line.contains(" 0 failovers"), "no failover from the stopped edge: {line}");
        }
    }
}
