//! The HTTP tracker client (BEP 3; compact peers BEP 23; `peers6` BEP 7).
//!
//! [`announce_url`] and [`parse_announce_response`] are pure; [`announce_with`] runs one GET
//! (`http://` or `https://`) on the shared [`http_layer::HttpClient`], which bounds connecting,
//! each read and the whole exchange, follows no redirect and checks certificates against the
//! system's trust store. The body is capped at [`MAX_RESPONSE_BYTES`]. [`shared_client`] is the
//! process's one client for trackers.
//!
//! Bencode is read with `bendy`, which insists on sorted dictionary keys and canonical integers
//! (no `i03e`): a tracker that sends unsorted keys gets a [`TrackerError::Malformed`]. The common
//! trackers (opentracker, chihaya, ours) sort their keys.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bendy::decoding::{Decoder, Object};
use http_layer::{ClientConfig, ClientError, HttpClient};
use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::DEFAULT_INTERVAL;
use super::{parse_compact_peers, AnnounceRequest, AnnounceResponse, TrackerError};

/// The largest response body we read.
pub const MAX_RESPONSE_BYTES: usize = 2 * 1024 * 1024;

/// Longest `failure reason` we keep; the rest is cut.
const MAX_REASON_CHARS: usize = 1024;

/// Characters that stay as they are in a query value: RFC 3986 unreserved.
const QUERY_VALUE: &AsciiSet =
    &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Builds the announce URL: `base` plus the BEP 3 parameters, binary fields percent-encoded byte
/// by byte; joined with `&` if `base` already has a query.
pub fn announce_url(base: &str, req: &AnnounceRequest) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    let mut url = format!(
        "{base}{sep}info_hash={}&peer_id={}&port={}&uploaded={}&downloaded={}&left={}&compact=1&numwant={}",
        percent_encode(&req.info_hash.0, QUERY_VALUE),
        percent_encode(&req.peer_id.0, QUERY_VALUE),
        req.port,
        req.uploaded,
        req.downloaded,
        req.left,
        req.num_want,
    );
    if let Some(event) = req.event.as_query_value() {
        url.push_str("&event=");
        url.push_str(event);
    }
    url
}

/// Parses a bencoded announce response.
///
/// `failure reason` becomes [`TrackerError::Failure`]. `interval` defaults to 30 minutes and is at
/// least one second; `min interval` is ignored. `peers` may be compact (6 bytes per IPv4 peer)
/// or a list of `ip`/`port` dictionaries (entries we cannot read are skipped); `peers6` is
/// compact IPv6 (18 bytes per peer). `complete`/`incomplete` become seeders/leechers.
pub fn parse_announce_response(body: &[u8]) -> Result<AnnounceResponse, TrackerError> {
    let malformed = |e: bendy::decoding::Error| TrackerError::Malformed(e.to_string());
    let mut decoder = Decoder::new(body).with_max_depth(8);
    let mut dict = match decoder.next_object().map_err(malformed)? {
        Some(Object::Dict(d)) => d,
        Some(_) => return Err(TrackerError::Malformed("not a dictionary".into())),
        None => return Err(TrackerError::Malformed("empty response".into())),
    };

    let mut failure = None;
    let mut interval = None;
    let mut seeders = None;
    let mut leechers = None;
    let mut peers = Vec::new();
    while let Some((key, value)) = dict.next_pair().map_err(malformed)? {
        match (key, value) {
            (b"failure reason", Object::Bytes(b)) => {
                failure = Some(String::from_utf8_lossy(b).chars().take(MAX_REASON_CHARS).collect());
            }
            (b"warning message", Object::Bytes(b)) => {
                tracing::info!(warning = %String::from_utf8_lossy(b), "tracker warning");
            }
            (b"interval", Object::Integer(i)) => interval = i.parse::<i64>().ok(),
            (b"complete", Object::Integer(i)) => seeders = i.parse::<u32>().ok(),
            (b"incomplete", Object::Integer(i)) => leechers = i.parse::<u32>().ok(),
            (b"peers", Object::Bytes(b)) => {
                let v4 = parse_compact_peers(b, false).ok_or_else(|| {
                    TrackerError::Malformed(format!(
                        "compact peers length {} not a multiple of 6",
                        b.len()
                    ))
                })?;
                peers.extend(v4);
            }
            (b"peers", Object::List(mut list)) => {
                while let Some(item) = list.next_object().map_err(malformed)? {
                    if let Object::Dict(mut d) = item {
                        let mut ip = None;
                        let mut port = None;
                        while let Some((k, v)) = d.next_pair().map_err(malformed)? {
                            match (k, v) {
                                (b"ip", Object::Bytes(b)) => {
                                    ip = std::str::from_utf8(b)
                                        .ok()
                                        .and_then(|s| s.parse::<IpAddr>().ok());
                                }
                                (b"port", Object::Integer(p)) => port = p.parse::<u16>().ok(),
                                _ => {}
                            }
                        }
                        if let (Some(ip), Some(port)) = (ip, port) {
                            if port != 0 {
                                peers.push(SocketAddr::new(ip, port));
                            }
                        }
                    }
                }
            }
            (b"peers6", Object::Bytes(b)) => {
                let v6 = parse_compact_peers(b, true).ok_or_else(|| {
                    TrackerError::Malformed(format!(
                        "compact peers6 length {} not a multiple of 18",
                        b.len()
                    ))
                })?;
                peers.extend(v6);
            }
            _ => {}
        }
    }
    if let Some(reason) = failure {
        return Err(TrackerError::Failure(reason));
    }
    let interval = match interval {
        Some(secs) => Duration::from_secs(secs.max(1).unsigned_abs()),
        None => DEFAULT_INTERVAL,
    };
    Ok(AnnounceResponse { interval, peers, seeders, leechers })
}

