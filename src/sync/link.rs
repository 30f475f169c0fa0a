//! The sync layer's side of a session: who the peer is, and how a request
//! reaches it. Every wait on the peer is bounded ([`Deadlines`],
//! [`proto::REPLY_TIMEOUT`]).

use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::SyncError;
use crate::engine::ActionQueue;
use crate::net::{Stream, StreamOpener};
use crate::proto::{self, Deadlines, Message, ProtoError};

/// What one side of a session knows about the other.
pub struct Peer {
    /// The peer's host name, from its verified certificate.
    pub host: String,
    /// Groups this session may sync.
    pub groups: Vec<String>,
    /// Opens streams to the peer (to pull from it when it asks).
    pub opener: StreamOpener,
    /// The changes of the run this session belongs to, for the group's
    /// actions: the initiator's whole `sync`, or this one session on the
    /// side that accepted it.
    pub actions: Arc<ActionQueue>,
}

/// A stream of one exchange with a peer, every wait on it bounded.
pub type PeerStream = Deadlines<Stream>;

/// Opens a stream for a `kind` exchange, within [`proto::REPLY_TIMEOUT`]
/// (the peer grants streams as it finishes others).
pub async fn open(peer: &str, opener: &mut StreamOpener, kind: &str) -> Result<PeerStream, SyncError> {
    match tokio::time::timeout(proto::REPLY_TIMEOUT, opener.open_stream()).await {
        Ok(Ok(stream)) => Ok(Deadlines::new(stream, format!("answer to {kind}"), format!("{kind} request"))),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(SyncError::Proto {
            peer: peer.to_owned(),
            source: ProtoError::TimedOut(format!(
                "the peer granted no stream for a {kind} request within {}s",
                proto::REPLY_TIMEOUT.as_secs()
            )),
        }),
    }
}

/// Sends `msg` on a new stream and reads the first reply, checked. Every
/// wait is bounded, on the returned stream too (see [`Deadlines`]).
pub async fn request(peer: &str, opener: &mut StreamOpener, msg: &Message) -> Result<(PeerStream, Message), SyncError> {
    let proto_err = |source: ProtoError| SyncError::Proto { peer: peer.to_owned(), source };
    let mut stream = open(peer, opener, msg.kind()).await?;
    proto::write_frame(&mut stream, msg).await.map_err(proto_err)?;
    let reply = proto::read_frame(&mut stream).await.map_err(proto_err)?;
    reply.validate().map_err(proto_err)?;
    proto::check_reply(msg, &reply).map_err(proto_err)?;
    Ok((stream, reply))
}

/// Sends `msg` alone on a new stream, expecting no reply.
pub async fn send_only(peer: &str, opener: &mut StreamOpener, msg: &Message) -> Result<(), SyncError> {
    let mut stream = open(peer, opener, msg.kind()).await?;
    proto::write_frame(&mut stream, msg).await.map_err(|source| SyncError::Proto { peer: peer.to_owned(), source })?;
    let _ = stream.shutdown().await;
    Ok(())
}
