//! The fetcher: [`play`] reads the MPD, plans the URLs of every track and replica, and drives a
//! [`PlayerCore`] on the wall clock with real HTTP transfers, read through a [`TracePacer`]
//! when a trace is given, failing over between replicas.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::mpd::{resolve_url, Mpd};
use crate::proto::abr::{Ladder, RuleKind};
use crate::proto::player::{Next, PlayReport, PlayedSegment, PlayerConfig, PlayerCore};
use crate::proto::trace::{Trace, TracePacer};

use super::client::{Failure, HttpClient, IDLE_TIMEOUT};
use super::error::{PlayError, MAX_ROUNDS, MAX_SEGMENT_BYTES, MAX_SPEED};

/// Shortest wait for a segment's response or next bytes before trying the next replica.
const MIN_PATIENCE: Duration = Duration::from_secs(2);
/// Wall pause between two rounds over all replicas.
const ROUND_PAUSE: Duration = Duration::from_millis(500);
/// Wall seconds of idle link the trace pacer banks: enough to absorb timer granularity
/// (a sleep wakes up to a millisecond late), too little to matter to the ABR.
const PACER_BURST_WALL_S: f64 = 0.01;
/// A pacer wait shorter than this (wall) is not slept: it is owed and slept with the next.
const MIN_SLEEP: Duration = Duration::from_millis(2);

/// How to play.
#[derive(Debug, Clone)]
pub struct PlayOptions {
    /// The MPD's URL (`http://` only).
    pub url: String,
    /// The ABR rule.
    pub rule: RuleKind,
    /// Model parameters (speed included).
    pub config: PlayerConfig,
    /// Throttle reads to this trace.
    pub trace: Option<Trace>,
    /// Longest a file waits for peers before the CDN is asked for the rest, player seconds
    /// (also at most a third of what is buffered; [`DEFAULT_PEER_WAIT_S`] by default). Longer
    /// waits take more from peers, shorter ones keep the ABR's view of the links closer to the
    /// CDN's (`swarmcast lab stream --peer-wait` measures the trade).
    pub peer_wait_s: f64,
    /// Leave after this much player time (the viewer closes the page; `None`, a negative or a
    /// non-finite value: to the end). The report's segments are those in by then; a fetch in
    /// flight is dropped, its bytes counted in `bytes_total` and `peer_bytes` (so those can
    /// exceed the segments' sums), and `duration_s` runs to the stop.
    pub stop_after_s: Option<f64>,
}

/// The default [`PlayOptions::peer_wait_s`]: four 2 s segments.
pub const DEFAULT_PEER_WAIT_S: f64 = 8.0;

/// What the fetcher tells its observer as playback goes.
#[derive(Debug, Clone, PartialEq)]
pub enum PlayEvent {
    /// The manifest was read.
    Manifest {
        /// Segments to play.
        segments: usize,
        /// Declared video bitrates.
        ladder_bps: Vec<u64>,
        /// The audio representation fetched alongside (`None`: the MPD has no audio).
        audio: Option<String>,
        /// Replicas, in order.
        base_urls: Vec<String>,
    },
    /// A segment is in.
    Segment {
        /// Its record.
        segment: PlayedSegment,
        /// Segments in total.
        total: usize,
        /// Stall events so far.
        stalls: u32,
    },
    /// A request failed; the next replica is tried.
    Failover {
        /// Segment index.
        segment: usize,
        /// The replica that failed.
        from: String,
        /// The replica tried next.
        to: String,
        /// What failed.
        error: String,
    },
    /// A download was abandoned for a lower representation.
    Abandon {
        /// Segment index.
        segment: usize,
        /// Representation abandoned.
        from_rep: usize,
        /// Representation fetched instead.
        to_rep: usize,
    },
}

