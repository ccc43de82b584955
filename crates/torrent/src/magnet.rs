//! Magnet URIs (BEP 9): `magnet:?xt=urn:btih:<hash>&dn=<name>&tr=<tracker>&x.pe=<host:port>`.
//!
//! [`Magnet::parse`] accepts the info-hash as 40 hex digits or 32 base32 characters (either
//! case), percent-decodes `dn`, `tr` (also `tr.1`, `tr.2`, ...) and `x.pe`, and ignores
//! parameters it does not know. [`Magnet::to_uri`] writes the canonical form back.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::metainfo::InfoHash;

/// Longest magnet URI we parse.
pub const MAX_MAGNET_LEN: usize = 8 * 1024;

/// Characters escaped by [`Magnet::to_uri`]: all but RFC 3986 unreserved ones.
const ESCAPE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A parsed magnet link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Magnet {
    /// From `xt=urn:btih:`.
    pub info_hash: InfoHash,
    /// From `dn`: a suggested name, shown until the metadata arrives.
    pub display_name: Option<String>,
    /// From `tr` / `tr.N`, in order of appearance, duplicates removed.
    pub trackers: Vec<String>,
    /// From `x.pe`: peers as `host:port` (IPv6 hosts in brackets), duplicates removed.
    pub peers: Vec<String>,
}

/// Why a magnet URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MagnetError {
    /// Longer than [`MAX_MAGNET_LEN`].
    #[error("magnet link is {len} bytes long, more than the {MAX_MAGNET_LEN} byte limit")]
    TooLong { len: usize },
    /// Does not start with `magnet:?`.
    #[error("not a magnet link: it must start with `magnet:?`")]
    NotMagnet,
    /// No `xt=urn:btih:` parameter.
    #[error("magnet link has no BitTorrent info-hash (`xt=urn:btih:...`)")]
    MissingInfoHash,
    /// The `urn:btih:` value is neither 40 hex digits nor 32 base32 characters.
    #[error("magnet info-hash {0:?} is neither 40 hex digits nor 32 base32 characters")]
    InvalidInfoHash(String),
    /// A `tr` or `x.pe` value is not UTF-8 once percent-decoded.
    #[error("magnet parameter `{0}` is not valid UTF-8 after percent-decoding")]
    NotUtf8(String),
}

impl Magnet {
    /// Parses a magnet URI. The first `xt=urn:btih:` wins; other `xt` values (e.g. BitTorrent
    /// v2 `urn:btmh:`) and unknown parameters are ignored. `+` in `dn` means a space. `x.pe`
    /// values that are not `host:port` are skipped.
    pub fn parse(s: &str) -> Result<Magnet, MagnetError> {
        if s.len() > MAX_MAGNET_LEN {
            return Err(MagnetError::TooLong { len: s.len() });
        }
        let query = match s.get(..8) {
            Some(prefix) if prefix.eq_ignore_ascii_case("magnet:?") => &s[8..],
            _ => return Err(MagnetError::NotMagnet),
        };

        let mut info_hash = None;
        let mut display_name = None;
        let mut trackers: Vec<String> = Vec::new();
        let mut peers: Vec<String> = Vec::new();

        for param in query.split('&') {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            if key == "xt" {
                if info_hash.is_some() {
                    continue;
                }
                let value = percent_decode_str(value).decode_utf8_lossy();
                if let Some(hash) = strip_prefix_ignore_case(&value, "urn:btih:") {
                    info_hash = Some(decode_hash(hash)?);
                }
            } else if key == "dn" {
                let value = value.replace('+', " ");
                let name = percent_decode_str(&value).decode_utf8_lossy().into_owned();
                display_name = Some(name);
            } else if key == "tr" || is_numbered(&key, "tr.") {
                let url = decode_utf8(value, &key)?;
                if !url.is_empty() && !trackers.contains(&url) {
                    trackers.push(url);
                }
            } else if key == "x.pe" {
                let peer = decode_utf8(value, &key)?;
                if is_host_port(&peer) && !peers.contains(&peer) {
                    peers.push(peer);
                } else {
                    tracing::debug!(peer = %peer, "skipping malformed x.pe in magnet link");
                }
            }
        }

        Ok(Magnet {
            info_hash: info_hash.ok_or(MagnetError::MissingInfoHash)?,
            display_name,
            trackers,
            peers,
        })
    }

