//! End to end with the real ffmpeg (Debian package `ffmpeg`, installed by
//! `scripts/install-deps.sh`): package a 12 s test source as a 2-rung ladder with 4 s segments,
//! serve it with our origin, read the MPD over HTTP with ffprobe, and decode 3 s of every
//! representation with ffmpeg. A missing ffmpeg fails the test with a message (never a skip).

use std::process::Command;
use std::time::Duration;

use stream::mpd::Mpd;
use stream::origin::OriginServer;
use stream::package::{self, PackageOptions, Source};

/// Runs a tool and returns its stdout, failing the test with its stderr otherwise.
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {program} ({e}): install the Debian package `ffmpeg` (scripts/install-deps.sh)")
    });
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_serve_probe_and_decode_every_representation() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("movie1");
    let ladder = package::parse_ladder("180p:200k,360p:600k").unwrap();
    let mut opts = PackageOptions::new(Source::Test(Duration::from_secs(12)), out.clone(), ladder);
    opts.audio_bitrate = 64_000;
    let report = tokio::task::spawn_blocking(move || package::package(&opts))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("packaging failed: {e}"));

    // The measurements: one entry per rung plus the audio, written to ladder.json.
    let json = std::fs::read_to_string(out.join(package::LADDER_JSON)).expect("ladder.json");
    let written: package::LadderReport = serde_json::from_str(&json).unwrap();
    assert_eq!(written, report);
    let video: Vec<_> = report.representations.iter().filter(|r| r.kind == "video").collect();
    assert_eq!(video.len(), 2);
    assert_eq!(video[0].rung.as_deref(), Some("180p"));
    assert_eq!(video[1].rung.as_deref(), Some("360p"));
    assert_eq!((video[0].width, video[0].height), (Some(320), Some(180)));
    assert_eq!((video[1].width, video[1].height), (Some(640), Some(360)));
    assert_eq!(report.representations.iter().filter(|r| r.kind == "audio").count(), 1);
    for r in &report.representations {
        assert_eq!(r.segment_bytes.len(), 3, "12 s in 4 s segments: {r:?}");
        assert!(r.segment_bytes.iter().all(|&b| b > 0) && r.init_bytes > 0, "{r:?}");
        assert!(r.measured_bps > 0);
    }
    assert!(video[1].measured_bps > video[0].measured_bps);
    assert_eq!(report.duration_s, 12.0);
    assert_eq!(report.segment_s, 4.0);
    for r in &report.representations {
        eprintln!(
            "rep {} {:?}: label {} b/s, measured {} b/s, peak segment {} b/s, segments {:?}",
            r.id, r.rung, r.label_bps, r.measured_bps, r.peak_segment_bps, r.segment_bytes
        );
    }

    // Serve the directory above the movie, as a CDN origin would.
    let server = OriginServer::bind("127.0.0.1:0".parse().unwrap(), dir.path()).await.unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.run());
    let url = format!("http://{addr}/movie1/manifest.mpd");

    // Our parser agrees with the files (every listed URL exists).
    let mpd = Mpd::parse(&std::fs::read_to_string(out.join("manifest.mpd")).unwrap()).unwrap();
    let urls = mpd.segment_urls("1", &url).unwrap();
    assert_eq!(urls.len(), 4);
    assert_eq!(urls[0], format!("http://{addr}/movie1/init-1.mp4"));

    let (probe, decodes) = tokio::task::spawn_blocking(move || {
        let probe = run(
            "ffprobe",
            &[
                "-v",
                "error",
                "-show_entries",
                "stream=codec_name,width,height",
                "-of",
                "compact",
                &url,
            ],
        );
        let mut decodes = Vec::new();
        for n in 0..2 {
            let map = format!("0:v:{n}");
            run(
                "ffmpeg",
                &[
                    "-v", "error", "-nostdin", "-i", &url, "-map", &map, "-t", "3", "-f", "null",
                    "-",
                ],
            );
            decodes.push(map);
        }
        run(
            "ffmpeg",
            &["-v", "error", "-nostdin", "-i", &url, "-map", "0:a:0", "-t", "3", "-f", "null", "-"],
        );
        decodes.push("0:a:0".to_string());
        (probe, decodes)
    })
    .await
    .unwrap();
    assert!(probe.contains("codec_name=h264|width=320|height=180"), "{probe}");
    assert!(probe.contains("codec_name=h264|width=640|height=360"), "{probe}");
    assert!(probe.contains("codec_name=aac"), "{probe}");
    assert_eq!(decodes, ["0:v:0", "0:v:1", "0:a:0"]);
}

#[test]
fn a_corrupt_input_fails_with_the_tail_of_ffmpegs_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("broken.mp4");
    std::fs::write(&input, b"this is not a video file at all").unwrap();
    let opts = PackageOptions::new(
        Source::File(input),
        dir.path().join("out"),
        package::parse_ladder("180p:200k").unwrap(),
    );
    match package::package(&opts) {
        Err(package::PackageError::ToolMissing(tool)) => {
            panic!(
                "{tool} is missing: install the Debian package `ffmpeg` (scripts/install-deps.sh)"
            )
        }
        Err(e @ package::PackageError::Ffmpeg { .. }) => {
            let text = e.to_string();
            assert!(text.contains("broken.mp4"), "{text}");
            assert!(text.contains("Invalid data found when processing input"), "{text}");
        }
        other => panic!("expected an ffmpeg failure, got {other:?}"),
    }
}
