//! The overlay's anchors as given on the command line (`--anchor HOST:PORT`), resolved.

use std::net::SocketAddr;

use anyhow::{Context, Result};

/// The address of each `HOST:PORT` in `anchors`; one that does not resolve is an error naming it
/// (an anchor is the one way in, so a typo must not go unnoticed).
pub async fn resolve(anchors: &[String]) -> Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for a in anchors {
        let addr = tokio::net::lookup_host(a.as_str())
            .await
            .with_context(|| format!("cannot resolve anchor {a:?}; give it as HOST:PORT"))?
            .next()
            .with_context(|| format!("anchor {a:?} resolves to no address"))?;
        out.push(addr);
    }
    Ok(out)
}
