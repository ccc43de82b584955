//! The one request-path rule of the stream servers: the origin, the edge and the router all
//! turn a request's raw path into a [`RequestPath`] with [`RequestPath::parse`] before looking
//! at it, so every server refuses the same paths and names the same object the same way.
//!
//! The rule: at most [`MAX_RAW_PATH_BYTES`] raw bytes, starting with `/`; percent-decoded once, as
//! UTF-8; split on `/` with empty segments dropped (`//` collapses, a trailing `/` goes); at least
//! one segment; no segment that is `.` or `..`, starts with `~`, or holds a backslash, a colon
//! (drive letters) or an ASCII control character (NUL included); at most [`MAX_PATH_BYTES`]
//! bytes once canonical. So `/m/a.m4s`, `//m/a.m4s`,
//! `/m//a.m4s` and `/m/%61.m4s` are all `/m/a.m4s`: one cache entry, one origin fetch.
//!
//! [`RequestPath::to_uri_path`] re-encodes the canonical form for a request to another server
//! (the edge's origin fetch), which parses back to the same canonical path: every byte takes
//! at most 3 encoded, and the raw limit is 3 times the canonical one.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Longest canonical (decoded) path accepted.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest raw (encoded) request path accepted: room for every canonical byte encoded.
pub const MAX_RAW_PATH_BYTES: usize = 3 * MAX_PATH_BYTES;

/// Characters escaped in a segment put back into a URL: all but the unreserved ones.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// A request path in canonical form: decoded, `/`-separated plain segments (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestPath(String);

/// Why a raw path was refused (every server answers 404).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Over [`MAX_RAW_PATH_BYTES`] raw or [`MAX_PATH_BYTES`] decoded.
    #[error("the path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    /// Does not start with `/`.
    #[error("the path does not start with /")]
    NotAbsolute,
    /// Percent-decodes to bytes that are not UTF-8.
    #[error("the path does not decode to UTF-8")]
    NotUtf8,
    /// No segment at all (`/`, `//`).
    #[error("the path names nothing")]
    Empty,
    /// A `.`, `..`, `~…` segment or one holding `\`, `:` or a control character.
    #[error("the path has a forbidden segment")]
    ForbiddenSegment,
}

impl RequestPath {
    /// Applies the rule to a raw request path (as on the request line, still percent-encoded).
    pub fn parse(raw: &str) -> Result<RequestPath, PathError> {
        if raw.len() > MAX_RAW_PATH_BYTES {
            return Err(PathError::TooLong);
        }
        if !raw.starts_with('/') {
            return Err(PathError::NotAbsolute);
        }
        let decoded = percent_decode_str(raw).decode_utf8().map_err(|_| PathError::NotUtf8)?;
        RequestPath::from_segments(decoded.split('/'))
    }

