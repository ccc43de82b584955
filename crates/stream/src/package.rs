//! Packaging: encodes a bitrate ladder as DASH with the ffmpeg CLI, then measures what came out.
//!
//! One ffmpeg run maps the video once per rung (scaled to the rung's height, H.264 main profile)
//! plus the first audio stream (AAC), and writes `manifest.mpd` with `init-$RepresentationID$.mp4`
//! and `chunk-$RepresentationID$-$Number%05d$.m4s` (a `SegmentTemplate` with `$Number$`).
//! GOPs are closed and aligned to segment boundaries: `-g` = `-keyint_min` = fps × segment,
//! `-sc_threshold 0` (no scene-cut keyframes), and keyframes forced at every segment start (for
//! inputs whose frame rate is not a whole number). CBR sets `maxrate` = `bufsize` = the rate;
//! VBR gives only the target bitrate.
//!
//! Labels lie (ffmpeg's output runs above its target), so [`measure`] reads the manifest back
//! with our own parser and the segment files' real sizes, and [`package`] writes that to
//! `ladder.json`.
//!
//! ffmpeg and ffprobe are found on `PATH` (Debian package `ffmpeg`); a missing one is
//! [`PackageError::ToolMissing`], a failed run [`PackageError::Ffmpeg`] with the tail of stderr.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::mpd::{Mpd, MpdError};

/// The manifest's file name inside the output directory.
pub const MANIFEST: &str = "manifest.mpd";
/// The measurements' file name inside the output directory.
pub const LADDER_JSON: &str = "ladder.json";
/// Frame rate of the test source.
pub const TEST_SOURCE_FPS: u32 = 25;
/// Most rungs in a ladder.
pub const MAX_RUNGS: usize = 16;
/// Most stderr bytes kept for an error message.
const STDERR_TAIL: usize = 2000;

/// Why packaging failed.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// ffmpeg or ffprobe is not installed.
    #[error(
        "`{0}` was not found on PATH: install the Debian package `ffmpeg` (apt-get install ffmpeg)"
    )]
    ToolMissing(String),
    /// ffmpeg or ffprobe ran and failed.
    #[error("{tool} failed ({status}); the end of its output:\n{stderr_tail}")]
    Ffmpeg { tool: String, status: String, stderr_tail: String },
    /// A `--ladder` value does not parse.
    #[error(
        "bad ladder \"{0}\": expected rungs like 360p:400k,720p:3000k (height p : bitrate k/M)"
    )]
    BadLadder(String),
    /// A `--segment` or duration value does not parse.
    #[error("bad duration \"{0}\": expected seconds like 4s, 2.5s or 500ms")]
    BadDuration(String),
    /// The input has no video stream, or its frame rate is unreadable.
    #[error("cannot use the input: {0}")]
    BadInput(String),
    /// The manifest ffmpeg wrote does not parse.
    #[error("the manifest ffmpeg wrote does not parse: {0}")]
    Mpd(#[from] MpdError),
    /// Reading or writing files failed.
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

/// One rung of the ladder: an output height and a target video bitrate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rung {
    /// The label as given (`360p`).
    pub name: String,
    /// Output height in pixels (the width keeps the aspect ratio, rounded to even).
    pub height: u32,
    /// Target video bitrate in bits per second.
    pub bitrate: u64,
}

/// How the encoder spends bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RateControl {
    /// Constant bitrate: `maxrate` = `bufsize` = the target.
    Cbr,
    /// Variable bitrate: only the average target (segment sizes vary with the content).
    Vbr,
}

/// What to encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A media file.
    File(PathBuf),
    /// ffmpeg's `testsrc2` pattern and a 440 Hz sine, this long, at the top rung's size.
    Test(Duration),
}

