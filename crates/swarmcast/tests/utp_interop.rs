//! Our uTP (BEP 29, `crates/utp`) against libtorrent's: a libtorrent 2.0 seed that speaks to
//! peers over uTP only (no TCP either way) serves a block to a BitTorrent exchange we run over
//! our `UtpStream`: handshakes both ways, its bitfield, `interested`, `unchoke`, `request`, and
//! the `piece`, whose bytes must equal the file's; whole downloads both ways with libtorrent,
//! qBittorrent, Transmission and rqbit over uTP alone. Every wait is bounded.

mod harness;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1 << 20;

/// Reads one length-prefixed peer-wire message: (id, payload); keep-alives skipped.
async fn message(s: &mut utp::driver::UtpStream) -> (u8, Vec<u8>) {
    loop {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.expect("a message length");
        let len = u32::from_be_bytes(len) as usize;
        assert!(len <= 2 * MIB, "message of {len} bytes");
        if len == 0 {
            continue;
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.expect("a message body");
        return (body[0], body[1..].to_vec());
    }
}

#[test]
fn a_block_from_a_libtorrent_seed_that_speaks_only_utp() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("seed/payload.bin");
    random_file(&file, 3 * MIB + 7, 21);
    let t = create_torrent(&file, &d.join("p.torrent"), &[]);
    let meta = torrent::metainfo::Metainfo::from_bytes(&std::fs::read(&t).unwrap()).unwrap();
    let info_hash = meta.info_hash.0.to_vec();
    let port = free_port();
    let mut c = libtorrent_script("lt_peer.py");
    c.env("LT_UTP_ONLY", "1").arg("seed").arg(&t).arg(d.join("seed")).arg(port.to_string());
    let mut seed = Proc::spawn("libtorrent uTP-only seed", c, d);
    seed.wait_output("ready", Duration::from_secs(60));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let block = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            let any = "127.0.0.1:0".parse().unwrap();
            let sock = utp::driver::UtpSocket::bind(any, Default::default()).await.unwrap();
            let to = format!("127.0.0.1:{port}").parse().unwrap();
            let mut s = sock.connect(to).await.expect("libtorrent accepts our uTP connection");
            let mut hs = vec![19u8];
            hs.extend_from_slice(b"BitTorrent protocol");
            hs.extend_from_slice(&[0u8; 8]);
            hs.extend_from_slice(&info_hash);
            hs.extend_from_slice(b"-SC0001-utpinterop01");
            s.write_all(&hs).await.unwrap();
            let mut theirs = [0u8; 68];
            s.read_exact(&mut theirs).await.expect("libtorrent's handshake");
            assert_eq!(&theirs[..20], &hs[..20]);
            assert_eq!(&theirs[28..48], &info_hash[..], "the handshake names our torrent");
            // Its bitfield says it has every piece.
            let (id, bits) = message(&mut s).await;
            assert_eq!(id, 5, "a bitfield");
            assert!(bits.iter().take(bits.len() - 1).all(|&b| b == 0xff));
            s.write_all(&[0, 0, 0, 1, 2]).await.unwrap(); // interested
            loop {
                let (id, _) = message(&mut s).await;
                if id == 1 {
                    break; // unchoke
                }
            }
            // Piece 1, offset 16 KiB, 16 KiB.
            let mut req = vec![0, 0, 0, 13, 6];
            req.extend_from_slice(&1u32.to_be_bytes());
            req.extend_from_slice(&16384u32.to_be_bytes());
            req.extend_from_slice(&16384u32.to_be_bytes());
            s.write_all(&req).await.unwrap();
            loop {
                let (id, body) = message(&mut s).await;
                if id == 7 {
                    assert_eq!(&body[..8], &req[5..13], "the piece answers our request");
                    return body[8..].to_vec();
                }
            }
        })
        .await
        .expect("the exchange finished within 60 s")
    });
    let bytes = block;
    let content = std::fs::read(&file).unwrap();
    let at = meta.info.piece_length as usize + 16384;
    assert_eq!(bytes.len(), 16384);
    assert!(bytes == content[at..at + 16384], "the block's bytes differ from the file's");
    seed.kill();
}

