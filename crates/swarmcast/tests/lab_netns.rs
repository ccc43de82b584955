//! `swarmcast lab swarm --netns`: every node a real process in its own network namespace with
//! kernel rate caps. Creating namespaces needs root: as a normal user the test says so and
//! passes. As root, a missing `ip`/`tc` (iproute2, installed by scripts/install-deps.sh) fails.

use std::process::Command;

/// True when this process runs as root (effective uid 0).
fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2))
        == Some("0")
}

#[test]
fn netns_swarm_completes_above_the_bound_and_cleans_up() {
    if !is_root() {
        eprintln!("not run: the --netns lab creates network namespaces and needs root");
        return;
    }
    for tool in ["ip", "tc"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(found, "{tool} is missing: run scripts/test.sh, which installs iproute2");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("lab.json");
    let child = Command::new(env!("CARGO_BIN_EXE_swarmcast"))
        .args([
            "lab",
            "swarm",
            "--netns",
            "--peers",
            "3",
            "--file-size",
            "2M",
            "--peer-upload",
            "512k",
            "--server-upload",
            "2M",
            "--time-limit",
            "120",
            "--json",
        ])
        .arg(&json)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start swarmcast");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for swarmcast");
    let report = format!(
        "--- stdout ---\n{}--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "lab failed:\n{report}");

    let text = std::fs::read_to_string(&json).expect("the lab wrote its JSON");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON report");
    assert_eq!(v["architecture"], "p2p");
    assert_eq!(v["n"], 3);
    let measured = v["measured_s"].as_f64().expect("measured_s");
    let bound = v["bound_s"].as_f64().expect("bound_s");
    // N·F/(u_s + Σu) = 3·2 MiB / 3.5 MiB/s.
    assert!((bound - 6.0 / 3.5).abs() < 1e-9, "bound {bound}");
    assert!(measured >= bound, "measured {measured} s below the bound {bound} s");
    let peers = v["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 3);
    for p in peers {
        let t = p["completed_s"].as_f64().expect("completed_s");
        assert!(t > 0.0 && t <= measured, "{p}");
    }

    // Every namespace the run made is gone.
    let list = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    let list = String::from_utf8_lossy(&list.stdout);
    let prefix = format!("sc-{pid}-");
    let left: Vec<&str> = list.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}
