//! Errors of the network layer, each naming the peer, address or file it concerns.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::identity::Fingerprint;

/// An error from identity handling, the pin store or the QUIC endpoint.
///
/// [`NetError::is_transient`] tells a caller whether trying the same peer
/// again later can succeed without anyone changing anything.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The group key cannot be used (it is empty).
    #[error("unusable group key: {why}")]
    GroupKey {
        /// What is wrong with it.
        why: String,
    },
    /// A host name that cannot be put in a node certificate.
    #[error("invalid host name {host:?}: {why}")]
    HostName {
        /// The name as given.
        host: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A filesystem error on a file of the state directory.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The node's private key file is unusable: unreadable, not a P-256 key,
    /// or readable by others.
    #[error("{}: {why}", path.display())]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The node key or pin file is not a regular file, too large, owned by
    /// another user, or others may read or change it.
    #[error(transparent)]
    UnsafeFile(#[from] crate::trusted::TrustError),
    /// Making a key or certificate, or setting up TLS, failed.
    #[error("cannot {what}: {why}")]
    Crypto {
        /// What was being done.
        what: &'static str,
        /// The library's message.
        why: String,
    },
    /// The pin file does not parse.
    #[error("{}:{line}: {why}", path.display())]
    PinFile {
        /// The pin file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        why: String,
    },
    /// A peer presented a node key other than the one pinned for it.
    #[error(
        "peer {host} presented node key {presented}, but {pinned} is pinned for it in {}; refusing it. \
         If {host} was reinstalled or its key replaced on purpose, accept the new key with \
         `snapsync trust --peer {host}`",
        path.display()
    )]
    PinMismatch {
        /// The peer's host name (from its certificate).
        host: String,
        /// The fingerprint on record.
        pinned: Fingerprint,
        /// The fingerprint the peer presented.
        presented: Fingerprint,
        /// The pin file.
        path: PathBuf,
    },
    /// The endpoint could not be started on this address.
    #[error("cannot listen on {addr}: {why}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The reason.
        why: String,
    },
    /// The TLS handshake was refused by one side: the certificate is not
    /// from this group's CA, names another host, or the protocols differ.
    #[error("{addr}: handshake failed{}: {reason}", expected_host.as_deref().map(|h| format!(" (expecting {h})")).unwrap_or_default())]
    Handshake {
        /// The peer's address.
        addr: SocketAddr,
        /// The host we expected to reach, when we were the client.
        expected_host: Option<String>,
        /// What went wrong, as far as TLS tells.
        reason: String,
    },
    /// The peer's certificate is valid but names another host than expected.
    #[error("{addr}: peer's certificate is for {presented:?}, expected {expected:?}")]
    HostMismatch {
        /// The peer's address.
        addr: SocketAddr,
        /// The host we meant to reach.
        expected: String,
        /// The host the certificate names.
        presented: String,
    },
    /// The peer's certificate chain validated but cannot be read as a node
    /// certificate.
    #[error("{addr}: unusable peer certificate: {why}")]
    BadCertificate {
        /// The peer's address.
        addr: SocketAddr,
        /// What is wrong with it.
        why: String,
    },
    /// A handshake or operation did not finish in time.
    #[error("{addr}: {what} timed out after {}", humantime::format_duration(*after))]
    Timeout {
        /// The peer's address.
        addr: SocketAddr,
        /// What timed out.
        what: &'static str,
        /// The bound that expired.
        after: Duration,
    },
    /// The connection broke: the peer went away, the idle timer expired,
    /// the path failed.
    #[error("{addr}: connection lost: {reason}")]
    ConnectionLost {
        /// The peer's address.
        addr: SocketAddr,
        /// What the transport said.
        reason: String,
    },
    /// The connection was closed by an application, with a code.
    #[error("{addr}: connection closed by {} with code {code}", if *by_peer { "the peer" } else { "us" })]
    Closed {
        /// The peer's address.
        addr: SocketAddr,
        /// The application close code; 0 is an orderly close.
        code: u64,
        /// Whether the peer closed it.
        by_peer: bool,
    },
    /// Handshakes kept failing faster than they are worth reporting one by
    /// one (a flood of connection attempts that never complete, as a rule):
    /// how many failed since the last report, and the latest of them.
    #[error(
        "{count} more handshakes failed in the last {} (reported together; the latest: {latest})",
        humantime::format_duration(*interval)
    )]
    HandshakesFailed {
        /// How many failed, the latest included.
        count: u64,
        /// The time they are summed over at most.
        interval: Duration,
        /// The latest failure.
        latest: Box<NetError>,
    },
    /// The local endpoint has shut down.
    #[error("endpoint on {addr} is closed")]
    EndpointClosed {
        /// The endpoint's address.
        addr: SocketAddr,
    },
}

impl NetError {
    /// Whether retrying later can succeed with nothing changed: a peer that
    /// is down, a timeout, a connection that broke or was closed in order.
    /// Bad keys, refused certificates, pin mismatches, host mismatches and
    /// local file problems are permanent: they need an operator.
    pub fn is_transient(&self) -> bool {
        match self {
            NetError::Timeout { .. } | NetError::ConnectionLost { .. } => true,
            NetError::HandshakesFailed { latest, .. } => latest.is_transient(),
            NetError::Closed { code, .. } => *code == 0,
            NetError::GroupKey { .. }
            | NetError::HostName { .. }
            | NetError::Io { .. }
            | NetError::KeyFile { .. }
            | NetError::UnsafeFile(_)
            | NetError::Crypto { .. }
            | NetError::PinFile { .. }
            | NetError::PinMismatch { .. }
            | NetError::Bind { .. }
            | NetError::Handshake { .. }
            | NetError::HostMismatch { .. }
            | NetError::BadCertificate { .. }
            | NetError::EndpointClosed { .. } => false,
        }
    }

