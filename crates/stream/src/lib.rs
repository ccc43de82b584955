//! `stream`: video streaming over DASH (issue 5).
//!
//! Layout, in layers:
//! - [`proto`]: the sans-IO cores. No sockets, no files, no clock reads, no tokio: `now` (an
//!   `Instant` or player seconds) and seeds come in as arguments, decisions go out as return
//!   values, so a server, the player and a virtual-time simulation drive the same code. They
//!   use nothing outside `proto/`.
//!   - [`proto::abr`]: the `Abr` trait, the ladder, and the throughput, BOLA, dynamic
//!     (dash.js's default) and hybrid rules.
//!   - [`proto::player`]: `PlayerCore` (buffer, stalls, when to request, abandonment) and
//!     Pensieve's linear QoE.
//!   - [`proto::trace`]: bandwidth traces, their seeded generators, the trace as a `Link` and
//!     `TracePacer`.
//!   - [`proto::placement`]: request routing by consistent hashing with bounded loads.
//!   - [`proto::cache`]: the edge's byte-bounded LRU segment cache.
//! - Formats and rules, also pure, that the drivers share:
//!   - [`mpd`]: the DASH manifest model, its capped parser, segment URLs, the writer and the
//!     BaseURL rewriter.
//!   - [`request_path`]: the one request-path rule (decode once, collapse `//`, refuse `..`
//!     and the like) that the origin, the edge and the router all apply.
//! - Drivers and servers, beside `proto/` (they own the sockets, files, clock and tasks):
//!   - [`player`]: the headless DASH player (`swarmcast play`): an HTTP/1.1 fetcher that drives
//!     `proto::player::PlayerCore` on the wall clock, with trace throttling, abandonment and
//!     failover over the MPD's BaseURLs.
//!   - [`eval`]: drives `PlayerCore` in virtual time over seeded (or, with `--trace-dir`,
//!     recorded) bandwidth traces and compares the rules by Pensieve's linear QoE, stalls and
//!     switches (`swarmcast stream eval`).
//!   - [`package`]: encodes a bitrate ladder with the ffmpeg CLI and measures what came out.
//!   - [`files`]: serving the files of a content directory safely (`resolve_path`, the
//!     `OriginBody` that streams a file window).
//!   - [`web`]: the web player page (`/player/MOVIE`, dash.js) the origin serves.
//!   - [`origin`]: the HTTP/1.1 origin server (Range, MIME types, CORS, no path traversal); it
//!     hands `/player/` and `/_player/` to `web`.
//!   - [`edge`]: the CDN edge server, a pull-through cache over `proto::cache` with
//!     single-flight origin fetches.
//!   - [`router`]: the CDN request router (HTTP manifests and redirects, authoritative DNS,
//!     health probes) over `proto::placement`.
//!
//! Dependencies point one way, from drivers to cores: `router` → `origin` → `web` → `files`,
//! `edge` → `origin`, `origin` → `files`; `edge` → `proto::cache`, `router` →
//! `proto::placement`, `eval` → `proto`, `player` → `proto`; `player`, `package`, `router` →
//! `mpd`; the servers → `request_path`. Nothing in `proto/` uses a module outside it.

pub mod edge;
pub mod eval;
pub mod files;
pub mod mpd;
pub mod origin;
pub mod package;
pub mod player;
pub mod proto;
pub mod request_path;
pub mod router;
pub mod web;