/// A boxed future of [`Peers`].
pub type PeersFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Other viewers of the same movie, tried before the CDN (`play --p2p`; KanKan and PPLive
/// clients worked this way through a local node). Paths are relative to the MPD's directory
/// (`chunk-1-00003.m4s`).
pub trait Peers: Send + Sync {
    /// What peers delivered of the file at `path` by `deadline` (bytes already checked against
    /// the movie's hashes): all of it, or part, the rest then fetched from the CDN with one
    /// Range request; `None` to fetch it all from the CDN. Called for every media and init
    /// segment.
    fn fetch(&self, path: &str, deadline: Instant) -> PeersFuture<'_, Option<PeerPart>>;
    /// The whole file at `path`, fetched from the CDN: for the peers.
    fn offer(&self, path: &str, data: Bytes) -> PeersFuture<'_, ()>;
    /// The files the player will most likely ask for next, soonest first: worth fetching from
    /// peers while it waits for its buffer to drain. Each entry is one file given as
    /// alternatives, best first (a video segment at the representations above the one the
    /// player plays, then that one): fetch the first one a peer has, else the last. Called
    /// again as the window moves; the default does nothing.
    fn prefetch(&self, files: Vec<Vec<String>>) -> PeersFuture<'_, ()> {
        let _ = files;
        Box::pin(async {})
    }
    /// Every media file of the movie and the segment it holds, told once at the start: the
    /// peers' place along the movie follows from the files they have. The default does
    /// nothing.
    fn timeline(&self, files: Vec<(String, u32)>) -> PeersFuture<'_, ()> {
        let _ = files;
        Box::pin(async {})
    }
    /// Bytes of the file at `path` not here yet (0: prefetched whole from peers); `None` when
    /// unknown. The player takes a higher representation over the one its rule chose when no
    /// more of it is missing ([`PlayerCore::take_ready`]): it then costs the CDN no more.
    /// The default: unknown.
    fn missing(&self, path: &str) -> Option<u64> {
        let _ = path;
        None
    }
    /// True when the peers serving us now have every piece of the file at `path` between them
    /// (or it is here): worth
    /// asking for with a buffer to wait from. The default: never.
    fn serves(&self, path: &str) -> PeersFuture<'_, bool> {
        let _ = path;
        Box::pin(async { false })
    }
}

/// What peers delivered of a file (see [`Peers::fetch`]).
#[derive(Debug)]
pub struct PeerPart {
    /// The whole file's length; the bytes in `missing` are zeros, to be filled in.
    pub data: Vec<u8>,
    /// The bytes still to fetch (empty: all came from peers).
    pub missing: std::ops::Range<u64>,
}

impl PeerPart {
    /// A file peers delivered whole.
    pub fn whole(data: Vec<u8>) -> PeerPart {
        PeerPart { data, missing: 0..0 }
    }

    /// Bytes that came from peers.
    pub fn from_peers(&self) -> u64 {
        self.data.len() as u64 - (self.missing.end - self.missing.start)
    }

    /// Whether `missing` lies in the file, so the part is usable (a part that is not is
    /// ignored).
    pub fn is_valid(&self) -> bool {
        self.missing.start <= self.missing.end && self.missing.end <= self.data.len() as u64
    }
}

/// Segments ahead of the last one fetched that peers are asked for while the player waits
/// (see [`Peers::prefetch`]).
const PREFETCH_SEGMENTS: usize = 3;

/// Buffer, player seconds, from which the player takes a higher representation that a peer
/// serving it has whole ([`Fetcher::peer_rung`]): the wait for peers (a third of the buffer) and
/// the CDN's rest of a top-rung segment at the rate the rule chose its rung by still fit.
const PEER_RUNG_BUFFER_S: f64 = 8.0;

/// Shortest wait for peers with something buffered: what a viewer may lose to an absent
/// segment before the CDN is asked. With nothing buffered (startup, a stall) peers are not
/// asked: a file already here whole is taken, anything else comes from the CDN at once.
const MIN_PEER_WAIT_S: f64 = 0.1;

/// The manifest at `url` as the player reads it (redirects followed, size capped, parsed):
/// the URL it came from at last, and the MPD.
pub async fn fetch_manifest(url: &str) -> Result<(String, crate::mpd::Mpd), PlayError> {
    let mut client =
        HttpClient::new().map_err(|reason| PlayError::Http { url: url.to_string(), reason })?;
    client.fetch_mpd(url).await
}

