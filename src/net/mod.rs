//! The network layer: QUIC endpoints and the identities nodes prove to
//! each other.
//!
//! Terms:
//!
//! - **Group key**: the shared secret of a group, the csync2 key file
//!   ([`crate::key`]). Holding it is what makes a host a member.
//! - **Group CA**: a certificate authority whose P-256 private key is derived
//!   from the group key alone (BLAKE3 `derive_key` with the context
//!   [`identity::CA_KEY_CONTEXT`], over a counter and the key, read as a
//!   scalar; see [`GroupCa::derive`]). Every member computes the same CA and
//!   trusts nothing else; no CA file is distributed, and a host without the
//!   key cannot sign a certificate the others accept.
//! - **Node key**: a P-256 key pair each node generates once, kept in
//!   `STATE_DIR/net/node-key.pem` (mode 0600). It never leaves the node.
//! - **Node certificate**: the node key's public half with the node's host
//!   name (the only DNS name in it), signed by the group CA by the node
//!   itself; kept in `STATE_DIR/net/node-cert-ID.pem`, re-issued when the
//!   host name or the group key changes. It is the node's TLS certificate as
//!   server and as client.
//! - **Fingerprint**: SHA-256 of a node certificate's public key
//!   (SubjectPublicKeyInfo), written `sha256:HEX`.
//! - **Pin**: the fingerprint recorded for a peer host the first time it was
//!   seen, in `STATE_DIR/net/pins`. A later connection from that host with
//!   another key is refused until an operator accepts it with
//!   `snapsync trust --peer HOST`.
//!
//! A connection is QUIC (s2n-quic) with TLS 1.3, ALPN [`ALPN`], mutual
//! authentication: each side presents its node certificate and verifies the
//! other's chain against the group CA; the client also requires the
//! certificate to name exactly the host it meant to reach. The server
//! learns the client's host from the client's certificate only. Membership
//! in the group's host list, pins and receive-only rules are checked by the
//! caller on the authenticated [`Connection`], with [`Pins`].
//!
//! Handshakes are bounded by [`HANDSHAKE_TIMEOUT`], idle connections by
//! [`IDLE_TIMEOUT`]. What anyone who can send a datagram can make a server
//! hold is bounded too: at most [`MAX_HANDSHAKES`] handshakes in flight
//! ([`MAX_HANDSHAKES_PER_SOURCE`] from one address), address validation
//! (Retry) above [`RETRY_ABOVE`] ([`RETRY_ABOVE_PER_SOURCE`]), and failed
//! handshakes reported once per [`REPORT_INTERVAL`] while they keep coming.
//! A connection carries at most [`MAX_STREAMS`] streams each way at a time
//! and [`DATA_WINDOW`] of unread data; each stream holds at most
//! [`SEND_BUFFER`] written but not yet acknowledged. Errors are [`NetError`]s, each
//! transient (retry later) or permanent (needs an operator):
//! [`NetError::is_transient`].

mod endpoint;
mod error;
mod files;
mod handshake;
pub mod identity;
mod limiter;
pub mod pins;

#[cfg(test)]
mod tests;

pub use endpoint::{
    ALPN, CLOSE_INTERRUPTED, CLOSE_REFUSED, Connection, DATA_WINDOW, DEFAULT_PORT, HANDSHAKE_TIMEOUT, IDLE_TIMEOUT,
    MAX_STREAMS, SEND_BUFFER, Server, Stream, StreamAcceptor, StreamOpener, connect,
};
pub use error::NetError;
pub use files::NET_DIR;
pub use handshake::CHANNEL_BINDING_LABEL;
pub use identity::{Fingerprint, GroupCa, NodeIdentity, PeerCertificate};
pub use limiter::{MAX_HANDSHAKES, MAX_HANDSHAKES_PER_SOURCE, REPORT_INTERVAL, RETRY_ABOVE, RETRY_ABOVE_PER_SOURCE};
pub use pins::{PinCheck, Pins};
