//! Test harness for end-to-end tests: real processes on loopback, each killed when its guard
//! drops, every wait bounded. Outside tools must be installed (`scripts/test.sh` does that): a
//! missing tool fails the test with a message saying so.
#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL) and reaped when dropped. Its stdout and stderr go to files.
pub struct Proc {
    pub name: String,
    child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    stdin: Option<ChildStdin>,
}

impl Proc {
    /// Starts `cmd` with its output captured in `dir`.
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Proc {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("create stdout log"))
            .stderr(File::create(&stderr).expect("create stderr log"));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc { name: name.to_string(), child, stdout, stderr, stdin: None }
    }

    /// Like [`Proc::spawn`], with a pipe to the process's stdin for [`Proc::send_line`].
    pub fn spawn_piped(name: &str, mut cmd: Command, dir: &Path) -> Proc {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        cmd.stdin(Stdio::piped())
            .stdout(File::create(&stdout).expect("create stdout log"))
            .stderr(File::create(&stderr).expect("create stderr log"));
        let mut child =
            cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let stdin = child.stdin.take();
        Proc { name: name.to_string(), child, stdout, stderr, stdin }
    }

    /// Writes one line to the process's stdin (see [`Proc::spawn_piped`]).
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("process started with spawn_piped");
        writeln!(stdin, "{line}").and_then(|_| stdin.flush()).expect("write to child stdin");
    }

    /// Only what the process printed on stdout.
    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        format!("--- {} stdout ---\n{out}--- {} stderr ---\n{err}", self.name, self.name)
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        self.wait_or(timeout, &[])
    }

    /// [`Proc::wait`] that also prints what `others` printed if the process does not exit in
    /// time (the other side of a transfer, say).
    pub fn wait_or(&mut self, timeout: Duration, others: &[&Proc]) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                let theirs: Vec<String> = others.iter().map(|p| p.output()).collect();
                panic!(
                    "{} did not exit within {timeout:?}\n{}\n{}",
                    self.name,
                    self.output(),
                    theirs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until stdout or stderr contains `needle`.
    pub fn wait_output(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.output().contains(needle) {
            if !self.running() {
                panic!("{} exited before printing {needle:?}\n{}", self.name, self.output());
            }
            if start.elapsed() > timeout {
                panic!(
                    "{} did not print {needle:?} within {timeout:?}\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process now (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The swarmcast binary under test.
/// The swarmcast binary, with its DHT state (`get`, `seed`) kept in a folder of its own under
/// cargo's test scratch space: no test reads the user's state or another test's.
pub fn swarmcast() -> Command {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let state =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("state-{}-{n}", std::process::id()));
    let mut c = Command::new(env!("CARGO_BIN_EXE_swarmcast"));
    c.env("XDG_STATE_HOME", state);
    c
}

/// A loopback port that was free a moment ago (for TCP and UDP). It lies below the kernel's
/// ephemeral range (32768–60999 here), so no process's outgoing connection or `bind(0)` can take
/// it between this check and the bind of the program the test starts; picks are spread by
/// process id, a counter and the clock so that tests running side by side do not collide.
/// Starts `swarmcast anchor` on a free loopback port with its data in `dir/anchor`; the
/// process and the port.
pub fn start_anchor(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let mut cmd = swarmcast();
    cmd.args(["anchor", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data")
        .arg(dir.join("anchor"));
    let mut anchor = Proc::spawn("anchor", cmd, dir);
    anchor.wait_output("listening on", Duration::from_secs(30));
    (anchor, port)
}

/// A loopback port free for TCP and UDP now, and never handed out before in this process:
/// tests run in parallel threads, and a port checked free for one is not bound until its
/// process starts, so another test must not be given it meanwhile.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let start = std::process::id().wrapping_mul(7919) ^ nanos;
    for _ in 0..200 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + start.wrapping_add(n.wrapping_mul(2_654_435_761)) % SPAN) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.contains(&port) {
            continue;
        }
        let tcp = TcpListener::bind(("127.0.0.1", port));
        let udp = UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {}", LOW + SPAN);
}

/// Waits until something listens on 127.0.0.1:`port`.
pub fn wait_listening(port: u16, timeout: Duration) {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for(&format!("a listener on port {port}"), timeout, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    });
}

/// Polls `f` until it is true; panics after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes `size` pseudo-random bytes (deterministic in `seed`).
pub fn random_file(path: &Path, size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut data = Vec::with_capacity(size);
    while data.len() < size {
        // xorshift64*: fast, good enough to make every piece distinct.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        data.extend_from_slice(&x.wrapping_mul(0x2545F4914F6CDD1D).to_le_bytes());
    }
    data.truncate(size);
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).expect("mkdir");
    }
    File::create(path).and_then(|mut f| f.write_all(&data)).expect("write random file");
    data
}

/// Panics with an install hint when an outside tool is missing.
pub fn require(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(found, "{tool} is not installed: run scripts/test.sh, which installs the test peers");
}

/// Debian's python with python3-libtorrent, running tests/peers/lt_peer.py.
pub fn libtorrent_python() -> Command {
    libtorrent_script("lt_peer.py")
}

/// Debian's python with python3-libtorrent, running the script `name` in tests/peers.
pub fn libtorrent_script(name: &str) -> Command {
    let ok = Command::new("/usr/bin/python3")
        .args(["-c", "import libtorrent"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "python3-libtorrent is not installed: run scripts/test.sh");
    let mut c = Command::new("/usr/bin/python3");
    c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/peers").join(name));
    c
}

/// Runs a command to completion and returns its output, panicking with it on failure.
pub fn run_ok(mut cmd: Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// `swarmcast create` with the given extra arguments; returns the torrent's path.
pub fn create_torrent(content: &Path, out: &Path, extra: &[&str]) -> PathBuf {
    let mut c = swarmcast();
    c.arg("create").arg(content).arg("-o").arg(out).args(extra);
    run_ok(c);
    out.to_path_buf()
}

/// Starts `swarmcast tracker` on a free port; returns the guard and the port.
pub fn start_tracker(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let mut c = swarmcast();
    c.args(["tracker", "--listen", &format!("127.0.0.1:{port}")]);
    let p = Proc::spawn("tracker", c, dir);
    wait_listening(port, Duration::from_secs(20));
    (p, port)
}

/// Starts `swarmcast seed` on a free port and waits until it listens.
pub fn start_seed(torrent: &Path, data: &Path, dir: &Path, extra: &[&str]) -> (Proc, u16) {
    let port = free_port();
    let mut c = swarmcast();
    c.arg("seed")
        .arg(torrent)
        .arg("--data")
        .arg(data)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(extra);
    let p = Proc::spawn("swarmcast-seed", c, dir);
    wait_listening(port, Duration::from_secs(60));
    (p, port)
}

/// Asserts that two files have equal bytes.
pub fn assert_same_file(a: &Path, b: &Path) {
    let x = std::fs::read(a).unwrap_or_else(|e| panic!("cannot read {}: {e}", a.display()));
    let y = std::fs::read(b).unwrap_or_else(|e| panic!("cannot read {}: {e}", b.display()));
    assert!(x.len() == y.len() && x == y, "{} and {} differ", a.display(), b.display());
}

/// A transmission-cli config folder under `d`: loopback only, no DHT/LPD/PEX/port mapping,
/// peers on `port`, no RPC, no speed limits; Transmission's `encryption` setting (0 prefer
/// plain, 1 prefer encrypted, its default, 2 require encrypted); uTP on or off. (TCP cannot be
/// turned off in Transmission 3.00.)
pub fn transmission_config(d: &Path, port: u16, encryption: u8, utp: bool) -> PathBuf {
    let conf = d.join(format!("transmission-{port}"));
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("settings.json"),
        format!(
            r#"{{"dht-enabled": false, "lpd-enabled": false, "pex-enabled": false,
  "utp-enabled": {utp}, "port-forwarding-enabled": false, "bind-address-ipv4": "127.0.0.1",
  "peer-port": {port}, "peer-port-random-on-start": false, "rpc-enabled": false,
  "speed-limit-up-enabled": false, "speed-limit-down-enabled": false,
  "encryption": {encryption}}}"#
        ),
    )
    .unwrap();
    conf
}

