//! The QUIC endpoint: a server that accepts group members and a client that
//! reaches one, both authenticating with their node certificates (TLS 1.3,
//! mutual) against the group CA.
//!
//! Both need a Tokio runtime: s2n-quic runs each endpoint as tasks on it.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use s2n_quic::provider::limits::Limits;
use s2n_quic::provider::tls::default as tls;
use tls::callbacks::VerifyHostNameCallback;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::NetError;
use super::error::from_connection_error;
use super::handshake::{ConnRecord, Observer, Progress};
use super::identity::{Fingerprint, NodeIdentity, PeerCertificate, check_host};
use super::limiter::{Admission, AttemptLimiter, ReportThrottle, TokenProvider};

/// The ALPN protocol identifier (RFC 7301). A peer that does not offer it
/// is refused in the handshake; a new wire protocol gets a new identifier.
pub const ALPN: &[u8] = b"snapsync/1";

/// Default UDP port (SPEC §6).
pub const DEFAULT_PORT: u16 = 30865;

/// Longest a handshake may take before the attempt is abandoned.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection with no traffic for this long is closed by either side.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `connect` waits, after the transport reports a failed
/// handshake, for the failure's detailed report. It is normally already
/// there (both come from the same close), but the observer runs on
/// another task: on a machine at load 25, 1 s was once not enough, and
/// the error lost the reason (`net::tests::a_certificate_for_x_cannot_claim_y`).
/// The wait ends as soon as the report comes.
const REPORT_WAIT: Duration = Duration::from_secs(3);

/// Application close code: the peer's identity was refused (certificate
/// unreadable, another host than expected, pin mismatch).
pub const CLOSE_REFUSED: u32 = 1;

/// Application close code: the run this session belonged to was stopped
/// by its caller (Ctrl-C on the command).
pub const CLOSE_INTERRUPTED: u32 = 2;

/// A bidirectional stream: `tokio::io::AsyncRead + AsyncWrite`.
pub type Stream = s2n_quic::stream::BidirectionalStream;

/// The server side verifies that a client's chain leads to the group CA;
/// which host the client is comes from its certificate afterwards. s2n-tls
/// refuses every client certificate unless a callback accepts its name.
struct AnyGroupMember;

impl VerifyHostNameCallback for AnyGroupMember {
    fn verify_host_name(&self, _host_name: &str) -> bool {
        true
    }
}

/// The client side accepts only the host it meant to reach (held in
/// canonical form), compared without regard to case: a peer whose
/// certificate spells its name in upper case is still that host.
struct ExpectHost(String);

impl VerifyHostNameCallback for ExpectHost {
    fn verify_host_name(&self, host_name: &str) -> bool {
        crate::config::canonical_host(host_name) == self.0
    }
}

/// Most bidirectional streams a peer may have open on one connection at
/// a time (and most this side opens).
///
/// The peer protocol needs few: a session's busiest moment is one `Pull`
/// waiting for its answer (opened by one side) while the other side
/// fetches chunks on `PARALLEL_REQUESTS` (4) streams and pages a listing
/// or a chunk list on one more; 8 leaves room for streams still closing.
/// Each stream a peer opens is served with up to one frame
/// (`proto::MAX_FRAME`, 4 MiB) and its decoding budget
/// (`proto::MAX_DECODED_LISTS`, 16 MiB) in memory, so this bounds what one
/// connection can make the node hold for requests at 8 × 20 MiB. A peer
/// that opens more waits for earlier ones to close (QUIC stream limits,
/// RFC 9000 §4.6).
pub const MAX_STREAMS: u64 = 8;

/// Flow-control windows: how much a peer may send before this side has
/// read it, per connection and per stream. QUIC buffers at most this much
/// received data per connection. 4 MiB keeps a 1 Gbit/s link busy at up to
/// 30 ms round trip (and a 10 Gbit/s LAN at 3 ms); it is s2n-quic's own
/// default (3.75 MB) rounded, set here so the bound is ours.
pub const DATA_WINDOW: u64 = 4 * 1024 * 1024;

/// The most data one stream holds written but not yet acknowledged by the
/// peer. s2n-quic's default is 4 MiB a stream: a daemon answering two
/// peers' chunk requests on four streams each held 36 MiB of chunk frames
/// in these buffers, the largest part of its peak. 512 KiB a stream still
/// keeps the four fetch streams of a peer (2 MiB in flight together) ahead
/// of a 1 Gbit/s link at 15 ms round trip, and loopback at full speed (a
/// first sync of 20k files to two peers took as long as with 1 MiB, and
/// the sender's peak fell by 4-8 MiB).
pub const SEND_BUFFER: u32 = 512 * 1024;