/// Plays the presentation at `opts.url` to the end; `observe` sees every [`PlayEvent`].
pub async fn play<F>(opts: &PlayOptions, observe: F) -> Result<PlayReport, PlayError>
where
    F: FnMut(&PlayEvent) + Send,
{
    play_with(opts, None, observe).await
}

/// [`play`], asking `peers` for every segment before the CDN, and offering them what came
/// from the CDN.
pub async fn play_with<F>(
    opts: &PlayOptions,
    peers: Option<&dyn Peers>,
    mut observe: F,
) -> Result<PlayReport, PlayError>
where
    F: FnMut(&PlayEvent) + Send,
{
    let speed = opts.config.speed;
    if !(speed.is_finite() && speed > 0.0 && speed <= MAX_SPEED) {
        return Err(PlayError::BadSpeed(speed));
    }
    let mut client =
        HttpClient::new().map_err(|reason| PlayError::Http { url: opts.url.clone(), reason })?;
    let (mpd_url, mpd) = client.fetch_mpd(&opts.url).await?;
    let plan = Plan::new(&mpd, &mpd_url)?;
    observe(&PlayEvent::Manifest {
        segments: plan.video_urls[0].len(),
        ladder_bps: plan.ladder.bitrates_bps().to_vec(),
        audio: plan.audio.as_ref().map(|a| a.id.clone()),
        base_urls: plan.bases.clone(),
    });
    let now = Instant::now();
    let mut fetcher = Fetcher {
        core: PlayerCore::new(
            opts.rule.build(),
            plan.ladder.clone(),
            plan.segment_s.clone(),
            opts.config,
            now,
        ),
        client,
        pacer: opts.trace.as_ref().map(|t| TracePacer::new(t, PACER_BURST_WALL_S * speed)),
        plan,
        base: 0,
        inits: BTreeSet::new(),
        bytes_total: 0,
        peers,
        peer_bytes: 0,
        peer_wait_s: if opts.peer_wait_s.is_finite() {
            opts.peer_wait_s
        } else {
            DEFAULT_PEER_WAIT_S
        },
    };
    let total = fetcher.core.segments_total();
    if let Some(peers) = peers {
        peers.timeline(fetcher.plan.timeline()).await;
    }
    // What the peers served for each segment (its init segments included).
    let mut peer_by_segment = std::collections::HashMap::new();
    // The last segment fetched and its representation; the segment after which peers were
    // last asked to prefetch.
    let mut last: Option<(usize, usize)> = None;
    let mut prefetched_after = None;
    let stop = opts
        .stop_after_s
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| fetcher.core.instant_at(s));
    let playing = async {
        loop {
            match fetcher.core.poll_next(Instant::now()) {
                Next::Done => break,
                Next::WaitUntil(at) => {
                    // Idle: peers fetch what comes next (again, since a CDN fetch paused them).
                    if let (Some(peers), Some((segment, rep))) = (fetcher.peers, last) {
                        peers.prefetch(fetcher.plan.after(segment, rep, PREFETCH_SEGMENTS)).await;
                    }
                    tokio::time::sleep_until(at.into()).await
                }
                Next::Fetch { segment, mut rep } => {
                    if let Some(peers) = fetcher.peers.filter(|_| prefetched_after != Some(segment))
                    {
                        let rungs: Vec<Option<String>> = fetcher
                            .plan
                            .video_urls
                            .iter()
                            .map(|v| v.get(segment).cloned())
                            .collect();
                        let buffered = fetcher.core.buffer_s() >= PEER_RUNG_BUFFER_S;
                        if let Some(r) = peer_rung(peers, &rungs, rep, buffered).await {
                            rep = fetcher.core.take_ready(r).unwrap_or(rep);
                        }
                        // Peers fetch the next segments behind this one, keeping their pipe full
                        // (with nothing buffered, after this one: startup does not wait on it).
                        if fetcher.core.buffer_s() > 0.0 {
                            prefetched_after = Some(segment);
                            peers
                                .prefetch(fetcher.plan.after(segment, rep, PREFETCH_SEGMENTS))
                                .await;
                        }
                    }
                    let peer_before = fetcher.peer_bytes;
                    let (bytes, base) = fetcher.fetch_video(segment, rep, &mut observe).await?;
                    last = Some((segment, fetcher.core.in_flight_rep().unwrap_or(rep)));
                    fetcher.core.handle_video_done(Instant::now(), bytes);
                    let audio_bytes = fetcher.fetch_audio(segment, &mut observe).await?;
                    let rep_id = fetcher
                        .core
                        .in_flight_rep()
                        .map(|r| fetcher.plan.ids[r].clone())
                        .unwrap_or_default();
                    let stalls = fetcher.core.stalls();
                    if let Some(record) =
                        fetcher.core.handle_segment_done(Instant::now(), bytes, audio_bytes, &base)
                    {
                        let mut segment = record.clone();
                        segment.rep_id = rep_id;
                        segment.peer_bytes = fetcher.peer_bytes - peer_before;
                        peer_by_segment.insert(segment.index, segment.peer_bytes);
                        observe(&PlayEvent::Segment { segment, total, stalls });
                    }
                }
            }
        }
        Ok::<_, PlayError>(())
    };
    match stop {
        Some(at) => tokio::select! {
            r = playing => r?,
            () = tokio::time::sleep_until(at.into()) => fetcher.core.handle_time(at),
        },
        None => playing.await?,
    }
    let mut report = fetcher.core.report();
    for s in &mut report.segments {
        s.rep_id = fetcher.plan.ids[s.rep].clone();
        s.peer_bytes = peer_by_segment.get(&s.index).copied().unwrap_or(0);
    }
    report.url = mpd_url;
    report.ladder_ids = fetcher.plan.ids.clone();
    report.audio = fetcher.plan.audio.as_ref().map(|a| a.id.clone());
    report.bytes_total = fetcher.bytes_total;
    report.peer_bytes = fetcher.peer_bytes;
    report.offload = if report.bytes_total > 0 {
        report.peer_bytes as f64 / report.bytes_total as f64
    } else {
        0.0
    };
    Ok(report)
}