/// A qBittorrent-nox whose profile lives in `d/qbt-PORT`: peers on 127.0.0.1:`port` (no
/// DHT/LSD/PEX/UPnP), `Session\Encryption` = `encryption` (0 prefer, 1 require, 2 disable),
/// `Session\BTProtocol` = `protocol` (`TCP`, `UTP` or `Both`), the legal notice accepted, its
/// web UI on a free port; `torrent` added with `save` as its folder (a seed:
/// `--skip-hash-check`, so it starts at once).
pub fn qbittorrent(
    d: &Path,
    port: u16,
    torrent: &Path,
    save: &Path,
    seed: bool,
    encryption: u8,
    protocol: &str,
) -> Proc {
    let profile = d.join(format!("qbt-{port}"));
    let conf = profile.join("qBittorrent/config");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("qBittorrent.conf"),
        format!(
            "[LegalNotice]\nAccepted=true\n\n[BitTorrent]\nSession\\Port={port}\n\
             Session\\Encryption={encryption}\nSession\\BTProtocol={protocol}\n\
             Session\\DHTEnabled=false\nSession\\LSDEnabled=false\nSession\\PeXEnabled=false\n\
             Session\\Interface=lo\nSession\\InterfaceName=lo\n\n[Preferences]\n\
             WebUI\\Port={}\nConnection\\UPnP=false\n",
            free_port()
        ),
    )
    .unwrap();
    let mut c = Command::new("qbittorrent-nox");
    c.arg(format!("--profile={}", profile.display()));
    c.arg(format!("--save-path={}", save.display()));
    if seed {
        c.arg("--skip-hash-check");
    }
    c.arg(torrent);
    Proc::spawn("qbittorrent-nox", c, d)
}

