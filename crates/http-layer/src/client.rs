//! The one HTTP client: reqwest over rustls with ring, HTTP/1.1, bounded in time and size.
//!
//! [`HttpClient`] parses URLs (`http://` and `https://`; user info, IPv6 hosts and default ports
//! are reqwest's `Url`'s business, not ours), bounds connecting, each read and the whole
//! exchange ([`ClientConfig`]), follows no redirect, uses no proxy, and refuses a body larger
//! than its cap ([`Fetched::bytes`]). Certificates are checked against the system's trust store
//! (rustls-platform-verifier) plus any [`ClientConfig::extra_roots`]. By default every request
//! opens its own connection ([`ClientConfig::idle_per_host`] is 0): a kept-alive connection can
//! be closed by its server just as a request is written on it, and the request then fails.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::header::{HeaderMap, CONTENT_RANGE, RANGE};
use hyper::StatusCode;
use rustls::pki_types::CertificateDer;

/// How an [`HttpClient`] behaves.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Time to open a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Longest wait for any one read from the server.
    pub read_timeout: Duration,
    /// Time for the whole exchange, connect to last body byte.
    pub total_timeout: Duration,
    /// Largest body [`Fetched::bytes`] accepts.
    pub max_response_bytes: usize,
    /// Certificates trusted as roots besides the system's (a test CA, a private tracker's).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// Idle connections kept per host for reuse (0: a fresh connection per request).
    pub idle_per_host: usize,
    /// How long a kept connection may sit idle; keep it below the servers' idle timeout.
    pub idle_timeout: Duration,
    /// The address requests leave from (`None`: the system's choice).
    pub local_address: Option<std::net::IpAddr>,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(15),
            total_timeout: Duration::from_secs(30),
            max_response_bytes: 8 * 1024 * 1024,
            extra_roots: Vec::new(),
            user_agent: "Swarmcast/0.1".to_owned(),
            idle_per_host: 0,
            idle_timeout: Duration::from_secs(2),
            local_address: None,
        }
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL does not parse, or names a scheme other than `http` or `https`.
    #[error("invalid URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// Setting up TLS failed (no usable trust store, a bad extra root).
    #[error("TLS setup: {0}")]
    Tls(String),
    /// Connecting, reading or the whole exchange took longer than allowed.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The connection failed (refused, reset, certificate refused, ...).
    #[error("connection: {0}")]
    Connect(String),
    /// The exchange failed at the HTTP level (malformed response, closed mid-body, ...).
    #[error("HTTP: {0}")]
    Http(String),
    /// The body is larger than the cap.
    #[error("response exceeds {limit} bytes")]
    TooLarge { limit: usize },
}

impl ClientError {
    fn from_reqwest(e: reqwest::Error) -> ClientError {
        // `{:#}`-style chain: reqwest's own message names only the outer layer.
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        if e.is_timeout() {
            ClientError::Timeout(text)
        } else if e.is_connect() {
            ClientError::Connect(text)
        } else {
            ClientError::Http(text)
        }
    }
}

/// The platform's certificate verifier trusting `extra` roots too. With none, it is built once
/// per process and shared: loading the system's roots (parsing every PEM certificate of the
/// store) cost each new client a few ms of CPU: with `lab stream` starting four viewers at
/// once, a tenth of the process's samples (perf) in the 300 ms after.
fn verifier(
    extra: &[CertificateDer<'static>],
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<rustls_platform_verifier::Verifier>, ClientError> {
    static SYSTEM_ONLY: std::sync::OnceLock<Arc<rustls_platform_verifier::Verifier>> =
        std::sync::OnceLock::new();
    if extra.is_empty() {
        if let Some(v) = SYSTEM_ONLY.get() {
            return Ok(v.clone());
        }
    }
    let v =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra.iter().cloned(), provider)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
    let v = Arc::new(v);
    if extra.is_empty() {
        return Ok(SYSTEM_ONLY.get_or_init(|| v).clone());
    }
    Ok(v)
}

/// An HTTP client with the project's limits; cheap to clone (clones share one pool).
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: reqwest::Client,
    max_response_bytes: usize,
}

impl HttpClient {
    /// Builds a client. Fails only if TLS cannot be set up.
    pub fn new(config: ClientConfig) -> Result<HttpClient, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = verifier(&config.extra_roots, provider.clone())?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .dangerous()
            // Not dangerous: this is the platform's verifier, only handed over explicitly.
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let inner = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .http1_only()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .timeout(config.total_timeout)
            .pool_max_idle_per_host(config.idle_per_host)
            .pool_idle_timeout(config.idle_timeout)
            .local_address(config.local_address)
            .user_agent(config.user_agent)
            .build()
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        Ok(HttpClient { inner, max_response_bytes: config.max_response_bytes })
    }

    /// Sends `GET url` and returns once the status and headers are in.
    pub async fn get(&self, url: &str) -> Result<Fetched, ClientError> {
        self.get_with_timeout(url, None).await
    }

    /// [`HttpClient::get`] with a total time other than the client's (`None`: the client's).
    pub async fn get_with_timeout(
        &self,
        url: &str,
        total_timeout: Option<Duration>,
    ) -> Result<Fetched, ClientError> {
        self.send(url, None, total_timeout).await
    }

    /// `GET url` for the bytes `range` of the resource (`Range: bytes=A-B`). The server may
    /// answer 206 with those bytes (check [`Fetched::content_range`]) or 200 with all of them.
    /// An empty range is refused.
    pub async fn get_range(&self, url: &str, range: Range<u64>) -> Result<Fetched, ClientError> {
        if range.is_empty() {
            let reason = format!("empty byte range {range:?}");
            return Err(ClientError::InvalidUrl { url: url.to_owned(), reason });
        }
        self.send(url, Some(range), None).await
    }

    /// Sends `method url` with `headers` and `body` (a client of an API: `POST` with a token,
    /// say) and returns once the status and headers are in.
    pub async fn request(
        &self,
        method: hyper::Method,
        url: &str,
        headers: &[(hyper::header::HeaderName, String)],
        body: Bytes,
    ) -> Result<Fetched, ClientError> {
        let parsed = parse_url(url)?;
        let mut request = self.inner.request(method, parsed).body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(ClientError::from_reqwest)?;
        Ok(Fetched { response, limit: self.max_response_bytes })
    }

    async fn send(
        &self,
        url: &str,
        range: Option<Range<u64>>,
        total_timeout: Option<Duration>,
    ) -> Result<Fetched, ClientError> {
        let parsed = parse_url(url)?;
        let mut request = self.inner.get(parsed);
        if let Some(r) = range {
            request = request.header(RANGE, format!("bytes={}-{}", r.start, r.end - 1));
        }
        if let Some(timeout) = total_timeout {
            request = request.timeout(timeout);
        }
        let response = request.send().await.map_err(ClientError::from_reqwest)?;
        Ok(Fetched { response, limit: self.max_response_bytes })
    }
}

