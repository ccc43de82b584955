//! Our Mainline DHT against libtorrent's (python3-libtorrent 2.0, tests/peers/lt_dht.py), as
//! processes on loopback, with a `swarmcast dht node` as the router both sides join through:
//! - a peer libtorrent announces is found by `swarmcast dht get-peers`, and a peer
//!   `swarmcast dht announce` announces is found by libtorrent's `dht_get_peers`, over IPv4
//!   and over IPv6 (BEP 32: every node on [::1]);
//! - trackerless swarms: a libtorrent seed announces in the DHT and `swarmcast get MAGNET`
//!   (no tracker, no `--peer`) downloads from it, bytes equal; `swarmcast seed` announces and a
//!   libtorrent session downloads the magnet through the DHT alone; the seed's DHT node
//!   answers on its peer port.
//!
//! - BEP 51: `swarmcast dht sample` lists the info-hashes a libtorrent node stores;
//! - BEP 44: an immutable item put by us is read by libtorrent, and the reverse; a mutable item
//!   we put is read by libtorrent, and libtorrent's newer version of it is read by us.
//!
//! Every wait is bounded; only processes the test started are killed.

mod harness;

use std::time::Duration;

use harness::*;

const LONG: Duration = Duration::from_secs(60);

#[test]
fn our_dht_and_libtorrents_find_each_others_peers() {
    find_each_others_peers("127.0.0.1");
}

#[test]
fn our_dht_and_libtorrents_find_each_others_peers_over_ipv6() {
    find_each_others_peers("::1");
}

/// Every node on `ip`: our router and lookups, libtorrent's sessions (`LT_IPV6`).
fn find_each_others_peers(ip: &str) {
    let at = |port: u16| std::net::SocketAddr::new(ip.parse().unwrap(), port).to_string();
    let lt = |script: &str| {
        let mut c = libtorrent_script(script);
        if ip.contains(':') {
            c.env("LT_IPV6", "1");
        }
        c
    };
    let dir = tempfile::tempdir().unwrap();
    let router_port = free_port();
    let mut router = swarmcast();
    router.args(["dht", "node", "--listen", &at(router_port)]);
    let mut router = Proc::spawn("dht router", router, dir.path());
    router.wait_output("DHT node", LONG);

    // libtorrent announces; we look it up.
    let ih_lt = "0123456789abcdef0123456789abcdef01234567";
    let lt_port = free_port();
    let mut announce = lt("lt_dht.py");
    announce.args(["announce", &router_port.to_string(), &lt_port.to_string(), ih_lt]);
    let mut lt_announcer = Proc::spawn("libtorrent announcer", announce, dir.path());
    lt_announcer.wait_output("announced", LONG);
    let want = format!("peer {}", at(lt_port));
    let mut last = String::new();
    wait_for("swarmcast dht get-peers to find libtorrent's peer", LONG, || {
        let mut get = swarmcast();
        get.args(["dht", "get-peers", ih_lt, "--listen", &at(0)])
            .args(["--bootstrap", &at(router_port)]);
        let out = get.output().expect("run swarmcast dht get-peers");
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        last.lines().any(|l| l == want)
    });
    assert!(last.lines().filter(|l| l.starts_with("peer ")).all(|l| l == want), "{last}");
    lt_announcer.kill();

    // We announce; libtorrent looks it up.
    let ih_ours = "abcdef0123456789abcdef0123456789abcdef01";
    let mut ours = swarmcast();
    ours.args(["dht", "announce", ih_ours, "--port", "4321", "--listen", &at(0)])
        .args(["--bootstrap", &at(router_port)]);
    let said = run_ok(ours);
    assert!(said.contains("announced to"), "{said}");
    let mut get = lt("lt_dht.py");
    get.args(["get-peers", &router_port.to_string(), &free_port().to_string(), ih_ours, "30"]);
    let found = run_ok(get);
    // libtorrent prints the address without brackets.
    let want = format!("peer {ip}:4321");
    assert!(found.lines().any(|l| l == want), "libtorrent found: {found}");
    router.kill();
}

