//! Talking to peers: sessions, and serving their requests.
//!
//! Terms:
//! - A *session* is one authenticated connection between two nodes. Both
//!   ends serve the other's requests (`server.rs`) for as long as it lasts;
//!   the end that opened it (the *initiator*) drives the reconciles
//!   ([`crate::sync::reconcile`]): for each group, it asks the peer to
//!   reconcile against it (`Pull`), then reconciles against the peer, over
//!   the same connection. A session serves one run of the initiator, or
//!   for a daemon several: between them it waits in [`KeptSessions`]
//!   (`kept.rs`).
//!
//! A peer never holds the node up (SPEC §6): every wait on it is bounded
//! ([`crate::proto::Deadlines`], [`crate::proto::REPLY_TIMEOUT`]); the
//! writer token is never held across a wait on the network (see
//! [`crate::sync`]); a long `Pull` is kept alive by `Progress` frames, not
//! by QUIC keep-alives; and when a session ends, the requests being served
//! for it are cancelled, and a pull running for it stops at its next wait
//! on the network. What a reconcile keeps of a peer's answers is bounded
//! too ([`crate::proto::MAX_DIR_ENTRIES`], [`crate::proto::MAX_PLAN_BYTES`]).
//!
//! docs/protocol.md describes the messages and the rules; this module and
//! [`crate::sync`] are their implementation.

mod cpu;
mod kept;
mod peek;
mod server;
mod session;

pub use crate::node::{Node, Stats};
pub use crate::sync::{ChangeReport, GroupReport, SyncError};
pub use cpu::COMPRESS_ENV;
pub use kept::KeptSessions;
pub use peek::{DiffReport, MAX_PEEK_BYTES, PeekSide, PeerPeek, diff};
pub use server::PAUSE_ENV;
pub use session::{Fresh, PeerReport, SyncOptions, SyncReport, accept_session, resolve, sync};

use std::sync::Arc;

use crate::net::{NodeIdentity, Pins};

impl Node {
    /// The node's pins.
    pub fn pins(&self) -> Result<Pins, SyncError> {
        Ok(Pins::open(self.state_dir())?)
    }

    /// The node's identity in group `gi`: its key file's identity.
    pub fn identity(&self, gi: usize) -> Result<Arc<NodeIdentity>, SyncError> {
        let group = &self.engine.groups[gi];
        let key_path = group.key.clone().ok_or_else(|| {
            SyncError::Refused(format!("group {} has no key file: it cannot sync with peers", group.name))
        })?;
        let mut ids = self.identities.lock().expect("poisoned");
        if let Some(id) = ids.get(&key_path) {
            return Ok(Arc::clone(id));
        }
        // A key file that cannot be read is a configuration error, whichever
        // command meets it first (exit status 2).
        let key = crate::key::read(&key_path).map_err(|source| {
            SyncError::Engine(crate::engine::EngineError::Key { group: group.name.clone(), source })
        })?;
        let id = Arc::new(NodeIdentity::load_or_create(self.state_dir(), &self.engine.host, &key)?);
        ids.insert(key_path, Arc::clone(&id));
        Ok(id)
    }

    /// Groups `peer` may sync with this node over a connection made with
    /// the identity of group `via` (same key file), among `wanted`.
    pub(crate) fn shared_groups(&self, peer: &str, via: usize, wanted: &[String]) -> Vec<String> {
        let key = &self.engine.groups[via].key;
        self.engine
            .groups
            .iter()
            .filter(|g| g.key == *key && g.host(peer).is_some() && wanted.contains(&g.name))
            .map(|g| g.name.clone())
            .collect()
    }
}
