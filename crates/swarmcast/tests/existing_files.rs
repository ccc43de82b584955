//! `swarmcast get` never destroys a file it did not create: a torrent whose file is named
//! `.bashrc`, fetched into a folder that holds a `.bashrc`, is refused with an error that names
//! the file and the ways on; `--check-existing` takes the file over knowingly, keeps what
//! verifies and completes.

mod harness;

use std::time::Duration;

use harness::*;

#[test]
fn get_refuses_to_overwrite_a_file_it_did_not_create() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let content = random_file(&src.join(".bashrc"), 1 << 20, 9);
    let torrent = create_torrent(&src.join(".bashrc"), &dir.path().join("x.torrent"), &[]);
    let (_seed, port) = start_seed(&torrent, &src.join(".bashrc"), dir.path(), &[]);

    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let precious = b"export PATH=$HOME/bin:$PATH\n".to_vec();
    std::fs::write(home.join(".bashrc"), &precious).unwrap();

    let get = |extra: &[&str]| {
        let mut c = swarmcast();
        c.arg("get")
            .arg(&torrent)
            .arg("-o")
            .arg(&home)
            .args(["--bind", "127.0.0.1", "--peer", &format!("127.0.0.1:{port}")])
            .args(extra);
        let mut p = Proc::spawn("get", c, dir.path());
        let status = p.wait(Duration::from_secs(60));
        (status, p.output())
    };

    let (status, output) = get(&[]);
    assert!(!status.success(), "get overwrote an existing file:\n{output}");
    assert!(output.contains(".bashrc") && output.contains("already exists"), "{output}");
    assert!(output.contains("-o") && output.contains("--check-existing"), "{output}");
    assert_eq!(std::fs::read(home.join(".bashrc")).unwrap(), precious, "the file was changed");

    // Knowingly taking it over works, and the download completes with the torrent's bytes.
    let (status, output) = get(&["--check-existing"]);
    assert!(status.success(), "{output}");
    assert_eq!(std::fs::read(home.join(".bashrc")).unwrap(), content);
}
