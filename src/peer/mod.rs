//! Talking to peers: serving their requests and reconciling with them.
//!
//! Terms:
//! - A [`Node`] is one opened node shared by every task of a process: the
//!   engine (configuration, state, chunk stores), the node's identities
//!   (one per group key) and its pins. Whatever writes the state holds the
//!   store's writer token ([`crate::store::Writer`]), so a daemon serving
//!   several peers and local commands at once still has exactly one
//!   writer.
//! - A *session* is one authenticated connection between two nodes. Both
//!   ends serve the other's requests (`server.rs`) for as long as it lasts;
//!   the end that opened it (the *initiator*) drives the reconcile.
//! - A *reconcile* of one group against one peer (`reconcile.rs`): compare
//!   roots, descend where the trees differ, decide each differing path,
//!   then pull what this node takes. To give the peer what this node has
//!   newer, the initiator asks it to reconcile against the initiator in
//!   turn (`Pull`), over the same connection.
//!
//! A peer never holds the node up (SPEC §6): every wait on it is bounded
//! ([`crate::proto::Deadlines`], [`crate::proto::REPLY_TIMEOUT`]); the
//! writer lock is never held across a wait on the network (a reconcile
//! decides from the state as it reads it, and takes the lock only for its
//! local steps); a long `Pull` is kept alive by `Progress` frames, not by
//! QUIC keep-alives; and when a session ends, the requests being served
//! for it are cancelled, and a pull running for it stops at its next wait
//! on the network. What a reconcile keeps of a peer's answers is bounded
//! too ([`crate::proto::MAX_DIR_ENTRIES`], [`crate::proto::MAX_PLAN_BYTES`]).
//!
//! docs/protocol.md describes the messages and the rules; this module is
//! their implementation.

mod apply;
mod reconcile;
mod server;
mod session;

pub use reconcile::{ChangeReport, GroupReport};
pub use session::{PeerReport, SyncOptions, SyncReport, accept_session, resolve, sync};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::{Engine, EngineError};
use crate::net::{NetError, NodeIdentity, Pins};
use crate::proto::ProtoError;
use crate::store::Writer;

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
}

impl From<crate::store::StoreError> for SyncError {
    fn from(e: crate::store::StoreError) -> Self {
        SyncError::Engine(EngineError::Store(e))
    }
}

/// Counters a node keeps about what it served and did; `status --json`
/// and the tests read them.
#[derive(Debug, Default)]
pub struct Stats {
    /// `GetRoots` requests answered.
    pub roots_served: AtomicU64,
    /// `GetDir` requests answered.
    pub dirs_served: AtomicU64,
    /// Chunks sent to peers.
    pub chunks_served: AtomicU64,
    /// Chunks received from peers.
    pub chunks_received: AtomicU64,
    /// Bytes of chunk data received (stored form).
    pub bytes_received: AtomicU64,
}

impl Stats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "roots_served": get(&self.roots_served),
            "dirs_served": get(&self.dirs_served),
            "chunks_served": get(&self.chunks_served),
            "chunks_received": get(&self.chunks_received),
            "bytes_received": get(&self.bytes_received),
        })
    }
}

/// One opened node, shared by the tasks of a process.
pub struct Node {
    /// The engine: configuration, state and chunk stores.
    pub engine: Engine,
    /// Where the node's state lives.
    state_dir: PathBuf,
    /// Identities by group key file, made on first use.
    identities: std::sync::Mutex<HashMap<PathBuf, Arc<NodeIdentity>>>,
    /// What this node served and received.
    pub stats: Stats,
    /// Chunks encoded for peers lately.
    encoded: server::EncodedCache,
    /// One per peer and group: a peer's pulls of one group run one at a
    /// time, so a peer that asks for many at once gets one reconcile's
    /// worth of this node's memory, not many.
    pulls: std::sync::Mutex<HashMap<(String, String), PullLock>>,
}

/// Serializes one peer's pulls of one group.
type PullLock = Arc<tokio::sync::Mutex<()>>;

impl Node {
    /// Wraps an opened engine whose state is in `state_dir`.
    pub fn new(engine: Engine, state_dir: &Path) -> Node {
        Node {
            engine,
            state_dir: state_dir.to_path_buf(),
            identities: std::sync::Mutex::default(),
            stats: Stats::default(),
            encoded: server::EncodedCache::default(),
            pulls: std::sync::Mutex::default(),
        }
    }

    /// The lock that serializes `peer`'s pulls of `group`.
    pub(crate) fn pull_lock(&self, peer: &str, group: &str) -> PullLock {
        let mut pulls = self.pulls.lock().expect("poisoned");
        Arc::clone(pulls.entry((peer.to_owned(), group.to_owned())).or_default())
    }

    /// The node's state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The node's pins.
    pub fn pins(&self) -> Result<Pins, SyncError> {
        Ok(Pins::open(&self.state_dir)?)
    }

    /// Holds the state's writer token ([`Writer`]) while `f` runs on a
    /// blocking thread.
    pub(crate) async fn write_locked<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Node, &Writer) -> T + Send + 'static,
    ) -> T {
        let w = self.engine.store.writer().await;
        let node = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&node, &w)).await.expect("blocking task panicked")
    }

    /// Holds the state's writer token while `f` runs on this thread, which
    /// must not be a runtime worker (a local command's blocking thread).
    pub fn write_blocking<T>(&self, f: impl FnOnce(&Node, &Writer) -> T) -> T {
        let w = self.engine.store.writer_blocking();
        f(self, &w)
    }

    /// Waits (at most `limit`) until nothing writes the state, and keeps
    /// new writers out until the process ends. False if it timed out.
    pub async fn quiesce(&self, limit: std::time::Duration) -> bool {
        match tokio::time::timeout(limit, self.engine.store.writer()).await {
            Ok(w) => {
                std::mem::forget(w);
                true
            }
            Err(_) => false,
        }
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
        let key = crate::key::read(&key_path).map_err(|e| SyncError::Refused(format!("group {}: {e}", group.name)))?;
        let id = Arc::new(NodeIdentity::load_or_create(&self.state_dir, &self.engine.host, &key)?);
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
