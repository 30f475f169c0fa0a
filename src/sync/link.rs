//! The sync layer's side of a session: who the peer is, and how a request
//! reaches it. Every wait on the peer is bounded ([`Deadlines`],
//! [`proto::REPLY_TIMEOUT`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::AsyncWriteExt;

use super::SyncError;
use crate::engine::ActionQueue;
use crate::net::{Stream, StreamOpener};
use crate::progress::{ProgressTask, Reporter};
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
    /// Where this node's side reports its work: the run's caller on the
    /// initiator, nowhere on the side that accepted the session.
    pub progress: Reporter,
    /// While the peer pulls from this node at its request ([`Peer::sending`]),
    /// the chunks served to it count there.
    sending: std::sync::Mutex<Option<Arc<dyn ProgressTask>>>,
    /// On the side that accepted the session: the initiator ended a run
    /// with `Done` and has not started the next one. `None` on the
    /// initiator's side, which is never told.
    run_over: Option<AtomicBool>,
}

impl Peer {
    /// The other side of a session with `host`, which may sync `groups`.
    pub fn new(
        host: String,
        groups: Vec<String>,
        opener: StreamOpener,
        actions: Arc<ActionQueue>,
        progress: Reporter,
    ) -> Self {
        Peer { host, groups, opener, actions, progress, sending: std::sync::Mutex::new(None), run_over: None }
    }

    /// The initiator of a session this node accepted: its pulls' changes
    /// go to an action queue of the session's own, run at each `Done`
    /// and when the session ends.
    pub fn accepted(host: String, groups: Vec<String>, opener: StreamOpener) -> Self {
        Peer {
            run_over: Some(AtomicBool::new(false)),
            ..Peer::new(host, groups, opener, Arc::default(), Reporter::default())
        }
    }

    /// Notes the initiator's `Done`; false on the initiator's side, where
    /// the peer may not end a run.
    pub fn end_run(&self) -> bool {
        self.run_over.as_ref().inspect(|r| r.store(true, Ordering::SeqCst)).is_some()
    }

    /// Whether a run ended since the last call: the request at hand starts
    /// a new one.
    pub fn starts_run(&self) -> bool {
        self.run_over.as_ref().is_some_and(|r| r.swap(false, Ordering::SeqCst))
    }

    /// Counts what this node serves the peer in `task` until the returned
    /// guard is dropped (while a pull this node asked for runs).
    pub fn sending(&self, task: Box<dyn ProgressTask>) -> Sending<'_> {
        *self.sending.lock().expect("poisoned") = Some(Arc::from(task));
        Sending(self)
    }

    /// Counts `bytes` served to the peer.
    pub fn sent(&self, bytes: u64) {
        if let Some(task) = &*self.sending.lock().expect("poisoned") {
            task.inc(bytes);
        }
    }
}

/// Ends the count of [`Peer::sending`] when dropped.
pub struct Sending<'a>(&'a Peer);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.0.sending.lock().expect("poisoned").take();
    }
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
