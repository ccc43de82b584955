//! `stream`: video streaming over DASH (issue 5).
//!
//! - `mpd`: the DASH manifest model, its capped parser, segment URLs, the writer and the
//!   BaseURL rewriter.
//! - `package`: encodes a bitrate ladder with the ffmpeg CLI and measures what came out.
//! - `origin`: the HTTP/1.1 origin server (Range, MIME types, CORS, no path traversal).

pub mod mpd;
pub mod origin;
pub mod package;