/// The scrape URL of an announce URL (BEP 48): the last path segment's `announce` becomes
/// `scrape` (`http://t/x/announce.php?k=1` → `http://t/x/scrape.php?k=1`); `None` when the
/// last segment does not start with `announce` (the tracker has no scrape by convention).
pub fn scrape_url(announce: &str) -> Option<String> {
    let (path, query) = match announce.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (announce, None),
    };
    let path_start = path.find("://")? + 3;
    let slash = path.rfind('/').filter(|&s| s >= path_start)?;
    let rest = path[slash + 1..].strip_prefix("announce")?;
    let mut url = format!("{}/scrape{rest}", &path[..slash]);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    Some(url)
}

/// One torrent's scrape numbers: seeders, times completed, leechers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrapeStats {
    pub seeders: u32,
    pub completed: u32,
    pub leechers: u32,
}

/// Parses a bencoded scrape reply (BEP 48): the numbers of each 20-byte info-hash in `files`
/// (entries of another length, or missing numbers, are skipped; a `failure reason` is
/// [`TrackerError::Failure`]).
pub fn parse_scrape_response(body: &[u8]) -> Result<Vec<([u8; 20], ScrapeStats)>, TrackerError> {
    let malformed = |e: bendy::decoding::Error| TrackerError::Malformed(e.to_string());
    let mut decoder = Decoder::new(body).with_max_depth(4);
    let mut dict = match decoder.next_object().map_err(malformed)? {
        Some(Object::Dict(d)) => d,
        _ => return Err(TrackerError::Malformed("not a dictionary".into())),
    };
    let mut out = Vec::new();
    while let Some((key, value)) = dict.next_pair().map_err(malformed)? {
        match (key, value) {
            (b"failure reason", Object::Bytes(b)) => {
                let reason = String::from_utf8_lossy(b).chars().take(MAX_REASON_CHARS).collect();
                return Err(TrackerError::Failure(reason));
            }
            (b"files", Object::Dict(mut files)) => {
                while let Some((hash, v)) = files.next_pair().map_err(malformed)? {
                    let Object::Dict(mut numbers) = v else { continue };
                    let mut s = ScrapeStats::default();
                    let mut got = 0;
                    while let Some((k, n)) = numbers.next_pair().map_err(malformed)? {
                        let Object::Integer(n) = n else { continue };
                        let Ok(n) = n.parse::<u32>() else { continue };
                        match k {
                            b"complete" => (s.seeders, got) = (n, got + 1),
                            b"downloaded" => s.completed = n,
                            b"incomplete" => (s.leechers, got) = (n, got + 1),
                            _ => {}
                        }
                    }
                    if let (Ok(hash), 2) = (<[u8; 20]>::try_from(hash), got) {
                        out.push((hash, s));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Scrapes the HTTP(S) tracker whose announce URL is `announce` for `info_hashes`.
pub(crate) async fn scrape(
    announce: &str,
    info_hashes: &[crate::InfoHash],
) -> Result<Vec<([u8; 20], ScrapeStats)>, TrackerError> {
    let Some(base) = scrape_url(announce) else {
        return Err(TrackerError::Unsupported(format!(
            "{announce} (no scrape: its path does not end in announce)"
        )));
    };
    let mut url = base.clone();
    for (i, h) in info_hashes.iter().enumerate() {
        let sep = if i == 0 && !base.contains('?') { '?' } else { '&' };
        url.push_str(&format!("{sep}info_hash={}", percent_encode(&h.0, QUERY_VALUE)));
    }
    let client = shared_client()?;
    let response = client.get(&url).await.map_err(|e| client_error(&base, e))?;
    let status = response.status();
    let body =
        response.bytes_capped(MAX_RESPONSE_BYTES).await.map_err(|e| client_error(&base, e))?;
    match parse_scrape_response(&body) {
        Ok(stats) if status.is_success() => Ok(stats),
        Err(TrackerError::Failure(reason)) => Err(TrackerError::Failure(reason)),
        _ if !status.is_success() => Err(TrackerError::HttpStatus(status.as_u16())),
        other => other,
    }
}

/// The process's one HTTP client for trackers (built on first use).
pub fn shared_client() -> Result<&'static HttpClient, TrackerError> {
    static CLIENT: OnceLock<Result<HttpClient, String>> = OnceLock::new();
    let config = ClientConfig { max_response_bytes: MAX_RESPONSE_BYTES, ..ClientConfig::default() };
    CLIENT
        .get_or_init(|| HttpClient::new(config).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| TrackerError::Http(e.clone()))
}

/// The client whose requests leave from `local` ([`shared_client`] for `None`), built on first
/// use and kept (one per address a process binds to: a handful at most).
fn client_from(local: Option<IpAddr>) -> Result<HttpClient, TrackerError> {
    static CLIENTS: OnceLock<Mutex<HashMap<IpAddr, HttpClient>>> = OnceLock::new();
    let Some(ip) = local else { return shared_client().cloned() };
    let mut clients =
        CLIENTS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = clients.get(&ip) {
        return Ok(c.clone());
    }
    let config = ClientConfig {
        max_response_bytes: MAX_RESPONSE_BYTES,
        local_address: Some(ip),
        ..ClientConfig::default()
    };
    let client = HttpClient::new(config).map_err(|e| TrackerError::Http(e.to_string()))?;
    clients.insert(ip, client.clone());
    Ok(client)
}

/// Announces over HTTP or HTTPS from `local` (see [`client_from`]; its own timeouts bound the
/// exchange, [`super::announce_from`] adds the caller's).
pub(crate) async fn announce(
    base: &str,
    req: &AnnounceRequest,
    local: Option<IpAddr>,
) -> Result<AnnounceResponse, TrackerError> {
    announce_with(&client_from(local)?, base, req).await
}

/// Announces to the HTTP(S) tracker at `base` with `client`.
pub async fn announce_with(
    client: &HttpClient,
    base: &str,
    req: &AnnounceRequest,
) -> Result<AnnounceResponse, TrackerError> {
    let full = announce_url(base, req);
    let response = client.get(&full).await.map_err(|e| client_error(base, e))?;
    let status = response.status();
    let body =
        response.bytes_capped(MAX_RESPONSE_BYTES).await.map_err(|e| client_error(base, e))?;
    match parse_announce_response(&body) {
        Ok(resp) if status.is_success() => Ok(resp),
        // Some trackers send their failure reason with a 4xx status.
        Err(TrackerError::Failure(reason)) => Err(TrackerError::Failure(reason)),
        _ if !status.is_success() => Err(TrackerError::HttpStatus(status.as_u16())),
        other => other,
    }
}

fn client_error(base: &str, e: ClientError) -> TrackerError {
    use std::io::{Error, ErrorKind};
    match e {
        ClientError::InvalidUrl { .. } => {
            TrackerError::InvalidUrl { url: base.to_owned(), reason: "not a valid http(s) URL" }
        }
        ClientError::TooLarge { limit } => TrackerError::ResponseTooLarge { limit },
        ClientError::Connect(text) => TrackerError::Io(Error::other(text)),
        ClientError::Timeout(text) => TrackerError::Io(Error::new(ErrorKind::TimedOut, text)),
        ClientError::Tls(text) | ClientError::Http(text) => TrackerError::Http(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::tests::request;
    use crate::tracker::Event;

    #[test]
    fn scrape_urls_follow_bep_48_and_replies_parse() {
        for (announce, scrape) in [
            ("http://t.example/announce", Some("http://t.example/scrape")),
            (
                "http://t.example:80/x/announce.php?k=1",
                Some("http://t.example:80/x/scrape.php?k=1"),
            ),
            (
                "https://t.example/a/announce?x=/announce",
                Some("https://t.example/a/scrape?x=/announce"),
            ),
            ("http://t.example/a", None),
            ("http://t.example/announce/x", None),
            ("http://announce", None),
        ] {
            assert_eq!(scrape_url(announce).as_deref(), scrape, "{announce}");
        }
        let body = crate::tracker::server::encode_scrape_reply(&[(
            crate::InfoHash([3; 20]),
            crate::tracker::server::SwarmStats { complete: 5, downloaded: 9, incomplete: 2 },
        )]);
        let want = ScrapeStats { seeders: 5, completed: 9, leechers: 2 };
        assert_eq!(parse_scrape_response(&body).unwrap(), vec![([3; 20], want)]);
        // Entries of the wrong size or with missing numbers are skipped; garbage is an error.
        let odd = b"d5:filesd20:aaaaaaaaaaaaaaaaaaaad8:completei1ee3:abcd8:completei1e10:incompletei1eeee";
        assert_eq!(parse_scrape_response(odd).unwrap(), vec![]);
        assert!(parse_scrape_response(b"garbage").is_err());
        assert!(matches!(
            parse_scrape_response(b"d14:failure reason4:nopee"),
            Err(TrackerError::Failure(r)) if r == "nope"
        ));
    }

    #[test]
    fn url_encodes_binary_fields_and_appends_to_existing_query() {
        let mut req = request(b'A', 6881, 100, Event::Started);
        req.info_hash.0 = *b"\x00\xff-._~ab/?&=+%\x7f\x80WXYZ";
        let url = announce_url("http://t.example/announce?key=1", &req);
        assert_eq!(
            url,
            "http://t.example/announce?key=1&info_hash=%00%FF-._~ab%2F%3F%26%3D%2B%25%7F%80WXYZ\
             &peer_id=AAAAAAAAAAAAAAAAAAAA&port=6881&uploaded=0&downloaded=0&left=100&compact=1\
             &numwant=50&event=started"
        );
        let url = announce_url("http://t/a", &request(b'A', 1, 0, Event::None));
        assert!(url.starts_with("http://t/a?info_hash="));
        assert!(!url.contains("event="));
    }

    #[test]
    fn parses_compact_and_dict_peers() {
        let body = b"d8:completei3e10:incompletei2e8:intervali900e5:peers12:\x01\x02\x03\x04\x1a\xe1\x05\x06\x07\x08\x00\x506:peers618:\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x01\x00\x01e";
        let resp = parse_announce_response(body).unwrap();
        assert_eq!(resp.interval, Duration::from_secs(900));
        assert_eq!(resp.seeders, Some(3));
        assert_eq!(resp.leechers, Some(2));
        assert_eq!(
            resp.peers,
            vec![
                "1.2.3.4:6881".parse().unwrap(),
                "5.6.7.8:80".parse().unwrap(),
                "[::1]:1".parse().unwrap()
            ]
        );

        let body = b"d5:peersld2:ip8:10.0.0.17:peer id20:AAAAAAAAAAAAAAAAAAAA4:porti7000eed2:ip8:not-an-i4:porti1eed2:ip3:::14:porti9eeee";
        let resp = parse_announce_response(body).unwrap();
        assert_eq!(resp.interval, DEFAULT_INTERVAL);
        assert_eq!(resp.seeders, None);
        assert_eq!(resp.peers, vec!["10.0.0.1:7000".parse().unwrap(), "[::1]:9".parse().unwrap()]);
    }

    #[test]
    fn failure_reason_and_interval_floor() {
        match parse_announce_response(b"d14:failure reason12:unregisterede") {
            Err(TrackerError::Failure(r)) => assert_eq!(r, "unregistered"),
            other => panic!("unexpected {other:?}"),
        }
        let resp = parse_announce_response(b"d8:intervali-5e5:peers0:e").unwrap();
        assert_eq!(resp.interval, Duration::from_secs(1));
        assert!(resp.peers.is_empty());
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        let cases: &[&[u8]] = &[
            b"",
            b"<html>nope</html>",
            b"i5e",
            b"le",
            b"d8:intervali900e",
            b"d8:intervali900e5:peers7:\x01\x02\x03\x04\x05\x06\x07e",
            b"d5:peers99999999999999999999999:xe",
            b"d5:peers4:abcde",
            b"d5:peersl",
            b"d5:peersld2:ip",
            b"d1:bi1e1:ai1ee",
            &[b'l'; 5000],
        ];
        for case in cases {
            assert!(
                matches!(parse_announce_response(case), Err(TrackerError::Malformed(_))),
                "accepted {:?}",
                String::from_utf8_lossy(case)
            );
        }
    }
}
