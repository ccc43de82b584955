//! QUIC transport between overlay nodes: mutually authenticated connections carrying one ordered
//! stream of length-prefixed frames. Thin: no protocol logic lives here.
//!
//! # Authentication
//! Every node presents a self-signed X.509 certificate made from its own ed25519 key
//! ([`Identity`]); both sides require one (`client_auth_mandatory`) and check it with
//! [`PeerVerifier`]: exactly one certificate, whose SubjectPublicKeyInfo is an ed25519 key and
//! whose self-signature verifies, then the TLS 1.3 handshake signature against that key (TLS 1.2
//! is refused). The peer's [`NodeId`] is that key, so a connection proves who is at the other end.
//! Dialing with an expected id fails the handshake if the certificate carries another key. TLS
//! session resumption is off, so every handshake runs these checks.
//!
//! # Framing
//! The dialer opens ONE bidirectional stream right after the handshake and writes [`PREAMBLE`]
//! (QUIC announces a stream only once data flows); the acceptor accepts that stream and checks the
//! preamble. Frames are a u32 big-endian length then that many bytes, at most [`MAX_FRAME`]. A
//! longer length closes the connection with [`CLOSE_PROTOCOL_VIOLATION`] before anything of the
//! claimed size is allocated.
//!
//! # Bounded memory
//! A peer may open at most one bidirectional stream and no unidirectional ones, datagrams are
//! off, and the flow-control windows are small ([`STREAM_WINDOW`], [`CONNECTION_WINDOW`]), so a
//! peer that opens streams or sends garbage can make us buffer at most a few hundred KiB. Inbound
//! handshakes run concurrently but at most [`MAX_PENDING_HANDSHAKES`] at once (more are refused),
//! each bounded by [`HANDSHAKE_TIMEOUT`], and finished connections wait in a bounded queue for
//! [`Endpoint::accept`].
//!
//! # Liveness
//! Keep-alives every 2 s and an 8 s idle timeout: a neighbor that vanishes without closing is
//! detected, and its [`FrameReceiver::recv`] returns an error, between 8 and 10 s after its last
//! packet (QUIC restarts the idle timer when our first keep-alive after that packet goes out;
//! measured on loopback: 8.0 s or 10.0 s depending on where the keep-alive timer stood).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, ReadExactError, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::sync::{mpsc, Mutex, Semaphore};

use crate::identity::{Identity, NodeId};
pub use crate::wire::MAX_FRAME;

