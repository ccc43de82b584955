//! Our Mainline DHT against libtorrent's (python3-libtorrent 2.0, tests/peers/lt_dht.py), as
//! processes on loopback: a `swarmcast dht node` is the router both sides join through;
//! a peer libtorrent announces is found by `swarmcast dht get-peers`, and a peer
//! `swarmcast dht announce` announces is found by libtorrent's `dht_get_peers`. Every wait is
//! bounded; only processes the test started are killed.

mod harness;

use std::time::Duration;

use harness::*;

const LONG: Duration = Duration::from_secs(60);

#[test]
fn our_dht_and_libtorrents_find_each_others_peers() {
    let dir = tempfile::tempdir().unwrap();
    let router_port = free_port();
    let mut router = swarmcast();
    router.args(["dht", "node", "--listen", &format!("127.0.0.1:{router_port}")]);
    let mut router = Proc::spawn("dht router", router, dir.path());
    router.wait_output("DHT node", LONG);

    // libtorrent announces; we look it up.
    let ih_lt = "0123456789abcdef0123456789abcdef01234567";
    let lt_port = free_port();
    let mut announce = libtorrent_script("lt_dht.py");
    announce.args(["announce", &router_port.to_string(), &lt_port.to_string(), ih_lt]);
    let mut lt_announcer = Proc::spawn("libtorrent announcer", announce, dir.path());
    lt_announcer.wait_output("announced", LONG);
    let want = format!("peer 127.0.0.1:{lt_port}");
    let mut last = String::new();
    wait_for("swarmcast dht get-peers to find libtorrent's peer", LONG, || {
        let mut get = swarmcast();
        get.args(["dht", "get-peers", ih_lt, "--listen", "127.0.0.1:0"])
            .args(["--bootstrap", &format!("127.0.0.1:{router_port}")]);
        let out = get.output().expect("run swarmcast dht get-peers");
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        last.lines().any(|l| l == want)
    });
    assert!(last.lines().filter(|l| l.starts_with("peer ")).all(|l| l == want), "{last}");
    lt_announcer.kill();

    // We announce; libtorrent looks it up.
    let ih_ours = "abcdef0123456789abcdef0123456789abcdef01";
    let mut ours = swarmcast();
    ours.args(["dht", "announce", ih_ours, "--port", "4321", "--listen", "127.0.0.1:0"])
        .args(["--bootstrap", &format!("127.0.0.1:{router_port}")]);
    let said = run_ok(ours);
    assert!(said.contains("announced to"), "{said}");
    let mut get = libtorrent_script("lt_dht.py");
    get.args(["get-peers", &router_port.to_string(), &free_port().to_string(), ih_ours, "30"]);
    let found = run_ok(get);
    assert!(found.lines().any(|l| l == "peer 127.0.0.1:4321"), "libtorrent found: {found}");
    router.kill();
}
