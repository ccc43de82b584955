//! Crash-resume with real processes: a `swarmcast get` killed with SIGKILL mid-download keeps the
//! pieces it verified, and running the same command again finishes with the right bytes.
//!
//! Every child process is owned by a [`Guard`] that kills it on drop, and every wait is bounded.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_swarmcast");
const FILE_SIZE: usize = 8 * 1024 * 1024;
const PIECE: usize = 64 * 1024;
const PIECES: usize = FILE_SIZE / PIECE;
const NAME: &str = "blob.bin";
/// Kill the first getter once this many pieces are on disk.
const KILL_AFTER_PIECES: usize = 16;

/// When the library prints `resuming: N of M pieces already verified` at the start of `get`,
/// set this to `true`: the line then becomes mandatory (it is checked whenever present anyway).
const EXPECT_RESUME_LINE: bool = true;

/// A child process killed (SIGKILL) and reaped when dropped.
struct Guard {
    child: Child,
    what: &'static str,
    log: PathBuf,
}

impl Guard {
    fn spawn(what: &'static str, args: &[&str], log: PathBuf) -> Guard {
        let err = File::create(&log).unwrap();
        let out = err.try_clone().unwrap();
        // The DHT state of `get`/`seed` goes beside the log, not in the user's home.
        let state = log.with_extension("state");
        let child = Command::new(BIN)
            .args(args)
            .env("SWARMCAST_LOG", "info")
            .env("XDG_STATE_HOME", state)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Guard { child, what, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test if the process has exited.
    fn assert_running(&mut self) {
        if let Some(st) = self.child.try_wait().unwrap() {
            panic!("{} exited early ({st}); log:\n{}", self.what, self.log());
        }
    }

    /// Waits up to `limit` for the process to exit.
    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                panic!("{} did not exit within {limit:?}; log:\n{}", self.what, self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, then reap.
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `f` every 50 ms until it gives a value; panics after `limit` with `what`.
fn poll<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many pieces of `path` equal the original's (a missing or short file has fewer).
fn pieces_on_disk(path: &Path, original: &[u8]) -> usize {
    let Ok(got) = std::fs::read(path) else {
        return 0;
    };
    original
        .chunks(PIECE)
        .enumerate()
        .filter(|(i, want)| got.get(i * PIECE..i * PIECE + want.len()) == Some(*want))
        .count()
}

/// The port in the seed's `seeding NAME on port P (Ctrl-C to stop)` line.
fn seed_port(log: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.starts_with("seeding "))?;
    let rest = &line[line.find(" on port ")? + " on port ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// The percentage of the first plain progress line, `NAME: 12.5% down ...`.
fn first_progress(log: &str) -> Option<f64> {
    let prefix = format!("{NAME}: ");
    log.lines().find_map(|l| {
        let rest = l.strip_prefix(&prefix)?;
        rest.split_once("% ")?.0.parse().ok()
    })
}

/// `(N, M)` from `resuming: N of M pieces already verified`, anywhere in a line.
fn resume_line(log: &str) -> Option<(usize, usize)> {
    log.lines().find_map(|l| {
        let rest = &l[l.find("resuming: ")? + "resuming: ".len()..];
        let mut w = rest.split_whitespace();
        let n = w.next()?.parse().ok()?;
        (w.next()? == "of").then_some(())?;
        let m = w.next()?.parse().ok()?;
        Some((n, m))
    })
}

#[test]
fn killed_download_resumes_with_verified_pieces_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let src_dir = tmp.path().join("src");
    let dl_dir = tmp.path().join("dl");
    std::fs::create_dir_all(&src_dir).unwrap();
    let mut data = vec![0u8; FILE_SIZE];
    rand::rngs::StdRng::seed_from_u64(0x7e57).fill_bytes(&mut data);
    let src = src_dir.join(NAME);
    std::fs::write(&src, &data).unwrap();
    let torrent = tmp.path().join("blob.torrent");
    let (src_s, torrent_s, dl_s) =
        (src.to_str().unwrap(), torrent.to_str().unwrap(), dl_dir.to_str().unwrap());

    let mut create = Guard::spawn(
        "create",
        &["create", src_s, "-o", torrent_s, "--piece-size", "64k"],
        tmp.path().join("create.log"),
    );
    let st = create.wait_exit(Duration::from_secs(60));
    assert!(st.success(), "create failed: {}", create.log());
    assert!(
        create.log().contains(&format!("{PIECES} pieces of {PIECE} bytes")),
        "unexpected create output: {}",
        create.log()
    );

    // Port 0 and the port the seed reports: no window for another process to take it.
    let mut seed = Guard::spawn(
        "seed",
        &[
            "seed",
            torrent_s,
            "--data",
            src_s,
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--upload-limit",
            "1M",
        ],
        tmp.path().join("seed.log"),
    );
    let port = poll(Duration::from_secs(60), "the seed to listen", || {
        seed.assert_running();
        seed_port(&seed.log())
    });
    let peer = format!("127.0.0.1:{port}");
    let get_args = [
        "get",
        torrent_s,
        "-o",
        dl_s,
        "--peer",
        &peer,
        "--bind",
        "127.0.0.1",
        "--download-limit",
        "1M",
    ];
    let out_file = dl_dir.join(NAME);

    // First attempt: SIGKILL once some pieces are on disk.
    let mut get1 = Guard::spawn("get #1", &get_args, tmp.path().join("get1.log"));
    poll(Duration::from_secs(60), "the first download to make progress", || {
        get1.assert_running();
        (pieces_on_disk(&out_file, &data) >= KILL_AFTER_PIECES).then_some(())
    });
    get1.kill9();
    let before = pieces_on_disk(&out_file, &data);
    eprintln!("killed get #1 with {before} of {PIECES} pieces on disk");
    assert!(
        (KILL_AFTER_PIECES..PIECES).contains(&before),
        "expected a partial download, found {before} of {PIECES} pieces; log:\n{}",
        get1.log()
    );
    assert_eq!(std::fs::metadata(&out_file).unwrap().len(), FILE_SIZE as u64);

    // Second attempt: the same command finishes and the bytes are right.
    let mut get2 = Guard::spawn("get #2", &get_args, tmp.path().join("get2.log"));
    let st = get2.wait_exit(Duration::from_secs(120));
    let log2 = get2.log();
    assert!(st.success(), "get #2 failed ({st}); log:\n{log2}");
    let got = std::fs::read(&out_file).unwrap();
    assert!(got == data, "downloaded bytes differ; log:\n{log2}");
    assert!(log2.contains("complete, every piece verified"), "no completion line; log:\n{log2}");

    // The pieces on disk survived the kill: the first progress line, printed as soon as the
    // session started, already counts them (it would start near 0% if they were re-fetched).
    let first = first_progress(&log2)
        .unwrap_or_else(|| panic!("no progress line in get #2's log:\n{log2}"));
    let floor = 100.0 * before as f64 / PIECES as f64;
    eprintln!("get #2 started at {first}% ({floor:.1}% was on disk)");
    assert!(
        first + 0.051 >= floor,
        "get #2 started at {first}% but {before} of {PIECES} pieces ({floor:.1}%) were on disk; \
         log:\n{log2}"
    );

    // The exact report, once the library prints it.
    match resume_line(&log2) {
        Some((n, m)) => {
            assert_eq!(m, PIECES, "resume line: wrong total; log:\n{log2}");
            assert_eq!(n, before, "resume line: wrong count; log:\n{log2}");
        }
        None if EXPECT_RESUME_LINE => {
            panic!("no `resuming: N of M pieces already verified` line; log:\n{log2}")
        }
        None => eprintln!("(no resume line printed yet; EXPECT_RESUME_LINE is off)"),
    }
    drop(seed);
}