/// The ALPN protocol id both sides require.
pub const ALPN: &[u8] = b"swarmcast/1";
/// What the dialer writes first on the stream, so the acceptor sees the stream and knows the framing.
pub const PREAMBLE: &[u8; 4] = b"SWC\x01";
/// Application close code for an orderly close.
pub const CLOSE_NORMAL: u32 = 0;
/// Application close code for a peer that broke the framing (oversized frame, bad preamble).
pub const CLOSE_PROTOCOL_VIOLATION: u32 = 1;
/// How long [`Endpoint::connect`] waits for the handshake and the stream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an inbound connection may take from first packet to a checked preamble.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Keep-alive interval: well under the idle timeout so a live but quiet peer never times out.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// Idle timeout: a peer silent this long is considered dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(8);
/// Per-stream receive window: room for four full frames in flight.
pub const STREAM_WINDOW: u32 = 4 * MAX_FRAME as u32;
/// Per-connection receive window, over all streams.
pub const CONNECTION_WINDOW: u32 = 8 * MAX_FRAME as u32;
/// Inbound handshakes in progress (or finished and waiting for `accept`) at once.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// The SNI name the dialer sends. Certificates are checked by key, never by name.
const SERVER_NAME: &str = "swarmcast";
/// DER of an ed25519 SubjectPublicKeyInfo up to the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] =
    [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
/// DER of the ed25519 AlgorithmIdentifier (OID 1.3.101.112, no parameters).
const ED25519_ALG_ID: [u8; 7] = [0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];
/// DER of a PKCS#8 v1 PrivateKeyInfo for ed25519 up to the 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// TLS configuration failed (a bug or an unusable key).
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The dial could not start (e.g. the endpoint is closed or the address is invalid).
    #[error("cannot dial: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed.
    #[error("connection: {0}")]
    Connection(#[from] ConnectionError),
    /// A step did not finish in time.
    #[error("timed out while {0}")]
    Timeout(&'static str),
    /// The peer authenticated as another node than the one dialed.
    #[error("dialed {expected} but the peer is {found}")]
    WrongPeer {
        /// The id the caller expected.
        expected: NodeId,
        /// The id the peer proved.
        found: NodeId,
    },
    /// The peer's certificate could not be read after the handshake.
    #[error("peer certificate missing or not an ed25519 self-signed certificate")]
    BadCertificate,
    /// The acceptor saw a stream that did not start with [`PREAMBLE`].
    #[error("peer did not open the stream with the swarmcast preamble")]
    BadPreamble,
    /// Writing to the stream failed.
    #[error("send: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading from the stream failed.
    #[error("receive: {0}")]
    Read(#[from] quinn::ReadError),
    /// The stream was already finished or reset.
    #[error("stream closed: {0}")]
    ClosedStream(#[from] quinn::ClosedStream),
    /// A frame longer than [`MAX_FRAME`] was sent or announced.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// The frame's (announced) length.
        len: usize,
        /// [`MAX_FRAME`].
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame")]
    Truncated,
}

/// A QUIC endpoint that both dials and accepts, authenticated as one [`Identity`].
///
/// Create it inside a tokio runtime. Dropping it stops accepting; established [`Conn`]s live on.
pub struct Endpoint {
    inner: quinn::Endpoint,
    id: NodeId,
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    provider: Arc<CryptoProvider>,
    transport: Arc<quinn::TransportConfig>,
    /// Connections whose handshake and preamble completed, filled by the accept task.
    incoming: Mutex<mpsc::Receiver<Result<Conn, TransportError>>>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    /// Binds a UDP socket at `addr` and starts accepting connections.
    ///
    /// Must be called inside a tokio runtime.
    pub fn bind(identity: &Identity, addr: SocketAddr) -> Result<Endpoint, TransportError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = pkcs8_of(identity);
        let cert = self_signed_cert(&key)?;
        let transport = Arc::new(transport_config());

        let tls_err = |e: rustls::Error| TransportError::Tls(e.to_string());
        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(Arc::new(PeerVerifier::new(&provider, None)))
            .with_single_cert(vec![cert.clone()], PrivateKeyDer::Pkcs8(key.clone_key()))
            .map_err(tls_err)?;
        server_tls.alpn_protocols = vec![ALPN.to_vec()];
        server_tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server_tls.send_tls13_tickets = 0;
        let server_quic = QuicServerConfig::try_from(server_tls)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_quic));
        server
            .transport_config(transport.clone())
            .max_incoming(MAX_PENDING_HANDSHAKES)
            .incoming_buffer_size(64 * 1024)
            .incoming_buffer_size_total(4 * 1024 * 1024);

        let inner = quinn::Endpoint::server(server, addr)
            .map_err(|source| TransportError::Bind { addr, source })?;
        let (tx, rx) = mpsc::channel(MAX_PENDING_HANDSHAKES);
        let accept_task = tokio::spawn(accept_loop(inner.clone(), tx));
        Ok(Endpoint {
            inner,
            id: identity.id(),
            cert,
            key,
            provider,
            transport,
            incoming: Mutex::new(rx),
            accept_task,
        })
    }

    /// The address the socket is bound to (with the real port if 0 was asked for).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// This endpoint's node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Dials `addr`; if `expected` is given, the handshake fails unless the peer proves that id.
    /// Gives up after [`CONNECT_TIMEOUT`].
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected: Option<NodeId>,
    ) -> Result<Conn, TransportError> {
        let config = self.client_config(expected)?;
        let dial = async {
            let connection = self.inner.connect_with(config, addr, SERVER_NAME)?.await?;
            let remote_id = peer_id(&connection)?;
            if let Some(expected) = expected {
                // The verifier already enforced this; checked again so no path can skip it.
                if remote_id != expected {
                    connection.close(CLOSE_PROTOCOL_VIOLATION.into(), b"wrong peer");
                    return Err(TransportError::WrongPeer { expected, found: remote_id });
                }
            }
            let (mut send, recv) = connection.open_bi().await?;
            send.write_all(PREAMBLE).await?;
            Ok(Conn::new(connection, remote_id, send, recv))
        };
        tokio::time::timeout(CONNECT_TIMEOUT, dial)
            .await
            .map_err(|_| TransportError::Timeout("connecting"))?
    }

    /// The next inbound connection, authenticated and with its stream open; `Err` for an inbound
    /// attempt that failed (worth a log line, nothing more); `None` once the endpoint is closed.
    pub async fn accept(&self) -> Option<Result<Conn, TransportError>> {
        self.incoming.lock().await.recv().await
    }

    /// Closes every connection (code [`CLOSE_NORMAL`]) and stops accepting.
    pub fn close(&self) {
        self.inner.close(CLOSE_NORMAL.into(), b"endpoint closed");
    }

    /// Waits until every connection has finished closing, so the close reaches the peers.
    pub async fn wait_idle(&self) {
        self.inner.wait_idle().await;
    }

    fn client_config(
        &self,
        expected: Option<NodeId>,
    ) -> Result<quinn::ClientConfig, TransportError> {
        let tls_err = |e: rustls::Error| TransportError::Tls(e.to_string());
        let mut tls = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerVerifier::new(&self.provider, expected)))
            .with_client_auth_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .map_err(tls_err)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        tls.resumption = rustls::client::Resumption::disabled();
        let quic =
            QuicClientConfig::try_from(tls).map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(self.transport.clone());
        Ok(config)
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // The accept task holds a handle to the socket; without this it would accept forever.
        self.accept_task.abort();
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Takes inbound connections from quinn and completes each (handshake, stream, preamble) in its
/// own task, so a slow or silent peer cannot hold up the others.
async fn accept_loop(endpoint: quinn::Endpoint, tx: mpsc::Sender<Result<Conn, TransportError>>) {
    let slots = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(remote = %incoming.remote_address(), "refusing: too many handshakes");
            incoming.refuse();
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept_one(incoming))
                .await
                .unwrap_or(Err(TransportError::Timeout("accepting")));
            // The slot is held until the caller takes the connection: backpressure.
            let _ = tx.send(result).await;
            drop(slot);
        });
    }
}