/// Whole downloads over uTP with libtorrent speaking only uTP, both ways: our `get` (TCP is
/// refused, so it dials uTP) from a libtorrent seed, by torrent file and by magnet with
/// `--transport utp` (metadata over uTP too), and a libtorrent getter that requires encryption
/// from our `seed` (it dials our uTP port, the TCP port's number). Bytes equal both ways.
#[test]
fn downloads_over_utp_with_libtorrent_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("seed/payload.bin");
    random_file(&file, 5 * MIB + 3, 22);
    let t = create_torrent(&file, &d.join("p.torrent"), &[]);
    let port = free_port();
    let mut c = libtorrent_script("lt_peer.py");
    c.env("LT_UTP_ONLY", "1").arg("seed").arg(&t).arg(d.join("seed")).arg(port.to_string());
    let mut lt_seed = Proc::spawn("libtorrent uTP-only seed", c, d);
    lt_seed.wait_output("ready", Duration::from_secs(60));
    let out = d.join("got");
    let mut c = swarmcast();
    c.env("SWARMCAST_LOG", "torrent=debug");
    c.arg("get").arg(&t).arg("-o").arg(&out);
    c.args(["--bind", "127.0.0.1", "--port", &free_port().to_string(), "--no-dht"]);
    c.args(["--peer", &format!("127.0.0.1:{port}")]);
    let mut get = Proc::spawn("swarmcast get over uTP", c, d);
    let st = get.wait_or(Duration::from_secs(120), &[&lt_seed]);
    assert!(st.success(), "swarmcast get from a uTP-only libtorrent failed\n{}", get.output());
    let content = std::fs::read(&file).unwrap();
    assert!(std::fs::read(out.join("payload.bin")).unwrap() == content, "our copy differs");
    assert!(get.output().contains("trying uTP"), "the download did not go over uTP");
    // A magnet, with uTP alone: the metadata comes over uTP too.
    let meta = torrent::metainfo::Metainfo::from_bytes(&std::fs::read(&t).unwrap()).unwrap();
    let magnet = format!("magnet:?xt=urn:btih:{}", hex::encode(meta.info_hash.0));
    let by_magnet = d.join("got-magnet");
    let mut c = swarmcast();
    c.arg("get").arg(&magnet).arg("-o").arg(&by_magnet);
    c.args(["--bind", "127.0.0.1", "--port", &free_port().to_string(), "--no-dht"]);
    c.args(["--peer", &format!("127.0.0.1:{port}"), "--transport", "utp"]);
    let mut get = Proc::spawn("swarmcast get MAGNET --transport utp", c, d);
    let st = get.wait_or(Duration::from_secs(120), &[&lt_seed]);
    assert!(st.success(), "a magnet over uTP alone failed\n{}", get.output());
    assert!(
        std::fs::read(by_magnet.join("payload.bin")).unwrap() == content,
        "magnet copy differs"
    );
    lt_seed.kill();

    let port = free_port();
    let mut c = swarmcast();
    // Its uTP recovery and its session's peer handling, printed if libtorrent's download fails.
    c.env("SWARMCAST_LOG", "utp=debug,torrent::session=debug");
    c.arg("seed").arg(&t).arg("--data").arg(&file);
    c.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--no-dht"]);
    let mut seed = Proc::spawn("swarmcast seed", c, d);
    seed.wait_output("seeding", Duration::from_secs(60));
    let theirs = d.join("theirs");
    let mut c = libtorrent_script("lt_peer.py");
    // It requires encryption (RC4): our MSE answers over uTP too.
    c.env("LT_UTP_ONLY", "1").env("LT_ENCRYPTION", "require").arg("get").arg(&t).arg(&theirs);
    c.arg(free_port().to_string()).arg(port.to_string()).arg("120");
    let out = c.output().expect("run libtorrent's leecher");
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let tail = |s: &str| {
        s.lines()
            .rev()
            .take(200)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        out.status.success() && said.contains("done"),
        "libtorrent's uTP download from our seed failed:\n{said}\n--- our seed, its last 200 lines ---\n{}",
        tail(&seed.output())
    );
    assert!(
        std::fs::read(theirs.join("payload.bin")).unwrap() == content,
        "libtorrent's copy differs"
    );
    seed.kill();
}

