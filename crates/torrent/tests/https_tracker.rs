//! Announces to an `https://` tracker: our tracker behind a TLS front whose certificate a test
//! CA signed. A client that trusts the CA gets peers; the process's shared client, which trusts
//! only the system's roots, refuses the certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http_layer::{ClientConfig, HttpClient};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use torrent::tracker::{self, AnnounceRequest, Event, TrackerConfig, TrackerError, TrackerServer};
use torrent::{InfoHash, PeerId};

const WAIT: Duration = Duration::from_secs(30);

/// A test CA and a certificate for 127.0.0.1 signed by it (with its key).
fn test_pki() -> Result<(CertificateDer<'static>, CertificateDer<'static>, PrivateKeyDer<'static>)>
{
    let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
    let ca_key = rcgen::KeyPair::generate_for(alg)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let ca = ca_params.self_signed(&ca_key)?;
    let leaf_key = rcgen::KeyPair::generate_for(alg)?;
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])?
        .signed_by(&leaf_key, &ca, &ca_key)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    Ok((ca.der().clone(), leaf.der().clone(), key))
}

/// Terminates TLS on a new loopback port and relays each connection to `backend`.
async fn tls_front(
    backend: SocketAddr,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<SocketAddr> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut plain) = TcpStream::connect(backend).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    Ok(addr)
}

fn request(id: u8, port: u16) -> AnnounceRequest {
    AnnounceRequest {
        info_hash: InfoHash([7; 20]),
        peer_id: PeerId([id; 20]),
        port,
        uploaded: 0,
        downloaded: 0,
        left: 1,
        event: Event::Started,
        num_want: 50,
    }
}

#[tokio::test]
async fn announces_to_an_https_tracker_whose_ca_it_trusts() -> Result<()> {
    let server = TrackerServer::bind("127.0.0.1:0".parse()?, TrackerConfig::default()).await?;
    let tracker_addr = server.local_addr();
    let _tracker = tokio::spawn(server.run());
    let (ca, leaf, key) = test_pki()?;
    let front = tls_front(tracker_addr, vec![leaf], key).await?;
    let url = format!("https://127.0.0.1:{}/announce", front.port());

    let client = HttpClient::new(ClientConfig { extra_roots: vec![ca], ..Default::default() })?;
    let first =
        tokio::time::timeout(WAIT, tracker::http::announce_with(&client, &url, &request(1, 6881)))
            .await
            .context("first announce hung")??;
    assert!(first.peers.is_empty(), "{first:?}");
    let second =
        tokio::time::timeout(WAIT, tracker::http::announce_with(&client, &url, &request(2, 6882)))
            .await
            .context("second announce hung")??;
    assert_eq!(second.peers, vec!["127.0.0.1:6881".parse::<SocketAddr>()?]);
    assert_eq!(second.leechers, Some(2));

    // The shared client does not know the test CA: the certificate is refused.
    match tracker::announce(&url, &request(3, 6883), WAIT).await {
        Err(TrackerError::Io(e)) => assert!(e.to_string().contains("certificate"), "{e}"),
        other => panic!("an untrusted certificate was accepted or failed oddly: {other:?}"),
    }
    Ok(())
}