async fn accept_one(incoming: quinn::Incoming) -> Result<Conn, TransportError> {
    let connection = incoming.await?;
    let remote_id = peer_id(&connection)?;
    let (send, mut recv) = connection.accept_bi().await?;
    let mut preamble = [0u8; 4];
    let read = recv.read_exact(&mut preamble).await;
    if read.is_err() || &preamble != PREAMBLE {
        connection.close(CLOSE_PROTOCOL_VIOLATION.into(), b"bad preamble");
        return Err(TransportError::BadPreamble);
    }
    Ok(Conn::new(connection, remote_id, send, recv))
}

fn transport_config() -> quinn::TransportConfig {
    let mut config = quinn::TransportConfig::default();
    config
        .keep_alive_interval(Some(KEEP_ALIVE))
        // Invariant: 8 s is far below the QUIC idle timeout's upper bound (2^62 ms).
        .max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("8 s fits a QUIC idle timeout")))
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(u64::from(CONNECTION_WINDOW))
        .datagram_receive_buffer_size(None);
    config
}

/// The identity's secret seed as a PKCS#8 v1 document (what rustls and rcgen load).
fn pkcs8_of(identity: &Identity) -> PrivatePkcs8KeyDer<'static> {
    let mut der = Vec::with_capacity(48);
    der.extend_from_slice(&ED25519_PKCS8_PREFIX);
    der.extend_from_slice(identity.signing_key().as_bytes());
    PrivatePkcs8KeyDer::from(der)
}

