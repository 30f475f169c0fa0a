//! What the QUIC endpoint tells us about each handshake, through s2n-quic's
//! event subscriber: the peer's leaf certificate, a TLS exporter value, and
//! why a handshake failed.
//!
//! s2n-quic hands the application a connection only once its handshake is
//! complete, and never hands it a failed one; the subscriber is the one
//! place that sees both, so the server can report refused peers from
//! `accept()` and the client can wait for the server's confirmation.

use std::net::SocketAddr;

use s2n_quic::provider::event::{ConnectionInfo, ConnectionMeta, Subscriber, events};
use tokio::sync::{mpsc, watch};

use super::NetError;
use super::error::from_connection_error;
use super::limiter::{Admission, InFlight};

/// TLS exporter label (RFC 8446 §7.5) for [`super::Connection::channel_binding`].
pub const CHANNEL_BINDING_LABEL: &[u8] = b"EXPORTER-snapsync-channel-binding-v1";

/// Where a connection's handshake is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Still going.
    Handshaking,
    /// Complete and confirmed (RFC 9001 §4.1.2): both sides accepted each other.
    Confirmed,
    /// Failed or closed before it was confirmed.
    Failed,
}

/// Per-connection record kept by s2n-quic and read back with
/// `query_event_context`.
pub(crate) struct ConnRecord {
    remote: Option<SocketAddr>,
    /// The peer's leaf certificate, DER, once TLS has verified its chain.
    pub(crate) leaf: Option<Vec<u8>>,
    /// The exporter value under [`CHANNEL_BINDING_LABEL`].
    pub(crate) binding: Option<[u8; 32]>,
    /// TLS's own message when this side refused the handshake.
    tls_error: Option<String>,
    pub(crate) progress: watch::Sender<Progress>,
    /// Counts this connection's handshake as in flight (server side) until
    /// it is confirmed or the connection is gone.
    in_flight: Option<InFlight>,
}

/// The subscriber installed on every endpoint.
pub(crate) struct Observer {
    /// Where failed handshakes are reported; bounded, and full means a flood
    /// of refused peers whose reports are dropped.
    failures: mpsc::Sender<NetError>,
    /// The host a client endpoint expects, for its error messages.
    expected_host: Option<String>,
    /// A server's count of handshakes in flight.
    admission: Option<Admission>,
}

/// Reports kept waiting for `accept()` at most; more are dropped (with a
/// debug log line) so a peer hammering with bad certificates cannot grow
/// memory.
pub(crate) const FAILURE_BACKLOG: usize = 64;

impl Observer {
    pub(crate) fn new(
        expected_host: Option<String>,
        admission: Option<Admission>,
    ) -> (Observer, mpsc::Receiver<NetError>) {
        let (tx, rx) = mpsc::channel(FAILURE_BACKLOG);
        (Observer { failures: tx, expected_host, admission }, rx)
    }
}

impl Subscriber for Observer {
    type ConnectionContext = ConnRecord;

    fn create_connection_context(&mut self, _meta: &ConnectionMeta, _info: &ConnectionInfo) -> ConnRecord {
        ConnRecord {
            remote: None,
            leaf: None,
            binding: None,
            tls_error: None,
            progress: watch::Sender::new(Progress::Handshaking),
            in_flight: None,
        }
    }

    fn on_connection_started(
        &mut self,
        context: &mut ConnRecord,
        _meta: &ConnectionMeta,
        event: &events::ConnectionStarted,
    ) {
        let remote = SocketAddr::from(&event.path.remote_addr);
        context.remote = Some(remote);
        context.in_flight = self.admission.as_ref().map(|a| a.started(remote));
    }

    fn on_tls_exporter_ready(
        &mut self,
        context: &mut ConnRecord,
        _meta: &ConnectionMeta,
        event: &events::TlsExporterReady,
    ) {
        // `peer_cert_chain_der` is marked unstable in s2n-quic, but it is
        // the only way to learn which certificate the peer authenticated
        // with; s2n-quic is pinned to one version in Cargo.toml, and the
        // endpoint tests fail loudly if this stops returning the leaf.
        context.leaf = event.session.peer_cert_chain_der().ok().and_then(|chain| chain.into_iter().next());
        let mut binding = [0u8; 32];
        if event.session.tls_exporter(CHANNEL_BINDING_LABEL, b"", &mut binding).is_ok() {
            context.binding = Some(binding);
        }
    }

    fn on_tls_handshake_failed(
        &mut self,
        context: &mut ConnRecord,
        _meta: &ConnectionMeta,
        event: &events::TlsHandshakeFailed,
    ) {
        context.tls_error = Some(event.error.to_string());
    }

    fn on_handshake_status_updated(
        &mut self,
        context: &mut ConnRecord,
        _meta: &ConnectionMeta,
        event: &events::HandshakeStatusUpdated,
    ) {
        if matches!(event.status, events::HandshakeStatus::Confirmed { .. }) {
            context.progress.send_replace(Progress::Confirmed);
            context.in_flight = None;
        }
    }

    fn on_connection_closed(
        &mut self,
        context: &mut ConnRecord,
        _meta: &ConnectionMeta,
        event: &events::ConnectionClosed,
    ) {
        context.in_flight = None;
        if *context.progress.borrow() != Progress::Handshaking {
            return;
        }
        context.progress.send_replace(Progress::Failed);
        let addr = context.remote.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let err =
            from_connection_error(addr, &event.error, self.expected_host.as_deref(), context.tls_error.as_deref());
        if self.failures.try_send(err).is_err() {
            tracing::debug!(peer = %addr, "handshake failure not reported: backlog full");
        }
    }
}