    /// The canonical URI: `xt` in lowercase hex, then `dn`, every `tr`, every `x.pe`, with
    /// everything but unreserved characters percent-encoded. [`Magnet::parse`] reads it back to
    /// an equal value.
    pub fn to_uri(&self) -> String {
        let mut uri = format!("magnet:?xt=urn:btih:{}", self.info_hash);
        if let Some(name) = &self.display_name {
            uri.push_str("&dn=");
            uri.extend(utf8_percent_encode(name, ESCAPE));
        }
        for tracker in &self.trackers {
            uri.push_str("&tr=");
            uri.extend(utf8_percent_encode(tracker, ESCAPE));
        }
        for peer in &self.peers {
            uri.push_str("&x.pe=");
            uri.extend(utf8_percent_encode(peer, ESCAPE));
        }
        uri
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    match s.get(..prefix.len()) {
        Some(head) if head.eq_ignore_ascii_case(prefix) => Some(&s[prefix.len()..]),
        _ => None,
    }
}

/// `tr.1`, `tr.2`, ...: `prefix` followed by one or more digits.
fn is_numbered(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn decode_utf8(value: &str, key: &str) -> Result<String, MagnetError> {
    percent_decode_str(value)
        .decode_utf8()
        .map(|v| v.into_owned())
        .map_err(|_| MagnetError::NotUtf8(key.to_string()))
}

fn decode_hash(s: &str) -> Result<InfoHash, MagnetError> {
    let invalid = || MagnetError::InvalidInfoHash(s.chars().take(64).collect());
    match s.len() {
        40 => InfoHash::from_hex(s).ok_or_else(invalid),
        32 => {
            let decoded = data_encoding::BASE32
                .decode(s.to_ascii_uppercase().as_bytes())
                .map_err(|_| invalid())?;
            let hash: [u8; 20] = decoded.try_into().map_err(|_| invalid())?;
            Ok(InfoHash(hash))
        }
        _ => Err(invalid()),
    }
}

/// `host:port` with a non-empty host (IPv6 in brackets) and a port in 1..=65535.
fn is_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner.strip_suffix(']').is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty() && !host.contains(':') && !host.contains('/')
    };
    port_ok && host_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";

    fn hash() -> InfoHash {
        InfoHash::from_hex(HEX).unwrap() // A literal 40-digit hex string.
    }