/// Everything [`package`] needs.
#[derive(Debug, Clone)]
pub struct PackageOptions {
    /// The input.
    pub source: Source,
    /// The output directory (created if missing).
    pub out: PathBuf,
    /// The rungs, lowest first (the representation ids follow this order: 0, 1, ...).
    pub ladder: Vec<Rung>,
    /// Segment length.
    pub segment: Duration,
    /// CBR or VBR.
    pub rate_control: RateControl,
    /// AAC bitrate in bits per second.
    pub audio_bitrate: u64,
    /// The ffmpeg program (default `ffmpeg`, looked up on PATH).
    pub ffmpeg: PathBuf,
    /// The ffprobe program (default `ffprobe`).
    pub ffprobe: PathBuf,
}

impl PackageOptions {
    /// Options with the defaults: 4 s segments, CBR, 128 kb/s audio, tools from PATH.
    pub fn new(source: Source, out: PathBuf, ladder: Vec<Rung>) -> PackageOptions {
        PackageOptions {
            source,
            out,
            ladder,
            segment: Duration::from_secs(4),
            rate_control: RateControl::Cbr,
            audio_bitrate: 128_000,
            ffmpeg: PathBuf::from("ffmpeg"),
            ffprobe: PathBuf::from("ffprobe"),
        }
    }
}

/// What the input holds, as far as packaging cares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputInfo {
    /// Frames per second of the first video stream.
    pub fps: f64,
    /// The input has an audio stream.
    pub has_audio: bool,
}

/// Measurements of a packaged ladder, written to `ladder.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LadderReport {
    /// The manifest's file name.
    pub manifest: String,
    /// Presentation length in seconds.
    pub duration_s: f64,
    /// Nominal segment length in seconds.
    pub segment_s: f64,
    /// `"cbr"` or `"vbr"`, when known.
    pub rate_control: Option<String>,
    /// One entry per representation (video rungs first, then audio), in manifest order.
    pub representations: Vec<MeasuredRepresentation>,
}

/// One representation as measured on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasuredRepresentation {
    /// The representation id in the manifest.
    pub id: String,
    /// `video` or `audio` (from the adaptation set or the MIME type).
    pub kind: String,
    /// The rung label (`360p`) for video rungs packaged by us.
    pub rung: Option<String>,
    /// Width in pixels (video).
    pub width: Option<u32>,
    /// Height in pixels (video).
    pub height: Option<u32>,
    /// The manifest's `bandwidth` (the label).
    pub label_bps: u64,
    /// Real average bitrate: media segment bytes × 8 / duration.
    pub measured_bps: u64,
    /// Highest single-segment bitrate (its bytes × 8 / its duration).
    pub peak_segment_bps: u64,
    /// Bytes of the initialization segment.
    pub init_bytes: u64,
    /// Bytes of every media segment, in order.
    pub segment_bytes: Vec<u64>,
}

/// Parses `360p:400k,540p:1200k,720p:3M` (bitrate suffixes k, M; a bare number is bits/s).
pub fn parse_ladder(s: &str) -> Result<Vec<Rung>, PackageError> {
    let bad = || PackageError::BadLadder(s.chars().take(200).collect());
    let mut rungs = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, rate) = part.split_once(':').ok_or_else(bad)?;
        let height: u32 = name
            .trim()
            .strip_suffix(['p', 'P'])
            .and_then(|h| h.parse().ok())
            .filter(|h| (16..=4320).contains(h) && h % 2 == 0)
            .ok_or_else(bad)?;
        let rate = rate.trim();
        let (digits, mult) = match rate.char_indices().last() {
            Some((i, 'k' | 'K')) => (&rate[..i], 1_000.0),
            Some((i, 'm' | 'M')) => (&rate[..i], 1_000_000.0),
            _ => (rate, 1.0),
        };
        let value: f64 = digits.parse().map_err(|_| bad())?;
        let bitrate = value * mult;
        if !(bitrate.is_finite() && (10_000.0..=200_000_000.0).contains(&bitrate)) {
            return Err(bad());
        }
        rungs.push(Rung { name: name.trim().to_string(), height, bitrate: bitrate as u64 });
    }
    if rungs.is_empty() || rungs.len() > MAX_RUNGS {
        return Err(bad());
    }
    Ok(rungs)
}