fn limits() -> Result<Limits, NetError> {
    Limits::new()
        .with_max_handshake_duration(HANDSHAKE_TIMEOUT)
        .and_then(|l| l.with_max_idle_timeout(IDLE_TIMEOUT))
        .and_then(|l| l.with_max_open_remote_bidirectional_streams(MAX_STREAMS))
        .and_then(|l| l.with_max_open_local_bidirectional_streams(MAX_STREAMS))
        // The protocol uses no unidirectional streams: a peer may open none.
        .and_then(|l| l.with_max_open_remote_unidirectional_streams(0))
        .and_then(|l| l.with_data_window(DATA_WINDOW))
        .and_then(|l| l.with_bidirectional_local_data_window(DATA_WINDOW))
        .and_then(|l| l.with_bidirectional_remote_data_window(DATA_WINDOW))
        .and_then(|l| l.with_max_send_buffer_size(SEND_BUFFER))
        .map_err(|e| NetError::crypto("set QUIC limits", e))
}

/// A listening endpoint.
///
/// What strangers can make it hold is bounded: a few
/// hundred handshakes in flight at most, address validation (Retry) under
/// load, and failed handshakes reported at most once per
/// [`super::REPORT_INTERVAL`] after the first.
pub struct Server {
    inner: s2n_quic::Server,
    local_addr: SocketAddr,
    failures: mpsc::Receiver<NetError>,
    reports: ReportThrottle,
}

impl Server {
    /// Listens on `addr` (port 0 picks a free port) as `identity`. Call it
    /// from within a Tokio runtime: the endpoint runs as tasks on it.
    pub fn bind(addr: SocketAddr, identity: &NodeIdentity) -> Result<Server, NetError> {
        let tls = tls::Server::builder()
            .with_empty_trust_store()
            .and_then(|b| b.with_trusted_certificate(identity.group_ca().certificate_pem()))
            .and_then(|b| b.with_certificate(identity.certificate_pem(), identity.key_pem()))
            .and_then(|b| b.with_client_authentication())
            .and_then(|b| b.with_verify_host_name_callback(AnyGroupMember))
            .and_then(|b| b.with_application_protocols([ALPN]))
            .and_then(|b| b.build())
            .map_err(|e| NetError::crypto("set up TLS", e))?;
        let admission = Admission::default();
        let (observer, failures) = Observer::new(None, Some(admission.clone()));
        let fail = |why: String| NetError::Bind { addr, why };
        let inner = s2n_quic::Server::builder()
            .with_tls(tls)
            .map_err(|e| fail(e.to_string()))?
            .with_endpoint_limits(AttemptLimiter::new(admission.clone()))
            .map_err(|e| fail(e.to_string()))?
            .with_address_token(TokenProvider(admission))
            .map_err(|e| fail(e.to_string()))?
            .with_io(io(addr, SERVER_RECEIVE_QUEUE).map_err(|e| fail(e.to_string()))?)
            .map_err(|e| fail(e.to_string()))?
            .with_limits(limits()?)
            .map_err(|e| fail(e.to_string()))?
            .with_event(observer)
            .map_err(|e| fail(e.to_string()))?
            .start()
            .map_err(|e| fail(e.to_string()))?;
        let local_addr = inner.local_addr().map_err(|e| fail(e.to_string()))?;
        Ok(Server { inner, local_addr, failures, reports: ReportThrottle::default() })
    }

    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next authenticated connection, or the next refused one as an
    /// error ([`NetError::Handshake`], [`NetError::Timeout`], ...) naming the
    /// peer's address. Keep calling after errors; only
    /// [`NetError::EndpointClosed`] ends the stream.
    ///
    /// Failed handshakes are reported one by one only while they are rare:
    /// after one, those of the next [`super::REPORT_INTERVAL`] come as one
    /// [`NetError::HandshakesFailed`] with their count, when it has passed.
    ///
    /// The returned connection's peer is a holder of the group key that
    /// authenticated as [`Connection::peer_host`]; whether that host is
    /// listed in the group, and whether its pin matches, is the caller's
    /// decision.
    ///
    /// Cancel-safe: it can lose a `select!` (against a shutdown signal, say)
    /// without losing a connection.
    pub async fn accept(&mut self) -> Result<Connection, NetError> {
        loop {
            let due = self.reports.due();
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    if let Some(summary) = self.reports.flush(Instant::now()) {
                        return Err(summary);
                    }
                }
                Some(failure) = self.failures.recv() => {
                    if let Some(report) = self.reports.admit(failure, Instant::now()) {
                        return Err(report);
                    }
                }
                conn = self.inner.accept() => {
                    let conn = conn.ok_or(NetError::EndpointClosed { addr: self.local_addr })?;
                    let addr = conn.remote_addr().map_err(|e| from_connection_error(self.local_addr, &e, None, None))?;
                    return admit(conn, addr, None);
                }
            }
        }
    }
}