    #[test]
    fn hex_and_base32_decode_to_the_same_hash() {
        let b32 = data_encoding::BASE32.encode(&hash().0);
        assert_eq!(b32.len(), 32);
        let from_hex = Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}")).unwrap();
        let from_upper_hex =
            Magnet::parse(&format!("magnet:?xt=urn:btih:{}", HEX.to_uppercase())).unwrap();
        let from_b32 = Magnet::parse(&format!("magnet:?xt=urn:btih:{b32}")).unwrap();
        let from_lower_b32 =
            Magnet::parse(&format!("magnet:?xt=urn:btih:{}", b32.to_lowercase())).unwrap();
        assert_eq!(from_hex.info_hash, hash());
        assert_eq!(from_upper_hex.info_hash, hash());
        assert_eq!(from_b32.info_hash, hash());
        assert_eq!(from_lower_b32.info_hash, hash());
        assert_eq!(from_hex.display_name, None);
        assert!(from_hex.trackers.is_empty() && from_hex.peers.is_empty());
    }

    #[test]
    fn parameters_are_percent_decoded() {
        let uri = format!(
            "magnet:?xt=urn:btih:{HEX}&dn=Big+Buck%20Bunny%2B%C3%A9\
             &tr=http%3A%2F%2Ftracker.example%3A6969%2Fannounce\
             &tr.1=udp%3A%2F%2Fother.example%3A80\
             &tr=http%3A%2F%2Ftracker.example%3A6969%2Fannounce\
             &x.pe=10.0.0.1%3A6881&x.pe=%5B%3A%3A1%5D%3A51413&x.pe=nonsense\
             &ws=http%3A%2F%2Fseed.example%2F&foo"
        );
        let m = Magnet::parse(&uri).unwrap();
        assert_eq!(m.info_hash, hash());
        assert_eq!(m.display_name.as_deref(), Some("Big Buck Bunny+é"));
        assert_eq!(
            m.trackers,
            vec![
                "http://tracker.example:6969/announce".to_string(),
                "udp://other.example:80".to_string()
            ]
        );
        assert_eq!(m.peers, vec!["10.0.0.1:6881".to_string(), "[::1]:51413".to_string()]);
    }

    #[test]
    fn to_uri_round_trips() {
        let m = Magnet {
            info_hash: hash(),
            display_name: Some("a b+c/d é".into()),
            trackers: vec!["http://t.example/announce?x=1&y=2".into(), "udp://u.example:1".into()],
            peers: vec!["1.2.3.4:5".into(), "[::1]:6881".into()],
        };
        let uri = m.to_uri();
        assert!(uri.starts_with(&format!("magnet:?xt=urn:btih:{HEX}&dn=a%20b%2Bc%2Fd%20%C3%A9")));
        assert_eq!(Magnet::parse(&uri).unwrap(), m);
    }

    #[test]
    fn first_btih_wins_and_other_xt_are_ignored() {
        let other = "0".repeat(40);
        let uri = format!(
            "magnet:?xt=urn:btmh:1220{}&xt=urn:btih:{HEX}&xt=urn:btih:{other}",
            "ab".repeat(32)
        );
        assert_eq!(Magnet::parse(&uri).unwrap().info_hash, hash());
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(Magnet::parse(""), Err(MagnetError::NotMagnet));
        assert_eq!(Magnet::parse("http://example.com/?xt=1"), Err(MagnetError::NotMagnet));
        assert_eq!(Magnet::parse("magnet:"), Err(MagnetError::NotMagnet));
        assert_eq!(Magnet::parse("magnet:?dn=x&tr=y"), Err(MagnetError::MissingInfoHash));
        assert_eq!(Magnet::parse("magnet:?xt=urn:sha1:abc"), Err(MagnetError::MissingInfoHash));
        assert_eq!(
            Magnet::parse("magnet:?xt=urn:btih:1234"),
            Err(MagnetError::InvalidInfoHash("1234".into()))
        );
        let bad_hex = "g".repeat(40);
        assert_eq!(
            Magnet::parse(&format!("magnet:?xt=urn:btih:{bad_hex}")),
            Err(MagnetError::InvalidInfoHash(bad_hex))
        );
        let bad_b32 = "1".repeat(32); // '1' is not in the base32 alphabet.
        assert_eq!(
            Magnet::parse(&format!("magnet:?xt=urn:btih:{bad_b32}")),
            Err(MagnetError::InvalidInfoHash(bad_b32))
        );
        assert_eq!(
            Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}&tr=%FF%FE")),
            Err(MagnetError::NotUtf8("tr".into()))
        );
        let long = format!("magnet:?xt=urn:btih:{HEX}&dn={}", "a".repeat(MAX_MAGNET_LEN));
        assert_eq!(Magnet::parse(&long), Err(MagnetError::TooLong { len: long.len() }));
    }

    #[test]
    fn host_port_check() {
        assert!(is_host_port("example.com:80"));
        assert!(is_host_port("[2001:db8::1]:443"));
        assert!(!is_host_port("example.com"));
        assert!(!is_host_port("example.com:0"));
        assert!(!is_host_port(":80"));
        assert!(!is_host_port("::1:80"));
        assert!(!is_host_port("[nothex]:80"));
    }
}