/// A self-signed certificate for the key in `key`.
fn self_signed_cert(
    key: &PrivatePkcs8KeyDer<'static>,
) -> Result<CertificateDer<'static>, TransportError> {
    let rcgen_err = |e: rcgen::Error| TransportError::Tls(e.to_string());
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(key, &rcgen::PKCS_ED25519)
        .map_err(rcgen_err)?;
    let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(rcgen_err)?;
    let cert = params.self_signed(&key_pair).map_err(rcgen_err)?;
    Ok(cert.der().clone())
}

/// The node id the peer proved in the handshake.
fn peer_id(connection: &quinn::Connection) -> Result<NodeId, TransportError> {
    let certs = connection
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(TransportError::BadCertificate)?;
    match certs.as_slice() {
        [cert] => node_id_of_cert(cert).ok_or(TransportError::BadCertificate),
        _ => Err(TransportError::BadCertificate),
    }
}

/// The node id in a self-signed ed25519 certificate, or `None` if `der` is not one (wrong key
/// type, malformed DER, signature that does not verify with its own key).
///
/// A minimal DER walk over `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm,
/// signatureValue }` and the first seven fields of `tbsCertificate`; every length is checked
/// against the bytes present, so hostile input cannot make it panic or allocate.
pub fn node_id_of_cert(der: &[u8]) -> Option<NodeId> {
    let (cert, rest) = der_tlv(der, 0x30)?;
    if !rest.is_empty() {
        return None;
    }
    let (tbs_value, after_tbs) = der_tlv(cert.value, 0x30)?;
    let tbs = &cert.value[..cert.value.len() - after_tbs.len()];
    let (alg, after_alg) = der_tlv(after_tbs, 0x30)?;
    let (sig, end) = der_tlv(after_alg, 0x03)?;
    if !end.is_empty() || alg.whole != ED25519_ALG_ID {
        return None;
    }
    // BIT STRING: zero unused bits, then the 64-byte signature.
    let sig: &[u8; 64] = sig.value.strip_prefix(&[0])?.try_into().ok()?;

    let mut fields = tbs_value.value;
    if fields.first() == Some(&0xa0) {
        fields = der_tlv(fields, 0xa0)?.1; // [0] version
    }
    fields = der_tlv(fields, 0x02)?.1; // serialNumber
    let (inner_alg, f) = der_tlv(fields, 0x30)?; // signature
    if inner_alg.whole != ED25519_ALG_ID {
        return None;
    }
    fields = der_tlv(f, 0x30)?.1; // issuer
    fields = der_tlv(fields, 0x30)?.1; // validity
    fields = der_tlv(fields, 0x30)?.1; // subject
    let (spki, _) = der_tlv(fields, 0x30)?;
    let key: [u8; 32] = spki.whole.strip_prefix(&ED25519_SPKI_PREFIX)?.try_into().ok()?;
    let id = NodeId(key);
    crate::identity::verify(&id, tbs, sig).then_some(id)
}

/// One DER element: its whole encoding and its contents.
struct Tlv<'a> {
    whole: &'a [u8],
    value: &'a [u8],
}