    /// The peer's address, for errors about a connection.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        match self {
            NetError::Handshake { addr, .. }
            | NetError::HostMismatch { addr, .. }
            | NetError::BadCertificate { addr, .. }
            | NetError::Timeout { addr, .. }
            | NetError::ConnectionLost { addr, .. }
            | NetError::Closed { addr, .. } => Some(*addr),
            _ => None,
        }
    }

    /// What the refused peer is told when this host (`local`) refuses
    /// it: the peer's operator must not read this host's instruction
    /// (`snapsync trust --peer PEER`) as one to run there. For a pin
    /// mismatch it names where the command runs; other errors are told
    /// as they are.
    pub fn told_to_peer(&self, local: &str) -> String {
        match self {
            NetError::PinMismatch { host, pinned, presented, .. } => format!(
                "{local} has pinned an older node key for this host, {host} ({pinned}), and refuses the new \
                 one ({presented}). If {host} was reinstalled or its key replaced on purpose, accept the new \
                 key on {local}: run `snapsync trust --peer {host}` there, not here"
            ),
            other => other.to_string(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> NetError {
        NetError::Io { path: path.into(), source }
    }

    pub(crate) fn crypto(what: &'static str, why: impl std::fmt::Display) -> NetError {
        NetError::Crypto { what, why: why.to_string() }
    }
}

/// Turns the transport's reason for a closed connection into a [`NetError`].
///
/// A TLS alert (a QUIC CRYPTO_ERROR, codes 0x100-0x1ff, RFC 9001 §4.8) from
/// either side means a refused handshake; the handshake or idle timer
/// expiring is a timeout; everything else is a lost connection. `tls_reason`
/// is the TLS library's own message when this side refused.
pub(crate) fn from_connection_error(
    addr: SocketAddr,
    err: &s2n_quic::connection::Error,
    expected_host: Option<&str>,
    tls_reason: Option<&str>,
) -> NetError {
    use s2n_quic::connection::Error as E;
    match err {
        E::Transport { code, initiator, .. } if (0x100..0x200).contains(&code.as_u64()) => NetError::Handshake {
            addr,
            expected_host: expected_host.map(str::to_owned),
            reason: match (tls_reason, initiator) {
                (Some(r), _) => r.to_owned(),
                (None, s2n_quic::provider::event::Location::Remote) => format!("the peer refused it ({err})"),
                (None, _) => err.to_string(),
            },
        },
        E::MaxHandshakeDurationExceeded { max_handshake_duration, .. } => {
            NetError::Timeout { addr, what: "handshake", after: *max_handshake_duration }
        }
        E::Application { error, initiator, .. } => NetError::Closed {
            addr,
            code: u64::from(*error),
            by_peer: matches!(initiator, s2n_quic::provider::event::Location::Remote),
        },
        E::Closed { initiator, .. } => NetError::Closed {
            addr,
            code: 0,
            by_peer: matches!(initiator, s2n_quic::provider::event::Location::Remote),
        },
        _ => match tls_reason {
            // The TLS library refused, but the transport reports it generically.
            Some(r) => NetError::Handshake {
                addr,
                expected_host: expected_host.map(str::to_owned),
                reason: format!("{r} ({err})"),
            },
            None => NetError::ConnectionLost { addr, reason: err.to_string() },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:30865".parse().unwrap()
    }

    #[test]
    fn timeouts_and_lost_peers_are_transient() {
        assert!(NetError::Timeout { addr: addr(), what: "handshake", after: Duration::from_secs(10) }.is_transient());
        assert!(NetError::ConnectionLost { addr: addr(), reason: "idle".into() }.is_transient());
        assert!(NetError::Closed { addr: addr(), code: 0, by_peer: true }.is_transient());
    }

    #[test]
    fn refusals_and_bad_keys_are_permanent() {
        let fp = Fingerprint::from_bytes([1; 32]);
        let pin = NetError::PinMismatch {
            host: "b".into(),
            pinned: fp,
            presented: Fingerprint::from_bytes([2; 32]),
            path: "/s/net/pins".into(),
        };
        assert!(!pin.is_transient());
        assert!(pin.to_string().contains("snapsync trust --peer b"), "{pin}");
        // What b is told when a refuses it: the command runs on a.
        let told = pin.told_to_peer("a");
        assert!(told.starts_with("a has pinned an older node key for this host, b ("), "{told}");
        assert!(told.contains("on a: run `snapsync trust --peer b` there, not here"), "{told}");
        assert!(!NetError::Handshake { addr: addr(), expected_host: None, reason: "x".into() }.is_transient());
        assert!(!NetError::GroupKey { why: "empty".into() }.is_transient());
        assert!(!NetError::Closed { addr: addr(), code: 7, by_peer: true }.is_transient());
        assert!(!NetError::HostMismatch { addr: addr(), expected: "y".into(), presented: "x".into() }.is_transient());
    }
}