    /// The canonical path of already-decoded segments (empty ones are skipped, one holding a
    /// `/` is refused); nothing is decoded again, so a literal `%` stays a `%`.
    pub fn from_segments<'a>(
        segments: impl IntoIterator<Item = &'a str>,
    ) -> Result<RequestPath, PathError> {
        let mut path = String::new();
        for segment in segments.into_iter().filter(|s| !s.is_empty()) {
            if segment == "."
                || segment == ".."
                || segment.starts_with('~')
                || segment.chars().any(|c| matches!(c, '/' | '\\' | ':') || c.is_ascii_control())
            {
                return Err(PathError::ForbiddenSegment);
            }
            path.push('/');
            path.push_str(segment);
        }
        if path.is_empty() {
            return Err(PathError::Empty);
        }
        if path.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong);
        }
        Ok(RequestPath(path))
    }

    /// The canonical, decoded path (`/m/a.m4s`): the cache key and what is matched on.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The decoded segments, none empty.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').skip(1)
    }

    /// The path percent-encoded for a request line; [`RequestPath::parse`] maps it back to
    /// `self`.
    pub fn to_uri_path(&self) -> String {
        let mut out = String::with_capacity(self.0.len());
        for segment in self.segments() {
            out.push('/');
            out.extend(utf8_percent_encode(segment, SEGMENT));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(raw: &str) -> Result<String, PathError> {
        RequestPath::parse(raw).map(|p| p.as_str().to_string())
    }

    #[test]
    fn spellings_of_one_object_are_one_path() {
        for raw in ["/m/a.m4s", "//m/a.m4s", "/m//a.m4s", "/m/%61.m4s", "/%6D/a.m4s", "/m/a.m4s/"] {
            assert_eq!(canonical(raw).as_deref(), Ok("/m/a.m4s"), "{raw}");
        }
        assert_eq!(canonical("/m%2Fa.m4s").as_deref(), Ok("/m/a.m4s"), "an encoded / splits too");
        assert_eq!(canonical("/movie%201/x").as_deref(), Ok("/movie 1/x"));
    }

    #[test]
    fn refusals() {
        use PathError::*;
        let cases: &[(&str, PathError)] = &[
            ("", NotAbsolute),
            ("m/a", NotAbsolute),
            ("/", Empty),
            ("//", Empty),
            ("/../etc/passwd", ForbiddenSegment),
            ("/m/../m/a.m4s", ForbiddenSegment),
            ("/%2e%2e/etc/passwd", ForbiddenSegment),
            ("/%2E%2E%2fetc%2fpasswd", ForbiddenSegment),
            ("/m/..%5c..%5cetc", ForbiddenSegment),
            ("/m\\a.m4s", ForbiddenSegment),
            ("/./m/a.m4s", ForbiddenSegment),
            ("/C:/x", ForbiddenSegment),
            ("/~root", ForbiddenSegment),
            ("/%00", ForbiddenSegment),
            ("/a%0d%0aSet-Cookie:x", ForbiddenSegment),
            ("/%ff", NotUtf8),
        ];
        for (raw, want) in cases {
            assert_eq!(canonical(raw), Err(*want), "{raw}");
        }
        assert_eq!(canonical(&format!("/{}", "a".repeat(MAX_PATH_BYTES))), Err(TooLong));
        assert_eq!(canonical(&"/%61".repeat(MAX_PATH_BYTES / 2)).map(|p| p.len()), Ok(4096));
        assert_eq!(canonical(&"/%61".repeat(MAX_PATH_BYTES / 2 + 1)), Err(TooLong));
        // The longest canonical path with only escaped bytes still round-trips.
        let p = RequestPath::parse(&format!("/{}", "%22".repeat(MAX_PATH_BYTES - 1))).unwrap();
        assert_eq!(RequestPath::parse(&p.to_uri_path()), Ok(p));
    }

    #[test]
    fn no_double_decoding_and_the_encoding_round_trips() {
        // `%2561` is `%61` once decoded, never `a`.
        let p = RequestPath::parse("/m/%2561.m4s").unwrap();
        assert_eq!(p.as_str(), "/m/%61.m4s");
        assert_eq!(p.to_uri_path(), "/m/%2561.m4s");
        for raw in ["/movie%201/chunk-0-00001.m4s", "/a/%C3%A9t%C3%A9/b%3Fc%23d", "/x/%2561"] {
            let p = RequestPath::parse(raw).unwrap();
            assert_eq!(RequestPath::parse(&p.to_uri_path()), Ok(p.clone()), "{raw}");
        }
        let p = RequestPath::from_segments(["movie 1", "", "manifest.mpd"]).unwrap();
        assert_eq!(
            (p.as_str(), p.to_uri_path().as_str()),
            ("/movie 1/manifest.mpd", "/movie%201/manifest.mpd")
        );
        assert_eq!(p.segments().collect::<Vec<_>>(), ["movie 1", "manifest.mpd"]);
        assert_eq!(RequestPath::from_segments(["a/..", "b"]), Err(PathError::ForbiddenSegment));
    }

    #[test]
    fn random_paths_are_refused_or_canonical() {
        use rand::{Rng, SeedableRng};
        let alphabet: Vec<&str> = vec![
            "/", "//", "a", "é", ".", "..", "%", "%2e", "%2F", "%2f", "%5c", "%00", "%61", "%ff",
            "%C3%A9", "~", ":", " ", "%25",
        ];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for _ in 0..20_000 {
            let n = rng.random_range(0..12);
            let raw: String =
                (0..n).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect();
            let Ok(p) = RequestPath::parse(&raw) else { continue };
            assert!(
                p.segments().all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains('\\')),
                "{raw:?}"
            );
            assert_eq!(RequestPath::parse(&p.to_uri_path()), Ok(p.clone()), "{raw:?}");
            assert_eq!(
                RequestPath::parse(p.as_str().replace('%', "%25").as_str()),
                Ok(p),
                "{raw:?}"
            );
        }
    }
}