/// A `swarmcast dht node` on a free port: the router of one test.
fn router(dir: &std::path::Path) -> (Proc, u16) {
    let port = free_port();
    let mut cmd = swarmcast();
    cmd.args(["dht", "node", "--listen", &format!("127.0.0.1:{port}")]);
    let mut p = Proc::spawn("dht router", cmd, dir);
    p.wait_output("DHT node", LONG);
    (p, port)
}

/// A libtorrent DHT node on a free port, joined through the router.
fn lt_node(dir: &std::path::Path, router_port: u16) -> (Proc, u16) {
    let port = free_port();
    let mut cmd = libtorrent_script("lt_dht.py");
    cmd.args(["node", &router_port.to_string(), &port.to_string()]);
    let mut p = Proc::spawn("libtorrent node", cmd, dir);
    p.wait_output("joined", LONG);
    (p, port)
}

#[test]
fn trackerless_swarms_with_libtorrent_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (mut router, router_port) = router(dir.path());
    let bootstrap = format!("127.0.0.1:{router_port}");
    let content = dir.path().join("data").join("trackerless.bin");
    random_file(&content, 3 << 20, 12);
    // No tracker in the torrent.
    let torrent = create_torrent(&content, &dir.path().join("t.torrent"), &[]);
    let text = run_ok({
        let mut c = swarmcast();
        c.arg("create").arg(&content).arg("-o").arg(dir.path().join("t2.torrent"));
        c
    });
    let magnet = text
        .lines()
        .find(|l| l.starts_with("magnet:"))
        .expect("create prints the magnet")
        .to_string();

    // A libtorrent node, which will store the seed's announce beside our router.
    let (mut lt_other, _) = lt_node(dir.path(), router_port);
    // A libtorrent seed announces in the DHT; swarmcast gets the magnet with nothing else.
    let lt_port = free_port();
    let mut seed = libtorrent_script("lt_dht.py");
    seed.arg("seed")
        .arg(router_port.to_string())
        .arg(lt_port.to_string())
        .arg(&torrent)
        .arg(dir.path().join("data"));
    let mut lt_seed = Proc::spawn("libtorrent seed", seed, dir.path());
    lt_seed.wait_output("announced", LONG);
    // BEP 33: our scrape reads the filters of the nodes that store the swarm, our router and
    // libtorrent's node, and counts the libtorrent seed (127.0.0.1) as one seed.
    let ih = magnet.split("btih:").nth(1).expect("a btih magnet")[..40].to_string();
    let mut scrape = swarmcast();
    scrape.args(["dht", "scrape", &ih, "--json", "--listen", "127.0.0.1:0"]);
    scrape.args(["--bootstrap", &bootstrap]);
    let said = run_ok(scrape);
    let v: serde_json::Value = serde_json::from_str(&said).expect("scrape --json");
    let seeds = v["seeds"].as_f64().unwrap();
    assert!((seeds - 1.0).abs() < 0.1 && v["nodes"].as_u64() >= Some(2), "{said}");
    let out = dir.path().join("ours");
    let mut get = swarmcast();
    // At 1 MiB/s the 3 MiB take a few seconds: time for the getter's own announce to land.
    get.args(["get", &magnet, "--dht-bootstrap", &bootstrap, "--bind", "127.0.0.1"])
        .args(["--download-limit", "1M", "-o"])
        .arg(&out)
        .env("XDG_STATE_HOME", dir.path().join("state"));
    let said = run_ok(get);
    assert!(said.contains("DHT: 1 peers found"), "{said}");
    assert_same_file(&content, &out.join("trackerless.bin"));
    // While it downloaded, our getter announced itself as a downloader (BEP 33 counts it).
    let mut scrape = swarmcast();
    scrape.args(["dht", "scrape", &ih, "--json", "--listen", "127.0.0.1:0"]);
    scrape.args(["--bootstrap", &bootstrap]);
    let said = run_ok(scrape);
    let v: serde_json::Value = serde_json::from_str(&said).expect("scrape --json");
    let downloaders = v["downloaders"].as_f64().unwrap();
    assert!((downloaders - 1.0).abs() < 0.1, "{said}");
    // The get lasted seconds, not the minute between saves: it saved its DHT state on exit (our
    // id and at least one node), so the next run starts warm.
    let saved = std::fs::read(dir.path().join("state/swarmcast/dht-nodes")).unwrap();
    let saved = dht::state::State::parse(&saved).expect("a DHT state file");
    assert!(saved.id.is_some() && !saved.nodes.is_empty(), "{saved:?}");
    lt_seed.kill();
    lt_other.kill();

    // swarmcast seeds and announces; libtorrent downloads through the DHT alone.
    let seed_port = free_port().to_string();
    let mut ours = swarmcast();
    ours.arg("seed").arg(&torrent).arg("--data").arg(dir.path().join("data")).args([
        "--bind",
        "127.0.0.1",
        "--port",
        &seed_port,
        "--dht-bootstrap",
        &bootstrap,
    ]);
    let mut our_seed = Proc::spawn("swarmcast seed", ours, dir.path());
    our_seed.wait_output("DHT: joined", LONG);
    // Its DHT node answers on its peer port (UDP, beside uTP), as libtorrent's does: a lookup
    // that knows only that port finds the seed.
    let mut lookup = swarmcast();
    lookup.args(["dht", "get-peers", &ih, "--listen", "127.0.0.1:0"]);
    lookup.args(["--bootstrap", &format!("127.0.0.1:{seed_port}")]);
    let found = run_ok(lookup);
    let want = format!("peer 127.0.0.1:{seed_port}");
    assert!(found.lines().any(|l| l == want), "{found}");
    let lt_out = dir.path().join("theirs");
    std::fs::create_dir_all(&lt_out).unwrap();
    let mut get = libtorrent_script("lt_dht.py");
    get.arg("get")
        .arg(router_port.to_string())
        .arg(free_port().to_string())
        .arg(&magnet)
        .arg(&lt_out)
        .arg("60");
    let done = run_ok(get);
    assert!(done.contains("done"), "{done}");
    assert_same_file(&content, &lt_out.join("trackerless.bin"));
    our_seed.kill();
    router.kill();
}