/// A `Content-Range` value, `bytes A-B/LEN` (or `bytes A-B/*`), as `A..B+1` and the complete
/// length if given; `None` when malformed, `B < A`, or the range ends past `LEN`.
pub fn parse_content_range(value: &str) -> Option<(Range<u64>, Option<u64>)> {
    let (span, total) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    let end = b.checked_add(1)?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse::<u64>().ok()?),
    };
    (a <= b && total.is_none_or(|t| end <= t)).then_some((a..end, total))
}

/// Parses an `http://` or `https://` URL.
pub fn parse_url(url: &str) -> Result<reqwest::Url, ClientError> {
    let invalid = |reason: String| ClientError::InvalidUrl { url: url.to_owned(), reason };
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => return Err(invalid(format!("scheme {other} is not http or https"))),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".to_owned()));
    }
    Ok(parsed)
}

/// A response whose body has not been read yet.
#[derive(Debug)]
pub struct Fetched {
    response: reqwest::Response,
    limit: usize,
}

impl Fetched {
    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.response.status()
    }

    /// The response headers.
    pub fn headers(&self) -> &HeaderMap {
        self.response.headers()
    }

    /// The byte range a 206 answer carries (`Content-Range: bytes A-B/LEN`), as `A..B+1`, and
    /// the complete length if given; `None` when the header is absent or malformed.
    pub fn content_range(&self) -> Option<(Range<u64>, Option<u64>)> {
        let value = self.headers().get(CONTENT_RANGE)?.to_str().ok()?;
        parse_content_range(value)
    }

    /// Whether this answer carries exactly `range` of a resource of `len` bytes (a complete
    /// length of `*` is taken on trust).
    pub fn carries_range(&self, range: &Range<u64>, len: u64) -> bool {
        self.content_range().is_some_and(|(r, total)| r == *range && total.is_none_or(|t| t == len))
    }

    /// The announced body length, if any.
    pub fn content_length(&self) -> Option<u64> {
        self.response.content_length()
    }

    /// The next piece of the body; `None` at its end. Pieces are not capped: a caller that
    /// streams counts the bytes itself.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        self.response.chunk().await.map_err(ClientError::from_reqwest)
    }

    /// The whole body, refused as soon as it would exceed the client's cap.
    pub async fn bytes(self) -> Result<Bytes, ClientError> {
        let limit = self.limit;
        self.bytes_capped(limit).await
    }

    /// The whole body, refused as soon as it would exceed `limit` bytes.
    pub async fn bytes_capped(mut self, limit: usize) -> Result<Bytes, ClientError> {
        if self.content_length().is_some_and(|len| len > limit as u64) {
            return Err(ClientError::TooLarge { limit });
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = self.chunk().await? {
            if body.len() + chunk.len() > limit {
                return Err(ClientError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 0-0/10"), Some((0..1, Some(10))));
        assert_eq!(parse_content_range("bytes 16384-32767/*"), Some((16384..32768, None)));
        let bad = ["bytes 5-4/10", "bytes -4/10", "items 0-1/2", "bytes 0-1", "bytes a-1/2"];
        for bad in bad.into_iter().chain(["bytes 0-10/10", "bytes 0-1/x"]) {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
        assert_eq!(parse_content_range(&format!("bytes 0-{}/*", u64::MAX)), None);
    }

    #[test]
    fn only_http_and_https_urls_with_a_host() {
        assert!(parse_url("http://127.0.0.1:80/a?b=%00").is_ok());
        assert!(parse_url("https://user@tracker.example/announce").is_ok());
        assert!(parse_url("http://[::1]:8080/").is_ok());
        for bad in ["udp://t:1/announce", "ftp://x/", "http://", "not a url", "file:///etc/passwd"]
        {
            assert!(matches!(parse_url(bad), Err(ClientError::InvalidUrl { .. })), "{bad}");
        }
    }

    #[test]
    fn a_percent_encoded_query_keeps_its_bytes() {
        let url = parse_url("http://t/a?info_hash=%00%FF-._~ab%2F%3F%26%3D%2B%25%7F%80").unwrap();
        assert_eq!(url.query(), Some("info_hash=%00%FF-._~ab%2F%3F%26%3D%2B%25%7F%80"));
    }
}
