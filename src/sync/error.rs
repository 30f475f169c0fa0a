//! Why a reconcile, or a session with a peer, failed.

use crate::engine::EngineError;
use crate::net::NetError;
use crate::proto::ProtoError;

/// Why a session or reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The network failed, or the peer could not be authenticated.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The peer broke the protocol or answered with an error.
    #[error("peer {peer}: {source}")]
    Proto {
        /// The peer.
        peer: String,
        /// What went wrong.
        source: ProtoError,
    },
    /// The local engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The peer or the configuration does not allow it.
    #[error("{0}")]
    Refused(String),
    /// The peer's answers would take the reconcile over one of its bounds
    /// (`proto::limits`); nothing of it was applied.
    #[error("peer {peer}: {what}")]
    Limit {
        /// The peer.
        peer: String,
        /// What went over which limit.
        what: String,
    },
    /// The run's caller asked it to stop ([`crate::interrupt`]); what was
    /// applied before is recorded, the rest is left for the next run.
    #[error("interrupted: the sync was stopped before it finished")]
    Interrupted,
}

impl SyncError {
    /// Whether the run stopped because its caller asked it to: here, or
    /// in the check that ran first.
    pub fn is_interrupted(&self) -> bool {
        matches!(self, SyncError::Interrupted | SyncError::Engine(EngineError::Interrupted(_)))
    }
}

impl From<crate::store::StoreError> for SyncError {
    fn from(e: crate::store::StoreError) -> Self {
        SyncError::Engine(EngineError::Store(e))
    }
}