#[test]
fn dht_sample_lists_what_a_libtorrent_node_stores() {
    let dir = tempfile::tempdir().unwrap();
    let (mut router, router_port) = router(dir.path());
    let bootstrap = format!("127.0.0.1:{router_port}");
    let (mut lt_node, lt_port) = lt_node(dir.path(), router_port);
    // Two nodes in the network (ours and libtorrent's): an announce reaches both.
    let ih = "fedcba9876543210fedcba9876543210fedcba98";
    let mut ours = swarmcast();
    ours.args(["dht", "announce", ih, "--port", "4444", "--listen", "127.0.0.1:0"])
        .args(["--bootstrap", &bootstrap]);
    let said = run_ok(ours);
    assert!(said.contains("announced to 2 nodes"), "{said}");
    let mut sample = swarmcast();
    sample.args(["dht", "sample", &format!("127.0.0.1:{lt_port}"), "--listen", "127.0.0.1:0"]);
    let listed = run_ok(sample);
    assert!(listed.lines().any(|l| l == format!("infohash {ih}")), "{listed}");
    assert!(listed.contains("stores 1 info-hashes"), "{listed}");
    // With the info-hash instead of a node: a lookup that samples the nodes around it (our
    // router and libtorrent's node both store it).
    let mut around = swarmcast();
    around.args(["dht", "sample", ih, "--listen", "127.0.0.1:0", "--bootstrap", &bootstrap]);
    let listed = run_ok(around);
    assert!(listed.lines().any(|l| l == format!("infohash {ih}")), "{listed}");
    assert!(
        listed.contains(&format!("127.0.0.1:{lt_port}")),
        "libtorrent's node answered\n{listed}"
    );
    lt_node.kill();
    router.kill();
}