/// Reads one DER element with tag `tag` from the front of `input`; returns it and the rest.
/// Lengths up to 2 bytes long (64 KiB), which covers any certificate we accept.
fn der_tlv(input: &[u8], tag: u8) -> Option<(Tlv<'_>, &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81 => {
            let (&b, rest) = rest.split_first()?;
            (usize::from(b), rest)
        }
        0x82 => {
            let b = rest.get(..2)?;
            (usize::from(b[0]) << 8 | usize::from(b[1]), &rest[2..])
        }
        _ => return None,
    };
    let value = rest.get(..len)?;
    let header = input.len() - rest.len();
    Some((Tlv { whole: &input[..header + len], value }, &rest[len..]))
}

/// Accepts exactly one self-signed ed25519 certificate (optionally of one expected key) and checks
/// TLS 1.3 handshake signatures against it. Serves as both the client's and the server's verifier.
#[derive(Debug)]
struct PeerVerifier {
    expected: Option<NodeId>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PeerVerifier {
    fn new(provider: &CryptoProvider, expected: Option<NodeId>) -> PeerVerifier {
        PeerVerifier { expected, algorithms: provider.signature_verification_algorithms }
    }

    fn check_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
        }
        let id = node_id_of_cert(end_entity)
            .ok_or(rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        match self.expected {
            Some(expected) if expected != id => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(()),
        }
    }

    fn check_tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(rustls::Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ));
        }
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

fn no_tls12() -> rustls::Error {
    rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered)
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check_cert(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check_cert(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// An authenticated connection to one peer with its framed stream. Use [`Conn::send`] and
/// [`Conn::recv`] directly, or [`Conn::split`] it to read and write from different tasks.
#[derive(Debug)]
pub struct Conn {
    handle: ConnHandle,
    sender: FrameSender,
    receiver: FrameReceiver,
}

impl Conn {
    fn new(
        connection: quinn::Connection,
        remote_id: NodeId,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> Conn {
        Conn {
            handle: ConnHandle { connection: connection.clone(), remote_id },
            sender: FrameSender { stream: send },
            receiver: FrameReceiver { stream: recv, connection },
        }
    }

    /// The peer's authenticated node id.
    pub fn remote_id(&self) -> NodeId {
        self.handle.remote_id
    }

    /// The peer's UDP address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.handle.remote_addr()
    }

    /// A cloneable handle for closing or watching the connection.
    pub fn handle(&self) -> &ConnHandle {
        &self.handle
    }

    /// Closes the connection with [`CLOSE_NORMAL`] and `reason` (cut to 256 bytes).
    pub fn close(&self, reason: &str) {
        self.handle.close(reason);
    }

    /// Sends one frame; see [`FrameSender::send`].
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), TransportError> {
        self.sender.send(frame).await
    }

    /// Receives one frame; see [`FrameReceiver::recv`].
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        self.receiver.recv().await
    }

    /// Splits into a handle, the sending half and the receiving half.
    pub fn split(self) -> (ConnHandle, FrameSender, FrameReceiver) {
        (self.handle, self.sender, self.receiver)
    }
}

/// A cheap, cloneable handle on a connection: who the peer is, closing, and waiting for the end.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    connection: quinn::Connection,
    remote_id: NodeId,
}

impl ConnHandle {
    /// The peer's authenticated node id.
    pub fn remote_id(&self) -> NodeId {
        self.remote_id
    }

    /// The peer's UDP address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    /// The current round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.connection.rtt()
    }

    /// Closes the connection with [`CLOSE_NORMAL`] and `reason` (cut to 256 bytes).
    pub fn close(&self, reason: &str) {
        let reason = reason.as_bytes();
        self.connection.close(CLOSE_NORMAL.into(), &reason[..reason.len().min(256)]);
    }

    /// Waits until the connection is closed, for whatever reason, and returns why.
    pub async fn closed(&self) -> ConnectionError {
        self.connection.closed().await
    }
}

/// The sending half of a connection's framed stream.
#[derive(Debug)]
pub struct FrameSender {
    stream: quinn::SendStream,
}