/// An rqbit 9 (`rqbit download`: no DHT, LSD, UPnP or HTTP API) on 127.0.0.1:`port` for
/// `torrent` in `folder`: a seed when `folder` holds the data (it checks it and stays; wait for
/// "Initial check results"), else a getter of `peer` that exits when done (`-e`). `utp_only`:
/// TCP neither dialled nor accepted, uTP accepted (`--experimental-enable-utp-listen`).
pub fn rqbit(
    d: &Path,
    port: u16,
    torrent: &Path,
    folder: &Path,
    utp_only: bool,
    peer: Option<&str>,
) -> Proc {
    require("rqbit");
    let mut c = Command::new("rqbit");
    c.env("RQBIT_LOG_LEVEL_CONSOLE", "info").env("NO_COLOR", "1");
    c.args(["--disable-dht", "--disable-dht-persistence", "--disable-upnp-port-forward"]);
    c.args(["--disable-lsd", "--listen-ip", "127.0.0.1", "--listen-port", &port.to_string()]);
    if utp_only {
        c.args([
            "--disable-tcp-connect",
            "--disable-tcp-listen",
            "--experimental-enable-utp-listen",
        ]);
    }
    c.args(["download", "--disable-http-api", "-o"]).arg(folder);
    // It refuses to open files that exist without this; it checks them, it does not clear them.
    c.arg("--overwrite");
    if let Some(p) = peer {
        c.args(["-e", "--initial-peers", p]);
    }
    c.arg(torrent);
    Proc::spawn("rqbit", c, d)
}

/// rqbit and us, both ways over `transport` (`tcp` or `utp`, ours and rqbit's set alike): an
/// rqbit seed and our `get`, then our `seed` and an rqbit getter that dials it. Bytes equal.
pub fn swarm_with_rqbit(transport: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("seed/payload.bin");
    random_file(&file, (4 << 20) + 13, 25);
    let t = create_torrent(&file, &d.join("p.torrent"), &[]);
    let utp = transport == "utp";
    let port = free_port();
    let mut seed = rqbit(d, port, &t, &d.join("seed"), utp, None);
    seed.wait_output("Initial check results", Duration::from_secs(60));
    let out = d.join("got");
    let mut c = swarmcast();
    c.arg("get").arg(&t).arg("-o").arg(&out);
    c.args(["--bind", "127.0.0.1", "--port", &free_port().to_string(), "--no-dht"]);
    c.args(["--transport", transport, "--peer", &format!("127.0.0.1:{port}")]);
    let mut get = Proc::spawn("swarmcast get", c, d);
    let st = get.wait_or(Duration::from_secs(120), &[&seed]);
    assert!(st.success(), "swarmcast get from rqbit over {transport}\n{}", get.output());
    assert_same_file(&file, &out.join("payload.bin"));
    drop(seed);

    let (_ours, port) = start_seed(&t, &file, d, &["--transport", transport, "--no-dht"]);
    let theirs = d.join("theirs");
    let peer = format!("127.0.0.1:{port}");
    let mut getter = rqbit(d, free_port(), &t, &theirs, utp, Some(&peer));
    let st = getter.wait(Duration::from_secs(120));
    assert!(st.success(), "rqbit's download from our seed over {transport}\n{}", getter.output());
    assert_same_file(&file, &theirs.join("payload.bin"));
}
