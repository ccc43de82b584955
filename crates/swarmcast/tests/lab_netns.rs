//! `swarmcast lab swarm --netns`: every node a real process in its own network namespace with
//! kernel rate caps. Creating namespaces needs root (CI runs as root): as a normal user the tests
//! fail and say so. A missing `ip`/`tc` (iproute2, installed by scripts/install-deps.sh) fails.

use std::process::Command;

/// True when this process runs as root (effective uid 0).
fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2))
        == Some("0")
}

/// The lab needs root for namespaces (CI runs as root): without it the test fails, it does not
/// pass unrun.
fn require_root_and_iproute2() {
    assert!(
        is_root(),
        "the --netns lab creates network namespaces and needs root: run the tests as root"
    );
    for tool in ["ip", "tc"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(found, "{tool} is missing: run scripts/test.sh, which installs iproute2");
    }
}

/// Names of the namespaces that process `pid`'s labs made and that still exist.
fn namespaces_of(pid: u32) -> Vec<String> {
    let list = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    let prefix = format!("sc-{pid}-");
    String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

#[test]
fn netns_swarm_completes_above_the_bound_and_cleans_up() {
    require_root_and_iproute2();
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
    let left = namespaces_of(pid);
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

/// `timeout` sends SIGTERM, a closed terminal SIGHUP: both clean up like Ctrl-C.
#[test]
fn a_lab_stopped_by_sigterm_or_sighup_removes_its_namespaces() {
    require_root_and_iproute2();
    for signal in ["TERM", "HUP"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new(env!("CARGO_BIN_EXE_swarmcast"))
            .args(["lab", "swarm", "--netns", "--peers", "4", "--file-size", "64M"])
            .args(["--peer-upload", "256k", "--server-upload", "1M", "--time-limit", "120"])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start swarmcast");
        let pid = child.id();
        // Bounded wait until the lab has made its namespaces (the run would take minutes).
        let mut made = 0;
        for _ in 0..300 {
            made = namespaces_of(pid).len();
            if made >= 5 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(made >= 5, "the lab made {made} namespaces in 30 s");
        let sent = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -{signal} {pid}");
        let out = child.wait_with_output().expect("wait for swarmcast");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "an interrupted lab exits non-zero");
        assert!(stderr.contains(&format!("SIG{signal}")), "{stderr}");
        let left = namespaces_of(pid);
        assert!(left.is_empty(), "SIG{signal} left namespaces behind: {left:?}");
    }
}