#[test]
fn immutable_items_cross_between_our_dht_and_libtorrents() {
    let dir = tempfile::tempdir().unwrap();
    let (mut router, router_port) = router(dir.path());
    let bootstrap = format!("127.0.0.1:{router_port}");
    let (mut lt_node, _) = lt_node(dir.path(), router_port);

    // Ours put, libtorrent's get.
    let mut put = swarmcast();
    put.args(["dht", "put", "hello from swarmcast", "--listen", "127.0.0.1:0"])
        .args(["--bootstrap", &bootstrap]);
    let said = run_ok(put);
    let target = said
        .lines()
        .find_map(|l| l.strip_prefix("target "))
        .expect("dht put prints the target")
        .to_string();
    let mut get = libtorrent_script("lt_dht.py");
    get.args(["get-immutable", &router_port.to_string(), &free_port().to_string(), &target, "30"]);
    let got = run_ok(get);
    assert!(got.lines().any(|l| l == "value hello from swarmcast"), "{got}");

    // libtorrent's put, ours get.
    let mut put = libtorrent_script("lt_dht.py");
    put.args([
        "put-immutable",
        &router_port.to_string(),
        &free_port().to_string(),
        "hello from libtorrent",
    ]);
    let said = run_ok(put);
    let target = said
        .lines()
        .find_map(|l| l.strip_prefix("target "))
        .expect("lt_dht.py prints the target")
        .to_string();
    let mut get = swarmcast();
    get.args(["dht", "get", &target, "--listen", "127.0.0.1:0", "--bootstrap", &bootstrap]);
    let got = run_ok(get);
    assert!(got.lines().any(|l| l == "value hello from libtorrent"), "{got}");
    lt_node.kill();
    router.kill();
}

#[test]
fn mutable_items_cross_between_our_dht_and_libtorrents() {
    let dir = tempfile::tempdir().unwrap();
    let (mut router, router_port) = router(dir.path());
    let bootstrap = format!("127.0.0.1:{router_port}");
    let (mut lt_node, _) = lt_node(dir.path(), router_port);
    let key = dir.path().join("key");

    // Ours put (seq 1, a new key file), libtorrent's get.
    let mut put = swarmcast();
    put.args(["dht", "put-mutable", "version one", "--salt", "s1", "--key"]).arg(&key).args([
        "--listen",
        "127.0.0.1:0",
        "--bootstrap",
        &bootstrap,
    ]);
    let said = run_ok(put);
    let pk =
        said.lines().find_map(|l| l.strip_prefix("public key ")).expect("public key").to_string();
    assert!(said.contains("seq 1"), "{said}");
    let mut get = libtorrent_script("lt_dht.py");
    get.args(["get-mutable", &router_port.to_string(), &free_port().to_string(), &pk, "s1", "30"]);
    let got = run_ok(get);
    assert!(got.lines().any(|l| l == "value version one"), "{got}");

    // libtorrent puts the next version with the same key; ours reads seq 2.
    let seed = std::fs::read_to_string(&key).unwrap().trim().to_string();
    let mut put = libtorrent_script("lt_dht.py");
    put.args([
        "put-mutable",
        &router_port.to_string(),
        &free_port().to_string(),
        &seed,
        &pk,
        "s1",
        "version two",
    ]);
    run_ok(put);
    let mut get = swarmcast();
    get.args(["dht", "get-mutable", &pk, "--salt", "s1", "--listen", "127.0.0.1:0"])
        .args(["--bootstrap", &bootstrap]);
    let got = run_ok(get);
    assert!(got.lines().any(|l| l == "value version two"), "{got}");
    assert!(got.lines().any(|l| l == "seq 2"), "{got}");
    lt_node.kill();
    router.kill();
}