impl Plan {
    /// Every media file and its segment (see [`Peers::timeline`]).
    fn timeline(&self) -> Vec<(String, u32)> {
        let audio = self.audio.iter().map(|a| &a.media);
        let tracks = self.video_urls.iter().chain(audio);
        let numbered = tracks.flat_map(|t| t.iter().enumerate());
        numbered.map(|(s, path)| (path.clone(), u32::try_from(s).unwrap_or(u32::MAX))).collect()
    }

    /// The media files of the `n` segments after `segment`, as [`Peers::prefetch`] takes them:
    /// the video at every representation from the top down to `rep` (alternatives, best
    /// first), then the audio, segment by segment.
    fn after(&self, segment: usize, rep: usize, n: usize) -> Vec<Vec<String>> {
        let mut files = Vec::new();
        for s in segment + 1..=segment + n {
            let video: Vec<String> = (rep..self.video_urls.len())
                .rev()
                .filter_map(|r| self.video_urls[r].get(s).cloned())
                .collect();
            if video.is_empty() {
                break;
            }
            files.push(video);
            if let Some(audio) = self.audio.as_ref().and_then(|a| a.media.get(s)) {
                files.push(vec![audio.clone()]);
            }
        }
        files
    }
}

/// A track's URLs relative to the MPD-level base.
struct Track {
    id: String,
    init: Option<String>,
    media: Vec<String>,
}

/// What the manifest says to fetch.
struct Plan {
    ladder: Ladder,
    /// Representation ids in ladder order.
    ids: Vec<String>,
    /// `video_urls[rep][segment]`, relative to a base.
    video_urls: Vec<Vec<String>>,
    video_inits: Vec<Option<String>>,
    segment_s: Vec<f64>,
    audio: Option<Track>,
    /// Absolute replica base URLs, in order.
    bases: Vec<String>,
}