/// The largest IP packet a connection probes for. Paths that carry only
/// 1500 bytes (most) stay there; loopback and jumbo-frame LANs, where
/// clusters often live, get six times fewer packets for the same data.
const MAX_MTU: u16 = 9001;

/// The receive queue of an endpoint, between its socket and its
/// connections. s2n-quic's default, 8 MiB, is allocated for every
/// endpoint and filled as datagrams arrive: zeroing it for the client
/// endpoint each connection gets was 7% of the CPU of a no-change sync
/// with two peers, and the daemon's server endpoint kept all 8 MiB
/// resident. 1 MiB is 16 batches of received datagrams, enough to take a
/// peer's data at full speed on loopback; the server, which takes every
/// peer's data at once, gets 2 MiB.
const CLIENT_RECEIVE_QUEUE: usize = 1 << 20;
const SERVER_RECEIVE_QUEUE: usize = 2 << 20;

/// The UDP socket of an endpoint bound to `addr`, with a receive queue of
/// `receive_queue` bytes.
fn io(addr: SocketAddr, receive_queue: usize) -> std::io::Result<s2n_quic::provider::io::tokio::Provider> {
    s2n_quic::provider::io::tokio::Builder::default()
        .with_receive_address(addr)?
        .with_max_mtu(MAX_MTU)?
        .with_internal_recv_buffer_size(receive_queue)?
        .build()
}

/// Connects to `addr` as `identity`, expecting the peer's certificate to be
/// for `expected_peer_host`. Returns once the server has confirmed the
/// handshake, so a connection returned here was accepted by both sides.
/// Whether the peer's key matches its pin is the caller's check
/// ([`super::Pins::check`] with [`Connection::peer_fingerprint`]).
pub async fn connect(
    addr: SocketAddr,
    expected_peer_host: &str,
    identity: &NodeIdentity,
) -> Result<Connection, NetError> {
    check_host(expected_peer_host)?;
    let expected_peer_host: &str = &crate::config::canonical_host(expected_peer_host);
    let tls = tls::Client::builder()
        .with_empty_trust_store()
        .and_then(|b| b.with_certificate(identity.group_ca().certificate_pem()))
        .and_then(|b| b.with_client_identity(identity.certificate_pem(), identity.key_pem()))
        .and_then(|b| b.with_verify_host_name_callback(ExpectHost(expected_peer_host.to_owned())))
        .and_then(|b| b.with_application_protocols([ALPN]))
        .and_then(|b| b.build())
        .map_err(|e| NetError::crypto("set up TLS", e))?;
    let (observer, mut failures) = Observer::new(Some(expected_peer_host.to_owned()), None);
    // One client endpoint per connection: each gets the TLS configuration
    // that expects its own peer, and a cluster has tens of peers, not
    // thousands.
    let local: SocketAddr =
        if addr.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let fail = |why: String| NetError::Bind { addr: local, why };
    let mut client = s2n_quic::Client::builder()
        .with_tls(tls)
        .map_err(|e| fail(e.to_string()))?
        .with_io(io(local, CLIENT_RECEIVE_QUEUE).map_err(|e| fail(e.to_string()))?)
        .map_err(|e| fail(e.to_string()))?
        .with_limits(limits()?)
        .map_err(|e| fail(e.to_string()))?
        .with_event(observer)
        .map_err(|e| fail(e.to_string()))?
        .start()
        .map_err(|e| fail(e.to_string()))?;

    let attempt = client.connect(s2n_quic::client::Connect::new(addr).with_server_name(expected_peer_host));
    // s2n-quic enforces HANDSHAKE_TIMEOUT itself; this bound only guards
    // against the attempt never resolving.
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT + Duration::from_secs(2), attempt).await {
        Err(_) => return Err(NetError::Timeout { addr, what: "handshake", after: HANDSHAKE_TIMEOUT }),
        Ok(Err(e)) => {
            let fallback = from_connection_error(addr, &e, Some(expected_peer_host), None);
            let failure = reported(&mut failures).await.unwrap_or(fallback);
            flush_close(&mut client).await;
            return Err(failure);
        }
        Ok(Ok(conn)) => conn,
    };

    // The client's TLS handshake completes before the server has checked
    // the client's certificate; wait for the server's HANDSHAKE_DONE.
    let lost = |why: String| NetError::ConnectionLost { addr, reason: why };
    let mut progress = conn
        .query_event_context(|r: &ConnRecord| r.progress.subscribe())
        .map_err(|e| lost(format!("connection state unavailable: {e}")))?;
    let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, progress.wait_for(|p| *p != Progress::Handshaking)).await;
    match outcome.map(|r| r.map(|p| p.clone())) {
        Err(_) => return Err(NetError::Timeout { addr, what: "handshake confirmation", after: HANDSHAKE_TIMEOUT }),
        Ok(Ok(Progress::Confirmed)) => {}
        Ok(_) => {
            let fallback = lost("closed during the handshake".into());
            let failure = reported(&mut failures).await.unwrap_or(fallback);
            drop(conn);
            flush_close(&mut client).await;
            return Err(failure);
        }
    }

    let conn = admit(conn, addr, Some(Arc::new(client)))?;
    if conn.peer.host != expected_peer_host {
        // The host-name callback has already refused this in the handshake;
        // checked again so no path depends on TLS library behaviour alone.
        conn.close(CLOSE_REFUSED);
        return Err(NetError::HostMismatch {
            addr,
            expected: expected_peer_host.to_owned(),
            presented: conn.peer.host.clone(),
        });
    }
    Ok(conn)
}

