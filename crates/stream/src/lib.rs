//! `stream`: video streaming over DASH (issue 5).
//!
//! - `proto/`: the sans-IO cores (no sockets, no files, no clock, no tokio): `proto::abr` (the
//!   `Abr` trait and the throughput, BOLA, dynamic (dash.js's default) and hybrid rules),
//!   `proto::placement` (request routing by consistent hashing with bounded loads) and
//!   `proto::cache` (the edge's byte-bounded LRU segment cache).
//! - `eval`: drives `player`'s `PlayerCore` in virtual time over seeded (or, with
//!   `--trace-dir`, recorded) bandwidth traces and compares the rules by Pensieve's linear QoE,
//!   stalls and switches (`swarmcast stream eval`).
//! - `mpd`: the DASH manifest model, its capped parser, segment URLs, the writer and the
//!   BaseURL rewriter.
//! - `package`: encodes a bitrate ladder with the ffmpeg CLI and measures what came out.
//! - `request_path`: the one request-path rule (decode once, collapse `//`, refuse `..` and
//!   the like) that the origin, the edge and the router all apply.
//! - `files`: serving the files of a content directory safely (`resolve_path`, the `OriginBody`
//!   that streams a file window); used by `origin` and `web`.
//! - `origin`: the HTTP/1.1 origin server (Range, MIME types, CORS, no path traversal); it
//!   hands `/player/` and `/_player/` to `web`.
//! - `player`: the headless DASH player (`swarmcast play`): a sans-IO core (buffer, stalls,
//!   when to request) driven by an HTTP/1.1 fetcher with trace throttling, abandonment and
//!   failover over the MPD's BaseURLs.
//! - `web`: the web player page (`/player/MOVIE`, dash.js) the origin serves.
//! - `edge`: the CDN edge server, a pull-through cache with single-flight origin fetches.
//! - `router`: the CDN request router (HTTP manifests and redirects, authoritative DNS,
//!   health probes) over `proto::placement`.

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
