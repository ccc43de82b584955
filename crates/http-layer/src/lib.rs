//! Swarmcast's one HTTP layer: every HTTP server of the project (tracker, origin, edge, router,
//! web player) runs on [`HttpServer`], and every HTTP client on the shared client.
//!
//! Layout:
//! - `server.rs`: [`HttpServer`] owns the accept loop (mini-redis's `Listener`): a semaphore caps
//!   connections, accept errors back off, a shutdown future stops it gracefully. Each connection
//!   is served by hyper's HTTP/1.1 machinery with a header-read timeout, a header size cap, a
//!   keep-alive idle timeout, a send-stall timeout and a request-body timeout
//!   ([`ServerConfig`]). When the server is full, the oldest connection with no request in
//!   flight is closed to make room, so clients that never finish a request cannot lock out one
//!   that does.
//! - `client.rs`: [`HttpClient`], reqwest over rustls with ring (never aws-lc-rs), HTTP/1.1,
//!   with connect, read and total timeouts, no redirects, no proxy and a response size cap; it
//!   speaks `https://` as well as `http://`.
//!
//! Why hyper and not axum: the servers already are hyper services with their own bodies and
//! path rules (`stream::request_path`, the origin's Range handling); axum would add a router and
//! extractors none of them use, and `axum::serve` has no connection cap, header timeout or
//! eviction, so the accept loop would be ours either way.

mod client;
mod server;

pub use client::{parse_content_range, parse_url, ClientConfig, ClientError, Fetched, HttpClient};
pub use server::{BodyTimedOut, HttpServer, OpenConnections, RequestBody, ServerConfig};