impl FrameSender {
    /// Sends `frame` (u32 big-endian length, then the bytes). Frames arrive whole and in order.
    /// A frame longer than [`MAX_FRAME`] is refused without sending anything.
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), TransportError> {
        if frame.len() > MAX_FRAME {
            return Err(TransportError::FrameTooLarge { len: frame.len(), max: MAX_FRAME });
        }
        // Invariant: frame.len() <= MAX_FRAME < u32::MAX.
        let len = u32::try_from(frame.len()).expect("MAX_FRAME fits in u32");
        self.stream.write_all(&len.to_be_bytes()).await?;
        self.stream.write_all(frame).await?;
        Ok(())
    }

    /// Ends the stream cleanly: the peer's [`FrameReceiver::recv`] returns `Ok(None)` after the
    /// frames already sent.
    pub fn finish(&mut self) -> Result<(), TransportError> {
        self.stream.finish()?;
        Ok(())
    }
}

/// The receiving half of a connection's framed stream.
#[derive(Debug)]
pub struct FrameReceiver {
    stream: quinn::RecvStream,
    /// To close the connection when the peer breaks the framing.
    connection: quinn::Connection,
}

impl FrameReceiver {
    /// The next frame; `Ok(None)` when the peer finished the stream or closed the connection with
    /// [`CLOSE_NORMAL`] (or we closed it). A frame announced longer than [`MAX_FRAME`] closes the
    /// connection with [`CLOSE_PROTOCOL_VIOLATION`] and is an error; nothing of its claimed size
    /// is allocated. A lost connection (idle timeout, reset) is an error.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        let mut header = [0u8; 4];
        match self.stream.read_exact(&mut header).await {
            Ok(()) => {}
            Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
            Err(ReadExactError::FinishedEarly(_)) => return Err(TransportError::Truncated),
            Err(ReadExactError::ReadError(e)) => return end_of_stream(e),
        }
        let len = u32::from_be_bytes(header) as usize;
        if len > MAX_FRAME {
            self.connection.close(CLOSE_PROTOCOL_VIOLATION.into(), b"frame too large");
            return Err(TransportError::FrameTooLarge { len, max: MAX_FRAME });
        }
        let mut frame = vec![0u8; len];
        match self.stream.read_exact(&mut frame).await {
            Ok(()) => Ok(Some(frame)),
            Err(ReadExactError::FinishedEarly(_)) => Err(TransportError::Truncated),
            Err(ReadExactError::ReadError(e)) => {
                end_of_stream(e).and(Err(TransportError::Truncated))
            }
        }
    }
}

