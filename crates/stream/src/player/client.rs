//! The player's HTTP client: a thin wrapper over the shared [`http_layer::HttpClient`]
//! (`http://` and `https://`, one kept-alive connection per host; dropping a response half-read
//! closes its connection, which is how a download is abandoned) with a patience that changes per
//! request, and the MPD fetch (capped, redirects followed).

use std::time::Duration;

use http_layer::{ClientConfig, ClientError, Fetched};
use hyper::{header, StatusCode};

use crate::mpd::{resolve_url, Mpd, MpdError, MAX_MPD_BYTES};

use super::error::PlayError;

/// Most redirects followed when fetching the MPD.
const MAX_REDIRECTS: usize = 5;
/// Wall time to open a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Wall time to wait for a response's head, or for the next bytes of its body.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one whole transfer may take, wall time (each wait is bounded by the patience).
const DOWNLOAD_LIMIT: Duration = Duration::from_secs(3600);

/// Why one request failed.
pub(super) enum Failure {
    /// Worth another replica: connection error, timeout, 5xx.
    Retry(String),
    /// Not: a 4xx, a refused size.
    Fatal(PlayError),
}

/// The player's HTTP client: the shared one, with a patience that changes per request.
pub(super) struct HttpClient {
    http: http_layer::HttpClient,
    /// How long to wait for a response or the next body bytes; `None`: [`IDLE_TIMEOUT`].
    pub(super) patience: Option<Duration>,
}

impl HttpClient {
    pub(super) fn new() -> Result<HttpClient, String> {
        let config = ClientConfig {
            connect_timeout: CONNECT_TIMEOUT,
            read_timeout: IDLE_TIMEOUT,
            // Patience bounds each wait; a slow trace may make a whole download long.
            total_timeout: DOWNLOAD_LIMIT,
            max_response_bytes: MAX_MPD_BYTES,
            user_agent: "Swarmcast/0.1 (swarmcast play)".to_owned(),
            idle_per_host: 1,
            ..ClientConfig::default()
        };
        let http = http_layer::HttpClient::new(config).map_err(|e| e.to_string())?;
        Ok(HttpClient { http, patience: None })
    }

    fn timeout(&self) -> Duration {
        self.patience.unwrap_or(IDLE_TIMEOUT)
    }

    /// Fetches and parses the MPD (capped at [`MAX_MPD_BYTES`]), following redirects; returns
    /// the final URL with it.
    pub(super) async fn fetch_mpd(&mut self, url: &str) -> Result<(String, Mpd), PlayError> {
        let mut url = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let response = self.get(&url).await.map_err(|f| match f {
                Failure::Retry(reason) => PlayError::Http { url: url.clone(), reason },
                Failure::Fatal(e) => e,
            })?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| PlayError::Http {
                        url: url.clone(),
                        reason: format!("HTTP {} without a Location", status.as_u16()),
                    })?
                    .to_string();
                url = resolve_url(&url, &location);
                continue;
            }
            if status != StatusCode::OK {
                return Err(PlayError::Status { url, status: status.as_u16() });
            }
            let body = match tokio::time::timeout(IDLE_TIMEOUT, response.bytes()).await {
                Err(_) => return Err(PlayError::Http { url, reason: "timed out".into() }),
                Ok(Err(ClientError::TooLarge { .. })) => {
                    return Err(PlayError::Mpd {
                        url,
                        source: MpdError::TooLarge(MAX_MPD_BYTES + 1),
                    });
                }
                Ok(Err(e)) => return Err(PlayError::Http { url, reason: e.to_string() }),
                Ok(Ok(body)) => body,
            };
            let mpd = Mpd::parse_bytes(&body)
                .map_err(|source| PlayError::Mpd { url: url.clone(), source })?;
            return Ok((url, mpd));
        }
        Err(PlayError::Http { url, reason: format!("more than {MAX_REDIRECTS} redirects") })
    }

    /// Sends a GET and returns the response head (the body is read by the caller).
    pub(super) async fn get(&mut self, url: &str) -> Result<Fetched, Failure> {
        self.send(url, None).await
    }

    /// [`HttpClient::get`] for the bytes `range` (a 206, or a 200 from a server that ignores
    /// Range).
    pub(super) async fn get_range(
        &mut self,
        url: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Fetched, Failure> {
        self.send(url, Some(range)).await
    }

    async fn send(
        &mut self,
        url: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Fetched, Failure> {
        if http_layer::parse_url(url).is_err() {
            return Err(Failure::Fatal(PlayError::InvalidUrl {
                url: url.to_string(),
                reason: "not an absolute http:// or https:// URL",
            }));
        }
        let patience = self.timeout();
        // A kept connection may have been closed by the server just as the request went out:
        // one more try (on a fresh connection, since the failed one left the pool).
        for last in [false, true] {
            let request = async {
                match &range {
                    Some(r) => self.http.get_range(url, r.clone()).await,
                    None => self.http.get(url).await,
                }
            };
            match tokio::time::timeout(patience, request).await {
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(e @ (ClientError::Http(_) | ClientError::Connect(_)))) if !last => {
                    tracing::debug!(url, error = %e, "request failed, trying once more");
                }
                Ok(Err(e)) => return Err(Failure::Retry(format!("{url}: {e}"))),
                Err(_) => {
                    return Err(Failure::Retry(format!("{url}: no response in {patience:?}")));
                }
            }
        }
        Err(Failure::Retry(format!("{url}: the connection closed")))
    }
}