/// How long a failed connect waits for its endpoint to send the close
/// (with the TLS alert that says why) before the endpoint is dropped.
/// Without it the refused side may never hear the refusal and waits out
/// its handshake timeout, then logs a timeout instead of the reason.
const CLOSE_FLUSH: Duration = Duration::from_millis(500);

/// Lets a client endpoint whose connection failed send its close packet.
async fn flush_close(client: &mut s2n_quic::Client) {
    let _ = tokio::time::timeout(CLOSE_FLUSH, client.wait_idle()).await;
}

/// The failure the endpoint's observer reported for this attempt, if any.
async fn reported(failures: &mut mpsc::Receiver<NetError>) -> Option<NetError> {
    tokio::time::timeout(REPORT_WAIT, failures.recv()).await.ok().flatten()
}

/// Reads the verified peer's identity from a connection whose handshake is
/// complete; closes the connection if it cannot.
fn admit(
    conn: s2n_quic::Connection,
    addr: SocketAddr,
    endpoint: Option<Arc<s2n_quic::Client>>,
) -> Result<Connection, NetError> {
    let record = conn.query_event_context(|r: &ConnRecord| (r.leaf.clone(), r.binding));
    let refuse = |why: String| {
        conn.close(CLOSE_REFUSED.into());
        NetError::BadCertificate { addr, why }
    };
    let (leaf, binding) = match record {
        Ok((Some(leaf), Some(binding))) => (leaf, binding),
        Ok((None, _)) => return Err(refuse("TLS reported no peer certificate".into())),
        Ok((_, None)) => return Err(refuse("no TLS exporter value".into())),
        Err(e) => return Err(NetError::ConnectionLost { addr, reason: format!("connection state unavailable: {e}") }),
    };
    let peer = PeerCertificate::from_der(&leaf).map_err(refuse)?;
    Ok(Connection { inner: conn, peer, remote_addr: addr, binding, endpoint })
}

/// An authenticated connection to a group member.
pub struct Connection {
    inner: s2n_quic::Connection,
    peer: PeerCertificate,
    remote_addr: SocketAddr,
    binding: [u8; 32],
    /// Keeps a client's endpoint running for as long as its connection.
    endpoint: Option<Arc<s2n_quic::Client>>,
}