/// A read error between frames: an orderly close is the end of the stream, anything else an error.
fn end_of_stream(e: quinn::ReadError) -> Result<Option<Vec<u8>>, TransportError> {
    match e {
        quinn::ReadError::ConnectionLost(ConnectionError::ApplicationClosed(ref close))
            if close.error_code == VarInt::from_u32(CLOSE_NORMAL) =>
        {
            Ok(None)
        }
        quinn::ReadError::ConnectionLost(ConnectionError::LocallyClosed) => Ok(None),
        e => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn identity(seed: u64) -> Identity {
        Identity::generate(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed))
    }

    fn localhost() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    /// Two bound endpoints and a connection from `a` to `b`: (a, b, a's conn, b's conn).
    async fn pair() -> (Endpoint, Endpoint, Conn, Conn) {
        let a = Endpoint::bind(&identity(1), localhost()).unwrap();
        let b = Endpoint::bind(&identity(2), localhost()).unwrap();
        let b_addr = b.local_addr().unwrap();
        let (dialed, accepted) = tokio::join!(a.connect(b_addr, Some(b.id())), b.accept());
        (a, b, dialed.unwrap(), accepted.unwrap().unwrap())
    }

    #[test]
    fn own_certificate_yields_own_id() {
        let id = identity(7);
        let cert = self_signed_cert(&pkcs8_of(&id)).unwrap();
        assert_eq!(node_id_of_cert(&cert), Some(id.id()));
        // Any change to the signed part breaks the self-signature.
        let mut tampered = cert.to_vec();
        let last_of_tbs = tampered.len() - 80;
        tampered[last_of_tbs] ^= 1;
        assert_eq!(node_id_of_cert(&tampered), None);
        // Truncations and garbage are rejected, never a panic.
        for n in 0..cert.len() {
            assert_eq!(node_id_of_cert(&cert[..n]), None);
        }
        assert_eq!(node_id_of_cert(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }

    #[tokio::test]
    async fn connect_authenticates_both_sides_and_frames_flow_in_order() {
        let (a, b, mut ab, mut ba) = pair().await;
        assert_eq!(ab.remote_id(), b.id());
        assert_eq!(ba.remote_id(), a.id());
        assert_eq!(ab.remote_id(), identity(2).id());
        assert_eq!(ba.remote_addr(), a.local_addr().unwrap());

        let big = vec![0x5a; 60 * 1024];
        let frames: Vec<Vec<u8>> = vec![b"one".to_vec(), vec![], big.clone(), b"three".to_vec()];
        for f in &frames {
            ab.send(f).await.unwrap();
        }
        for f in &frames {
            assert_eq!(ba.recv().await.unwrap().as_deref(), Some(f.as_slice()));
        }
        ba.send(b"back").await.unwrap();
        ba.send(&big).await.unwrap();
        assert_eq!(ab.recv().await.unwrap().as_deref(), Some(&b"back"[..]));
        assert_eq!(ab.recv().await.unwrap(), Some(big));

        // Too large to send: refused locally, nothing sent.
        assert!(matches!(
            ab.send(&vec![0; MAX_FRAME + 1]).await,
            Err(TransportError::FrameTooLarge { len, max: MAX_FRAME }) if len == MAX_FRAME + 1
        ));

        // Finishing the stream ends the peer's receive cleanly.
        let (_handle, mut tx, _rx) = ab.split();
        tx.send(b"last").await.unwrap();
        tx.finish().unwrap();
        assert_eq!(ba.recv().await.unwrap().as_deref(), Some(&b"last"[..]));
        assert_eq!(ba.recv().await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversized_length_closes_the_connection() {
        let (_a, _b, ab, mut ba) = pair().await;
        let (handle, mut tx, _rx) = ab.split();
        tx.stream.write_all(&(MAX_FRAME as u32 + 1).to_be_bytes()).await.unwrap();
        tx.stream.write_all(&[0; 16]).await.unwrap();
        assert!(matches!(
            ba.recv().await,
            Err(TransportError::FrameTooLarge { len, max: MAX_FRAME }) if len == MAX_FRAME + 1
        ));
        match handle.closed().await {
            ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, VarInt::from_u32(CLOSE_PROTOCOL_VIOLATION));
            }
            other => panic!("expected an application close, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn dialing_with_wrong_expected_id_fails() {
        let a = Endpoint::bind(&identity(1), localhost()).unwrap();
        let b = Endpoint::bind(&identity(2), localhost()).unwrap();
        let wrong = identity(3).id();
        let (dialed, accepted) =
            tokio::join!(a.connect(b.local_addr().unwrap(), Some(wrong)), b.accept());
        match dialed {
            Err(TransportError::Connection(ConnectionError::TransportError(_))) => {}
            other => panic!("expected a handshake failure, got {other:?}"),
        }
        assert!(accepted.unwrap().is_err());
    }

    #[tokio::test]
    async fn peer_close_ends_recv_cleanly_and_endpoint_close_ends_accept() {
        let (a, b, ab, mut ba) = pair().await;
        ab.close("bye");
        assert_eq!(ba.recv().await.unwrap(), None);
        b.close();
        assert!(b.accept().await.is_none());
        b.wait_idle().await;
        a.close();
        a.wait_idle().await;
    }

    #[test]
    fn non_ed25519_certificate_is_rejected() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(node_id_of_cert(cert.der()), None);
        let verifier = PeerVerifier::new(&rustls::crypto::ring::default_provider(), None);
        assert!(verifier.check_cert(cert.der(), &[]).is_err());
    }

    #[tokio::test]
    async fn dialer_without_certificate_is_refused() {
        let b = Endpoint::bind(&identity(2), localhost()).unwrap();
        let a = Endpoint::bind(&identity(1), localhost()).unwrap();
        let provider = a.provider.clone();
        let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerVerifier::new(&provider, None)))
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
        let connecting =
            a.inner.connect_with(config, b.local_addr().unwrap(), SERVER_NAME).unwrap();
        let (dialed, accepted) = tokio::join!(
            async {
                // The client may finish its side before the server's refusal arrives.
                let connection = connecting.await?;
                Err::<(), _>(connection.closed().await)
            },
            b.accept()
        );
        assert!(dialed.is_err());
        assert!(matches!(accepted, Some(Err(TransportError::Connection(_)))), "{accepted:?}");
    }

    #[tokio::test]
    async fn bad_preamble_is_refused() {
        let a = Endpoint::bind(&identity(1), localhost()).unwrap();
        let b = Endpoint::bind(&identity(2), localhost()).unwrap();
        let config = a.client_config(None).unwrap();
        let connection = a
            .inner
            .connect_with(config, b.local_addr().unwrap(), SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let (mut send, _recv) = connection.open_bi().await.unwrap();
        send.write_all(b"HTTP").await.unwrap();
        assert!(matches!(b.accept().await, Some(Err(TransportError::BadPreamble))));
        match connection.closed().await {
            ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, VarInt::from_u32(CLOSE_PROTOCOL_VIOLATION));
            }
            other => panic!("expected an application close, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn stream_ending_mid_frame_is_truncated() {
        let (_a, _b, ab, mut ba) = pair().await;
        let (_handle, mut tx, _rx) = ab.split();
        tx.stream.write_all(&10u32.to_be_bytes()).await.unwrap();
        tx.stream.write_all(b"abc").await.unwrap();
        tx.finish().unwrap();
        assert!(matches!(ba.recv().await, Err(TransportError::Truncated)));
    }

    #[test]
    fn vanished_peer_is_detected_by_idle_timeout() {
        let server_rt = tokio::runtime::Runtime::new().unwrap();
        let b = server_rt.block_on(async { Endpoint::bind(&identity(2), localhost()).unwrap() });
        let b_addr = b.local_addr().unwrap();

        // The dialer lives on its own runtime, which is then shut down without closing anything:
        // its packets just stop, as when a machine loses power.
        // Multi-threaded so its tasks keep sending while this thread waits on the other runtime.
        let dialer_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (a, ab) = dialer_rt.block_on(async {
            let a = Endpoint::bind(&identity(1), localhost()).unwrap();
            let mut ab = a.connect(b_addr, None).await.unwrap();
            ab.send(b"hello").await.unwrap();
            (a, ab)
        });

        server_rt.block_on(async {
            let mut ba = b.accept().await.unwrap().unwrap();
            assert_eq!(ba.recv().await.unwrap().as_deref(), Some(&b"hello"[..]));
            dialer_rt.shutdown_background();
            // Keep the dialer's socket open but silent (no close packet, no ICMP).
            std::mem::forget((a, ab));
            let started = std::time::Instant::now();
            let end = tokio::time::timeout(Duration::from_secs(30), ba.recv())
                .await
                .expect("recv must end once the idle timeout passes");
            assert!(
                matches!(
                    end,
                    Err(TransportError::Read(quinn::ReadError::ConnectionLost(
                        ConnectionError::TimedOut
                    )))
                ),
                "{end:?}"
            );
            eprintln!("vanished peer detected after {:?}", started.elapsed());
        });
    }
}