/// `swarmcast get` over uTP alone (`--transport utp`: TCP neither dialled nor accepted) from
/// the peer at `port`, with `extra` arguments; asserts the bytes.
fn get_over_utp(t: &Path, file: &Path, port: u16, d: &Path, others: &[&Proc], extra: &[&str]) {
    let out = d.join(format!("got-{port}"));
    let mut c = swarmcast();
    c.env("SWARMCAST_LOG", "torrent=debug");
    c.arg("get").arg(t).arg("-o").arg(&out);
    c.args(["--bind", "127.0.0.1", "--port", &free_port().to_string(), "--no-dht"]);
    c.args(["--peer", &format!("127.0.0.1:{port}"), "--transport", "utp"]).args(extra);
    let mut get = Proc::spawn("swarmcast get --transport utp", c, d);
    let st = get.wait_or(Duration::from_secs(120), others);
    assert!(st.success(), "swarmcast get over uTP failed\n{}", get.output());
    assert_same_file(file, &out.join(file.file_name().unwrap()));
}

/// `swarmcast seed --transport utp` (and `extra`) dialling the leecher at `port` until `got`
/// holds `file`.
fn seed_over_utp_until(t: &Path, file: &Path, port: u16, got: &Path, d: &Path, extra: &[&str]) {
    let peer = format!("127.0.0.1:{port}");
    let mut args = vec!["--peer", &peer, "--transport", "utp"];
    args.extend_from_slice(extra);
    let (_seed, _) = start_seed(t, file, d, &args);
    let want = std::fs::read(file).unwrap();
    wait_for("the leecher to finish its download over uTP", Duration::from_secs(120), || {
        std::fs::read(got).is_ok_and(|b| b == want)
    });
}

/// qBittorrent 4.5 set to uTP alone (`Session\BTProtocol=UTP`) and to require encryption, both
/// ways: our getter from a qBittorrent seed, and a qBittorrent leecher our seed dials; we speak
/// uTP alone and require encryption too (MSE over uTP).
#[test]
fn downloads_over_utp_with_qbittorrent_both_ways() {
    require("qbittorrent-nox");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("seed/payload.bin");
    random_file(&file, 4 * MIB + 9, 23);
    let t = create_torrent(&file, &d.join("p.torrent"), &[]);
    let port = free_port();
    let qbt = qbittorrent(d, port, &t, &d.join("seed"), true, 1, "UTP");
    wait_listening(port, Duration::from_secs(30));
    let require = ["--encryption", "require"];
    get_over_utp(&t, &file, port, d, &[&qbt], &require);
    drop(qbt);

    let port = free_port();
    let got_dir = d.join("qbt-got");
    std::fs::create_dir_all(&got_dir).unwrap();
    let _qbt = qbittorrent(d, port, &t, &got_dir, false, 1, "UTP");
    wait_listening(port, Duration::from_secs(30));
    seed_over_utp_until(&t, &file, port, &got_dir.join("payload.bin"), d, &require);
}

/// Transmission 3.00 with uTP on (its TCP cannot be turned off; ours is) and encryption
/// required (`encryption: 2`, `-er`), both ways: our getter from a Transmission seed, and a
/// Transmission leecher our seed dials (Transmission will not dial loopback addresses); we
/// require encryption too.
#[test]
fn downloads_over_utp_with_transmission_both_ways() {
    require("transmission-cli");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("seed/payload.bin");
    random_file(&file, 4 * MIB + 11, 24);
    let t = create_torrent(&file, &d.join("p.torrent"), &[]);
    let transmission = |folder: &Path, port: u16| {
        let mut c = Command::new("transmission-cli");
        c.arg("-er").arg("-g").arg(transmission_config(d, port, 2, true)).arg("-w").arg(folder);
        c.args(["-p", &port.to_string()]).arg(&t);
        Proc::spawn("transmission-cli", c, d)
    };
    let port = free_port();
    let mut tr = transmission(&d.join("seed"), port);
    tr.wait_output("Seeding", Duration::from_secs(60));
    let require = ["--encryption", "require"];
    get_over_utp(&t, &file, port, d, &[&tr], &require);
    drop(tr);

    let port = free_port();
    let got_dir = d.join("tr-got");
    std::fs::create_dir_all(&got_dir).unwrap();
    let _tr = transmission(&got_dir, port);
    wait_listening(port, Duration::from_secs(30));
    seed_over_utp_until(&t, &file, port, &got_dir.join("payload.bin"), d, &require);
}

/// rqbit 9 with uTP alone (`--disable-tcp-connect --disable-tcp-listen
/// --experimental-enable-utp-listen`), both ways; ours with `--transport utp`.
#[test]
fn downloads_over_utp_with_rqbit_both_ways() {
    swarm_with_rqbit("utp");
}