/// Parses `4s`, `2.5s`, `500ms` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, PackageError> {
    let t = s.trim();
    let (number, scale) = if let Some(ms) = t.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(sec) = t.strip_suffix('s') {
        (sec, 1.0)
    } else {
        (t, 1.0)
    };
    number
        .trim()
        .parse::<f64>()
        .ok()
        .map(|v| v * scale)
        .filter(|v| v.is_finite() && (0.1..=86_400.0).contains(v))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| PackageError::BadDuration(s.chars().take(50).collect()))
}

/// Asks ffprobe for the input's frame rate and whether it has audio.
pub fn probe_input(ffprobe: &Path, input: &Path) -> Result<InputInfo, PackageError> {
    let args: Vec<OsString> = vec![
        "-v".into(),
        "error".into(),
        "-show_entries".into(),
        "stream=codec_type,avg_frame_rate,r_frame_rate".into(),
        "-of".into(),
        "compact=p=0:nk=0".into(),
        input.as_os_str().to_owned(),
    ];
    let stdout = run_tool(ffprobe, &args)?;
    let mut fps = None;
    let mut has_audio = false;
    for line in stdout.lines() {
        let fields: Vec<(&str, &str)> = line.split('|').filter_map(|f| f.split_once('=')).collect();
        let get = |k: &str| fields.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        match get("codec_type") {
            Some("video") if fps.is_none() => {
                fps = get("avg_frame_rate")
                    .and_then(parse_rate)
                    .or_else(|| get("r_frame_rate").and_then(parse_rate));
            }
            Some("audio") => has_audio = true,
            _ => {}
        }
    }
    let fps = fps.ok_or_else(|| {
        PackageError::BadInput(format!("{} has no video stream with a frame rate", input.display()))
    })?;
    Ok(InputInfo { fps, has_audio })
}

/// `30000/1001` or `25` → frames per second, if positive and sane.
fn parse_rate(s: &str) -> Option<f64> {
    let v = match s.split_once('/') {
        Some((n, d)) => n.parse::<f64>().ok()? / d.parse::<f64>().ok()?,
        None => s.parse().ok()?,
    };
    (v.is_finite() && v > 0.5 && v <= 1000.0).then_some(v)
}

