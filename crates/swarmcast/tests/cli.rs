//! Small things a user meets on the command line: a closed stdout (`swarmcast create … | head
//! -1`) ends a command quietly, not with a "Broken pipe" panic.

mod harness;

use std::process::Stdio;

use harness::*;

#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.bin");
    random_file(&file, 100_000, 3);
    for args in [
        vec![
            "create".to_string(),
            file.display().to_string(),
            "-o".into(),
            dir.path().join("f.torrent").display().to_string(),
        ],
        vec!["sim".into(), "dht".into(), "--nodes".into(), "500".into()],
    ] {
        let mut c = swarmcast();
        c.args(&args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().expect("start swarmcast");
        // The reading end is closed before the command writes a byte, so its first line meets
        // a broken pipe (with `| head -1` that happens after the first line).
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait for swarmcast");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("Broken pipe") && !err.contains("panicked"), "{args:?}: {err}");
        assert!(out.status.success(), "{args:?}: {:?} {err}", out.status);
    }
}