impl Plan {
    fn new(mpd: &Mpd, mpd_url: &str) -> Result<Plan, PlayError> {
        let unplayable =
            |reason: String| PlayError::Unplayable { url: mpd_url.to_string(), reason };
        let mpd_err = |source| PlayError::Mpd { url: mpd_url.to_string(), source };
        let period = mpd.periods.first().ok_or_else(|| unplayable("it has no Period".into()))?;
        let is = |set: &crate::mpd::AdaptationSet, kind: &str| {
            set.content_type.as_deref() == Some(kind)
                || set.mime_type.as_deref().is_some_and(|m| m.starts_with(kind))
                || set
                    .representations
                    .first()
                    .and_then(|r| r.mime_type.as_deref())
                    .is_some_and(|m| m.starts_with(kind))
        };
        let video = period
            .adaptation_sets
            .iter()
            .find(|s| is(s, "video"))
            .or_else(|| period.adaptation_sets.iter().find(|s| !is(s, "audio")))
            .ok_or_else(|| unplayable("its first Period has no video adaptation set".into()))?;
        let mut reps: Vec<_> = video.representations.iter().collect();
        reps.sort_by_key(|r| r.bandwidth);
        reps.dedup_by_key(|r| r.bandwidth);
        let mut ids = Vec::new();
        let mut video_urls = Vec::new();
        let mut video_inits = Vec::new();
        let mut segment_s: Vec<f64> = Vec::new();
        for r in &reps {
            let list = mpd.segments(&r.id).map_err(mpd_err)?;
            if segment_s.is_empty() || list.media.len() < segment_s.len() {
                segment_s = list.media.iter().map(|s| s.duration_s).collect();
            }
            ids.push(r.id.clone());
            video_inits.push(list.init);
            video_urls.push(list.media.into_iter().map(|s| s.url).collect::<Vec<_>>());
        }
        if segment_s.is_empty() {
            return Err(unplayable("the video has no media segments".into()));
        }
        let n = segment_s.len();
        for urls in &mut video_urls {
            urls.truncate(n);
        }
        let ladder =
            Ladder::new(reps.iter().map(|r| r.bandwidth).collect(), segment_s[0].max(1e-3))?;
        let audio = match period.adaptation_sets.iter().find(|s| is(s, "audio")) {
            Some(set) => match set.representations.iter().min_by_key(|r| r.bandwidth) {
                Some(r) => {
                    let list = mpd.segments(&r.id).map_err(mpd_err)?;
                    Some(Track {
                        id: r.id.clone(),
                        init: list.init,
                        media: list.media.into_iter().map(|s| s.url).collect(),
                    })
                }
                None => None,
            },
            None => None,
        };
        let bases = if mpd.base_urls.is_empty() {
            // The MPD's directory: segment URLs resolve against it as against the MPD's URL.
            let path = mpd_url.split(['?', '#']).next().unwrap_or(mpd_url);
            let dir = match path.rfind('/') {
                Some(i) if !path[..i].ends_with('/') && !path.ends_with("//") => &path[..=i],
                _ => path,
            };
            vec![dir.to_string()]
        } else {
            mpd.base_urls.iter().map(|b| resolve_url(mpd_url, b)).collect()
        };
        Ok(Plan { ladder, ids, video_urls, video_inits, segment_s, audio, bases })
    }
}

/// How one media download ended.
enum Download {
    Done(u64),
    Abandoned { lower: usize },
}

struct Fetcher<'p> {
    core: PlayerCore,
    client: HttpClient,
    pacer: Option<TracePacer>,
    plan: Plan,
    /// Index of the replica in use.
    base: usize,
    /// Init segments already fetched, by URL relative to the base.
    inits: BTreeSet<String>,
    bytes_total: u64,
    peers: Option<&'p dyn Peers>,
    /// Of `bytes_total`, what the peers served.
    peer_bytes: u64,
    /// [`PlayOptions::peer_wait_s`].
    peer_wait_s: f64,
}