/// The ffmpeg arguments for a packaging run (pure, so the command line can be tested).
pub fn ffmpeg_args(opts: &PackageOptions, input: &InputInfo) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    push(&["-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y"]);
    let seg = opts.segment.as_secs_f64();
    let top = opts.ladder.iter().map(|r| r.height).max().unwrap_or(360);
    match &opts.source {
        Source::Test(duration) => {
            let width = (top * 16 / 9 + 1) & !1;
            let video = format!("testsrc2=size={width}x{top}:rate={TEST_SOURCE_FPS}");
            push(&["-f", "lavfi", "-i", &video]);
            push(&["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]);
            push(&["-t", &format!("{:.3}", duration.as_secs_f64())]);
        }
        Source::File(path) => {
            a.push("-i".into());
            a.push(path.as_os_str().to_owned());
        }
    }
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    for _ in &opts.ladder {
        push(&["-map", "0:v:0"]);
    }
    let audio = match &opts.source {
        Source::Test(_) => Some("1:a:0"),
        Source::File(_) if input.has_audio => Some("0:a:0"),
        Source::File(_) => None,
    };
    if let Some(a) = audio {
        push(&["-map", a]);
    }
    let gop = ((input.fps * seg).round() as u64).max(1).to_string();
    push(&["-c:v", "libx264", "-preset", "veryfast", "-profile:v", "main", "-pix_fmt", "yuv420p"]);
    push(&["-g", &gop, "-keyint_min", &gop, "-sc_threshold", "0"]);
    push(&["-x264-params", "open-gop=0"]);
    push(&["-force_key_frames", &format!("expr:gte(t,n_forced*{seg})")]);
    for (i, rung) in opts.ladder.iter().enumerate() {
        let rate = rung.bitrate.to_string();
        push(&[&format!("-b:v:{i}"), &rate]);
        if opts.rate_control == RateControl::Cbr {
            push(&[&format!("-maxrate:v:{i}"), &rate, &format!("-bufsize:v:{i}"), &rate]);
        }
        push(&[&format!("-filter:v:{i}"), &format!("scale=-2:{}", rung.height)]);
    }
    if audio.is_some() {
        push(&["-c:a", "aac", "-b:a", &opts.audio_bitrate.to_string(), "-ac", "2"]);
    }
    let sets = if audio.is_some() { "id=0,streams=v id=1,streams=a" } else { "id=0,streams=v" };
    push(&["-f", "dash", "-seg_duration", &format!("{seg}"), "-use_template", "1"]);
    push(&["-use_timeline", "0", "-adaptation_sets", sets]);
    push(&["-init_seg_name", "init-$RepresentationID$.mp4"]);
    push(&["-media_seg_name", "chunk-$RepresentationID$-$Number%05d$.m4s"]);
    a.push(opts.out.join(MANIFEST).into_os_string());
    a
}

/// Encodes and packages the ladder, measures it, writes `ladder.json`, and returns the
/// measurements. Blocking (runs ffmpeg to completion).
pub fn package(opts: &PackageOptions) -> Result<LadderReport, PackageError> {
    if opts.ladder.is_empty() {
        return Err(PackageError::BadLadder(String::new()));
    }
    let input = match &opts.source {
        Source::Test(_) => InputInfo { fps: f64::from(TEST_SOURCE_FPS), has_audio: true },
        Source::File(path) => probe_input(&opts.ffprobe, path)?,
    };
    std::fs::create_dir_all(&opts.out).map_err(|source| PackageError::Io {
        context: format!("cannot create {}", opts.out.display()),
        source,
    })?;
    run_tool(&opts.ffmpeg, &ffmpeg_args(opts, &input))?;
    let mut report = measure(&opts.out, Some(&opts.ladder))?;
    report.rate_control = Some(match opts.rate_control {
        RateControl::Cbr => "cbr".into(),
        RateControl::Vbr => "vbr".into(),
    });
    report.segment_s = opts.segment.as_secs_f64();
    write_report(&opts.out, &report)?;
    Ok(report)
}

/// Writes `DIR/ladder.json`.
pub fn write_report(dir: &Path, report: &LadderReport) -> Result<(), PackageError> {
    let path = dir.join(LADDER_JSON);
    // Serializing plain structs of numbers and strings cannot fail.
    let json = serde_json::to_string_pretty(report).unwrap_or_default();
    std::fs::write(&path, json + "\n").map_err(|source| PackageError::Io {
        context: format!("cannot write {}", path.display()),
        source,
    })
}

/// Measures a packaged directory: parses `DIR/manifest.mpd` and reads the size of every
/// segment it lists. `ladder` (in representation order) labels the video rungs.
pub fn measure(dir: &Path, ladder: Option<&[Rung]>) -> Result<LadderReport, PackageError> {
    let manifest_path = dir.join(MANIFEST);
    let io = |context: String| move |source| PackageError::Io { context, source };
    let meta = std::fs::metadata(&manifest_path)
        .map_err(io(format!("cannot read {}", manifest_path.display())))?;
    if meta.len() > crate::mpd::MAX_MPD_BYTES as u64 {
        return Err(MpdError::TooLarge(meta.len() as usize).into());
    }
    let bytes = std::fs::read(&manifest_path)
        .map_err(io(format!("cannot read {}", manifest_path.display())))?;
    let mpd = Mpd::parse_bytes(&bytes)?;
    let duration_s = mpd.media_presentation_duration.map_or(0.0, |d| d.as_secs_f64());
    let mut representations = Vec::new();
    let mut video_index = 0usize;
    for period in mpd.periods.iter().take(1) {
        for set in &period.adaptation_sets {
            for rep in &set.representations {
                let kind = set
                    .content_type
                    .clone()
                    .or_else(|| {
                        rep.mime_type.as_ref().and_then(|m| m.split('/').next().map(str::to_string))
                    })
                    .unwrap_or_else(|| "unknown".into());
                let rung = if kind == "video" {
                    video_index += 1;
                    ladder.and_then(|l| l.get(video_index - 1)).map(|r| r.name.clone())
                } else {
                    None
                };
                let list = mpd.segments(&rep.id)?;
                let size = |url: &str| -> Result<u64, PackageError> {
                    let path = local_path(dir, url)?;
                    std::fs::metadata(&path)
                        .map(|m| m.len())
                        .map_err(io(format!("segment {} listed in the manifest", path.display())))
                };
                let init_bytes = list.init.as_deref().map(size).transpose()?.unwrap_or(0);
                let mut segment_bytes = Vec::with_capacity(list.media.len());
                let mut peak = 0u64;
                let mut listed_s = 0.0;
                for s in &list.media {
                    let n = size(&s.url)?;
                    // The last segment is shorter when the duration is not a multiple.
                    let real_s = if duration_s > 0.0 {
                        (duration_s - s.start_s).clamp(0.0, s.duration_s)
                    } else {
                        s.duration_s
                    };
                    listed_s += real_s;
                    if real_s > 0.0 {
                        peak = peak.max((n as f64 * 8.0 / real_s) as u64);
                    }
                    segment_bytes.push(n);
                }
                let total: u64 = segment_bytes.iter().sum();
                let measured_bps =
                    if listed_s > 0.0 { (total as f64 * 8.0 / listed_s).round() as u64 } else { 0 };
                representations.push(MeasuredRepresentation {
                    id: rep.id.clone(),
                    kind,
                    rung,
                    width: rep.width,
                    height: rep.height,
                    label_bps: rep.bandwidth,
                    measured_bps,
                    peak_segment_bps: peak,
                    init_bytes,
                    segment_bytes,
                });
            }
        }
    }
    let segment_s = mpd
        .representations()
        .find_map(|r| r.segment_template.as_ref())
        .and_then(|t| t.duration.map(|d| d as f64 / t.timescale as f64))
        .unwrap_or(0.0);
    Ok(LadderReport {
        manifest: MANIFEST.into(),
        duration_s,
        segment_s,
        rate_control: None,
        representations,
    })
}

/// A manifest-relative segment URL as a path under `dir`; anything that could leave `dir`
/// (absolute URLs, `..`, backslashes) is refused.
fn local_path(dir: &Path, url: &str) -> Result<PathBuf, PackageError> {
    let unsafe_url = url.contains("://")
        || url.starts_with('/')
        || url.contains('\\')
        || url.split('/').any(|s| s == ".." || s.is_empty());
    if unsafe_url {
        return Err(PackageError::BadInput(format!(
            "the manifest lists a segment outside its directory: {}",
            url.chars().take(200).collect::<String>()
        )));
    }
    Ok(dir.join(url))
}

/// Runs a tool to completion; returns its stdout, or an error with the tail of its stderr.
fn run_tool(program: &Path, args: &[OsString]) -> Result<String, PackageError> {
    let name = program.display().to_string();
    tracing::debug!(program = %name, ?args, "running");
    let output =
        Command::new(program).args(args).stdin(Stdio::null()).output().map_err(|e| {
            match e.kind() {
                std::io::ErrorKind::NotFound => PackageError::ToolMissing(name.clone()),
                _ => PackageError::Io { context: format!("cannot run {name}"), source: e },
            }
        })?;
    if !output.status.success() {
        return Err(PackageError::Ffmpeg {
            tool: name,
            status: output.status.to_string(),
            stderr_tail: tail(&output.stderr),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The last [`STDERR_TAIL`] bytes of a tool's output, as text, cut at a line start.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim_end();
    if text.len() <= STDERR_TAIL {
        return text.to_string();
    }
    let mut start = text.len() - STDERR_TAIL;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let cut = &text[start..];
    match cut.find('\n') {
        Some(i) => format!("...\n{}", &cut[i + 1..]),
        None => format!("...{cut}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladders() {
        let l = parse_ladder("360p:400k, 540p:1.2M,720p:3000000").unwrap();
        assert_eq!(
            l,
            [
                Rung { name: "360p".into(), height: 360, bitrate: 400_000 },
                Rung { name: "540p".into(), height: 540, bitrate: 1_200_000 },
                Rung { name: "720p".into(), height: 720, bitrate: 3_000_000 },
            ]
        );
        for bad in [
            "",
            "360:400k",
            "360p",
            "360p:abc",
            "361p:400k",
            "360p:1k",
            "360p:-5k",
            "0p:1M",
            "360p:infk",
        ] {
            assert!(matches!(parse_ladder(bad), Err(PackageError::BadLadder(_))), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("4s").unwrap(), Duration::from_secs(4));
        assert_eq!(parse_duration("2.5s").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("60").unwrap(), Duration::from_secs(60));
        for bad in ["", "s", "-4s", "0s", "1e99s", "NaNs", "4 h"] {
            assert!(matches!(parse_duration(bad), Err(PackageError::BadDuration(_))), "{bad}");
        }
    }

    #[test]
    fn command_line_aligns_gops_and_sets_rate_control() {
        let ladder = parse_ladder("180p:200k,360p:600k").unwrap();
        let mut opts =
            PackageOptions::new(Source::Test(Duration::from_secs(12)), "/o".into(), ladder);
        let info = InputInfo { fps: 25.0, has_audio: true };
        let args: Vec<String> =
            ffmpeg_args(&opts, &info).iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let joined = args.join(" ");
        assert!(joined.contains("testsrc2=size=640x360:rate=25"), "{joined}");
        assert!(joined.contains("-t 12.000"));
        assert!(joined.contains("-g 100 -keyint_min 100 -sc_threshold 0"));
        assert!(joined.contains(
            "-b:v:0 200000 -maxrate:v:0 200000 -bufsize:v:0 200000 -filter:v:0 scale=-2:180"
        ));
        assert!(joined.contains(
            "-b:v:1 600000 -maxrate:v:1 600000 -bufsize:v:1 600000 -filter:v:1 scale=-2:360"
        ));
        assert!(joined.contains("-map 1:a:0"));
        assert!(joined.contains("-seg_duration 4 "));
        assert_eq!(args.last().unwrap(), "/o/manifest.mpd");
        opts.rate_control = RateControl::Vbr;
        opts.source = Source::File("in.mkv".into());
        let info = InputInfo { fps: 30000.0 / 1001.0, has_audio: false };
        let joined = ffmpeg_args(&opts, &info)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(!joined.contains("maxrate"));
        assert!(!joined.contains(":a:"));
        assert!(joined.contains("-g 120 "));
        assert!(joined.contains("-adaptation_sets id=0,streams=v "));
    }

    #[test]
    fn missing_tool_names_the_package() {
        let mut opts = PackageOptions::new(
            Source::Test(Duration::from_secs(1)),
            std::env::temp_dir().join("swarmcast-no-ffmpeg"),
            parse_ladder("180p:200k").unwrap(),
        );
        opts.ffmpeg = PathBuf::from("/nonexistent/ffmpeg-not-here");
        let err = package(&opts).unwrap_err();
        assert!(matches!(err, PackageError::ToolMissing(_)));
        assert!(err.to_string().contains("Debian package `ffmpeg`"), "{err}");
    }

    #[test]
    fn failure_keeps_the_stderr_tail() {
        // `sh -c` stands in for a failing ffmpeg: the message must carry its last lines.
        let script: Vec<OsString> =
            vec!["-c".into(), "for i in $(seq 1 500); do echo line$i >&2; done; exit 3".into()];
        let err = run_tool(Path::new("sh"), &script).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line500"), "{text}");
        assert!(!text.contains("line1\n"), "{text}");
        assert!(text.contains("exit status: 3"), "{text}");
    }

    #[test]
    fn local_paths_stay_inside() {
        let d = Path::new("/d");
        assert_eq!(local_path(d, "chunk-0-00001.m4s").unwrap(), Path::new("/d/chunk-0-00001.m4s"));
        for bad in ["../x", "/etc/passwd", "http://h/x", "a\\b", "a//b"] {
            assert!(local_path(d, bad).is_err(), "{bad}");
        }
    }
}