impl Connection {
    /// The peer's host name, from its verified certificate.
    pub fn peer_host(&self) -> &str {
        &self.peer.host
    }

    /// The fingerprint of the peer's node key, for the pin store.
    pub fn peer_fingerprint(&self) -> Fingerprint {
        self.peer.fingerprint
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote_addr
    }

    /// A value both ends of this TLS session compute identically and no one
    /// else can (the TLS exporter under
    /// [`super::CHANNEL_BINDING_LABEL`], RFC 8446 §7.5): a
    /// protocol can bind an extra proof to this very connection with it.
    pub fn channel_binding(&self) -> [u8; 32] {
        self.binding
    }

    /// Opens a bidirectional stream. The peer sees it when the first bytes
    /// arrive.
    pub async fn open_stream(&mut self) -> Result<Stream, NetError> {
        let addr = self.remote_addr;
        self.inner.open_bidirectional_stream().await.map_err(|e| from_connection_error(addr, &e, None, None))
    }

    /// The next stream the peer opened; `None` once the connection has been
    /// closed in order.
    pub async fn accept_stream(&mut self) -> Result<Option<Stream>, NetError> {
        let addr = self.remote_addr;
        ordered_end(self.inner.accept_bidirectional_stream().await, addr)
    }

    /// Keeps an idle connection open with PING frames (off by default: an
    /// idle connection closes after [`IDLE_TIMEOUT`]).
    pub fn keep_alive(&mut self, enabled: bool) -> Result<(), NetError> {
        let addr = self.remote_addr;
        self.inner.keep_alive(enabled).map_err(|e| from_connection_error(addr, &e, None, None))
    }

    /// Closes the connection with an application code (0: orderly), and
    /// every stream on it.
    pub fn close(&self, code: u32) {
        self.inner.close(code.into());
    }

    /// A handle that opens streams on this connection, or closes it, from
    /// another task.
    pub fn opener(&self) -> StreamOpener {
        StreamOpener { handle: self.inner.handle(), addr: self.remote_addr, _endpoint: self.endpoint.clone() }
    }

    /// Splits the connection so one task can open streams while another
    /// accepts them.
    pub fn split(self) -> (StreamOpener, StreamAcceptor) {
        let (handle, acceptor) = self.inner.split();
        let addr = self.remote_addr;
        (
            StreamOpener { handle, addr, _endpoint: self.endpoint.clone() },
            StreamAcceptor { acceptor, addr, _endpoint: self.endpoint },
        )
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer_host", &self.peer.host)
            .field("peer_fingerprint", &self.peer.fingerprint)
            .field("remote_addr", &self.remote_addr)
            .finish_non_exhaustive()
    }
}

/// An accepted stream, or `None` for a connection closed in order (code 0).
fn ordered_end(
    accepted: Result<Option<Stream>, s2n_quic::connection::Error>,
    addr: SocketAddr,
) -> Result<Option<Stream>, NetError> {
    match accepted {
        Ok(stream) => Ok(stream),
        Err(e) => match from_connection_error(addr, &e, None, None) {
            NetError::Closed { code: 0, .. } => Ok(None),
            other => Err(other),
        },
    }
}

/// The half of a split [`Connection`] that opens streams; clone it for
/// several tasks.
#[derive(Clone)]
pub struct StreamOpener {
    handle: s2n_quic::connection::Handle,
    addr: SocketAddr,
    _endpoint: Option<Arc<s2n_quic::Client>>,
}

impl StreamOpener {
    /// Opens a bidirectional stream.
    pub async fn open_stream(&mut self) -> Result<Stream, NetError> {
        let addr = self.addr;
        self.handle.open_bidirectional_stream().await.map_err(|e| from_connection_error(addr, &e, None, None))
    }

    /// Closes the whole connection with an application code.
    pub fn close(&self, code: u32) {
        self.handle.close(code.into());
    }
}

/// The half of a split [`Connection`] that accepts the peer's streams.
pub struct StreamAcceptor {
    acceptor: s2n_quic::connection::StreamAcceptor,
    addr: SocketAddr,
    _endpoint: Option<Arc<s2n_quic::Client>>,
}

impl StreamAcceptor {
    /// The next stream the peer opened; `None` once the connection has been
    /// closed in order.
    pub async fn accept_stream(&mut self) -> Result<Option<Stream>, NetError> {
        ordered_end(self.acceptor.accept_bidirectional_stream().await, self.addr)
    }
}