/// A representation of a segment (its file at each rung: `rungs`) above the rule's `rep` that
/// peers make no dearer for the CDN: the highest of which no more is missing than of `rep`,
/// or, when `buffered` ([`PEER_RUNG_BUFFER_S`]), that a peer serving us has whole (the wait
/// for it and the CDN's rest, should it come slowly, fit in the buffer).
async fn peer_rung(
    peers: &dyn Peers,
    rungs: &[Option<String>],
    rep: usize,
    buffered: bool,
) -> Option<usize> {
    let chosen = peers.missing(rungs.get(rep)?.as_deref()?)?;
    for r in (rep + 1..rungs.len()).rev() {
        let Some(p) = rungs[r].as_deref() else { continue };
        if peers.missing(p).is_some_and(|m| m <= chosen) || (buffered && peers.serves(p).await) {
            return Some(r);
        }
    }
    None
}

impl Fetcher<'_> {
    /// Fetches the video of `segment` (starting at `rep`; abandonment may lower it), moving
    /// through the replicas on failures. Returns its bytes and the base URL used.
    async fn fetch_video<F: FnMut(&PlayEvent)>(
        &mut self,
        segment: usize,
        mut rep: usize,
        observe: &mut F,
    ) -> Result<(u64, String), PlayError> {
        let mut tries = 0;
        loop {
            let base = self.plan.bases[self.base].clone();
            let result = match self.plan.video_inits[rep].clone() {
                Some(init) => self.fetch_init(&base, &init).await,
                None => Ok(()),
            };
            let result = match result {
                Ok(()) => {
                    let path = self.plan.video_urls[rep][segment].clone();
                    self.download(&base, &path, true).await
                }
                Err(f) => Err(f),
            };
            match result {
                Ok(Download::Done(bytes)) => return Ok((bytes, base)),
                Ok(Download::Abandoned { lower }) => {
                    observe(&PlayEvent::Abandon { segment, from_rep: rep, to_rep: lower });
                    rep = lower;
                }
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(error)) => {
                    tries += 1;
                    self.fail_over(segment, tries, error, observe).await?;
                }
            }
        }
    }

    /// Fetches audio segment `segment` if there is one; returns its bytes.
    async fn fetch_audio<F: FnMut(&PlayEvent)>(
        &mut self,
        segment: usize,
        observe: &mut F,
    ) -> Result<u64, PlayError> {
        let Some(track) = &self.plan.audio else { return Ok(0) };
        let Some(media) = track.media.get(segment).cloned() else { return Ok(0) };
        let init = track.init.clone();
        let mut tries = 0;
        loop {
            let base = self.plan.bases[self.base].clone();
            let result = match &init {
                Some(init) => self.fetch_init(&base, init).await,
                None => Ok(()),
            };
            let result = match result {
                Ok(()) => self.download(&base, &media, false).await,
                Err(f) => Err(f),
            };
            match result {
                Ok(Download::Done(bytes)) => return Ok(bytes),
                // `download(_, false)` never asks the core about abandonment.
                Ok(Download::Abandoned { .. }) => unreachable!("audio downloads are not checked"),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(error)) => {
                    tries += 1;
                    self.fail_over(segment, tries, error, observe).await?;
                }
            }
        }
    }

    /// Moves to the next replica after a failed request (pausing after each full round).
    async fn fail_over<F: FnMut(&PlayEvent)>(
        &mut self,
        segment: usize,
        tries: usize,
        error: String,
        observe: &mut F,
    ) -> Result<(), PlayError> {
        let n = self.plan.bases.len();
        if tries >= n * MAX_ROUNDS {
            return Err(PlayError::AllReplicasFailed { segment, tried: tries, last: error });
        }
        let from = self.plan.bases[self.base].clone();
        self.base = (self.base + 1) % n;
        self.core.handle_failover(Instant::now());
        observe(&PlayEvent::Failover {
            segment,
            from,
            to: self.plan.bases[self.base].clone(),
            error,
        });
        if tries.is_multiple_of(n) {
            tokio::time::sleep(ROUND_PAUSE).await;
        }
        Ok(())
    }

    /// Fetches an init segment once per replica-relative URL (it is the same on every replica).
    async fn fetch_init(&mut self, base: &str, init: &str) -> Result<(), Failure> {
        if self.inits.contains(init) {
            return Ok(());
        }
        match self.download(base, init, false).await? {
            Download::Done(_) => {
                self.inits.insert(init.to_string());
                Ok(())
            }
            // `download(_, false)` never asks the core about abandonment.
            Download::Abandoned { .. } => unreachable!("init downloads are not checked"),
        }
    }

    /// The file at `path` (relative to the replica `base`): from the peers if they have it in
    /// time, else one GET, its body read through the pacer; `media` downloads are the segment
    /// in flight (the core hears of the request and may abandon it).
    async fn download(&mut self, base: &str, path: &str, media: bool) -> Result<Download, Failure> {
        let url = &resolve_url(base, path);
        if media {
            self.core.handle_request_sent(Instant::now());
        }
        // What peers delivered: all of the file, or part of it and the rest from the CDN.
        let mut part = None;
        // With nothing buffered (startup, a stall), only a file already here whole is taken
        // from the peers: asking them costs round trips the first frame should not wait for.
        let empty = self.core.buffer_s() <= 0.0;
        if let Some(peers) = self.peers.filter(|p| !empty || p.missing(path) == Some(0)) {
            let buffered_wall_s = self.core.buffer_s() / self.core.config().speed.max(1e-9);
            let max_wall_s = (self.peer_wait_s / self.core.config().speed.max(1e-9)).max(0.0);
            let wait = if self.core.buffer_s() > 0.0 {
                (buffered_wall_s / 3.0).min(max_wall_s).max(MIN_PEER_WAIT_S)
            } else {
                0.0
            };
            let deadline = Instant::now() + Duration::from_secs_f64(wait);
            let got = peers.fetch(path, deadline).await.filter(PeerPart::is_valid);
            if media {
                // Neither the peers' bytes nor the wait for them is a sample of the link the
                // rung is chosen by (the CDN's, whose clock starts now).
                self.core
                    .handle_peer_part(Instant::now(), got.as_ref().map_or(0, PeerPart::from_peers));
            }
            if let Some(p) = got {
                let n = p.from_peers();
                if p.missing.is_empty() {
                    self.bytes_total += n;
                    self.peer_bytes += n;
                    return Ok(Download::Done(n));
                }
                // Counted once the CDN's answer for the rest is accepted.
                part = Some(p);
            }
        }
        // The whole file, kept only to offer it to the peers.
        let mut body = self.peers.is_some().then(Vec::new);
        // A replica that stops answering (frozen, not refusing) must not cost more than about
        // half of what is buffered before the next replica is tried: wait at most half the
        // buffer's wall-clock time, between MIN_PATIENCE and IDLE_TIMEOUT.
        let buffered_wall_s = self.core.buffer_s() / self.core.config().speed.max(1e-9);
        let patience = Duration::from_secs_f64(
            (buffered_wall_s / 2.0).clamp(MIN_PATIENCE.as_secs_f64(), IDLE_TIMEOUT.as_secs_f64()),
        );
        self.client.patience = Some(patience);
        // Dropping `response` before its end closes its connection: every early return below
        // (an error, a refused size, an abandonment) cancels the transfer that way.
        let mut response = match &part {
            Some(p) => self.client.get_range(url, p.missing.clone()).await?,
            None => self.client.get(url).await?,
        };
        let status = response.status();
        // Where the CDN's bytes go in the file, and how many came from peers before them.
        let mut range = None;
        let mut from_peers = 0;
        if let Some(p) = part.take() {
            if status == hyper::StatusCode::PARTIAL_CONTENT {
                if !response.carries_range(&p.missing, p.data.len() as u64) {
                    return Err(Failure::Retry(format!(
                        "{url}: asked for bytes {:?}, got Content-Range {:?}",
                        p.missing,
                        response.headers().get(hyper::header::CONTENT_RANGE)
                    )));
                }
                range = Some(p.missing.clone());
                from_peers = p.from_peers();
                self.bytes_total += from_peers;
                self.peer_bytes += from_peers;
                body = Some(p.data);
            }
            // A server that ignores Range sends it all (200): the peers' part is not needed.
            if status != hyper::StatusCode::PARTIAL_CONTENT && media {
                self.core.discard_peer_part();
            }
        }
        let status = match range {
            Some(_) => hyper::StatusCode::OK,
            None => status,
        };
        if status.is_server_error() {
            return Err(Failure::Retry(format!("HTTP {}", status.as_u16())));
        }
        if !status.is_success() {
            return Err(Failure::Fatal(PlayError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            }));
        }
        let declared = response.content_length();
        if let Some(len) = declared.filter(|&l| l > MAX_SEGMENT_BYTES) {
            return Err(Failure::Fatal(PlayError::SegmentTooLarge {
                url: url.to_string(),
                bytes: len,
            }));
        }
        let bytes_total = match (&range, declared, self.core.in_flight_ladder_bytes()) {
            (Some(_), _, _) => body.as_ref().map_or(0, |b| b.len() as u64),
            (None, Some(len), _) => len,
            (None, None, Some(ladder_bytes)) => ladder_bytes,
            (None, None, None) => 0,
        };
        if let Some(r) = &range {
            if declared.is_some_and(|len| len != r.end - r.start) {
                return Err(Failure::Retry(format!("{url}: Content-Length does not match {r:?}")));
            }
        }
        let mut received = 0u64;
        loop {
            let data = match tokio::time::timeout(patience, response.chunk()).await {
                Err(_) => return Err(Failure::Retry(format!("{url}: no data for {patience:?}"))),
                Ok(Ok(None)) => break,
                Ok(Err(e)) => return Err(Failure::Retry(format!("{url}: {e}"))),
                Ok(Ok(Some(data))) => data,
            };
            let n = data.len() as u64;
            received += n;
            self.bytes_total += n;
            match (&range, &mut body) {
                (Some(r), Some(body)) => {
                    let start = r.start + received - n;
                    if received > r.end - r.start {
                        return Err(Failure::Retry(format!("{url}: more bytes than {r:?}")));
                    }
                    body[start as usize..(start + n) as usize].copy_from_slice(&data);
                }
                (None, Some(body)) => body.extend_from_slice(&data),
                (_, None) => {}
            }
            if received > MAX_SEGMENT_BYTES {
                return Err(Failure::Fatal(PlayError::SegmentTooLarge {
                    url: url.to_string(),
                    bytes: received,
                }));
            }
            if let Some(pacer) = &mut self.pacer {
                let now = Instant::now();
                let until = self.core.instant_at(pacer.take(self.core.player_time(now), n));
                if until.saturating_duration_since(now) >= MIN_SLEEP {
                    tokio::time::sleep_until(until.into()).await;
                }
            }
            if media {
                // The CDN's bytes of what it was asked for (the rest, after a peer part).
                let asked = range.as_ref().map_or(bytes_total, |r| r.end - r.start);
                if let Some(lower) = self.core.handle_progress(Instant::now(), received, asked) {
                    // HTTP/1.1 cannot cancel a response but by closing its connection, which
                    // dropping `response` here does.
                    return Ok(Download::Abandoned { lower });
                }
            }
        }
        if let Some(len) = declared.filter(|&l| l != received) {
            return Err(Failure::Retry(format!("{url}: {received} of {len} bytes")));
        }
        if let Some(r) = range.as_ref().filter(|r| r.end - r.start != received) {
            return Err(Failure::Retry(format!("{url}: {received} bytes of {r:?}")));
        }
        if let (Some(peers), Some(body)) = (self.peers, body) {
            peers.offer(path, body.into()).await;
        }
        Ok(Download::Done(from_peers + received))
    }
}
