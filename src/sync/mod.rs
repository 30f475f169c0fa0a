//! Reconciling the trees of two hosts.
//!
//! Terms:
//! - The *local* host is the one running this code, the *remote* host its
//!   peer in one exchange; the *initiator* is the host that runs `sync`.
//!   Every decision is made from the local host's point of view, and the
//!   peer's decision about the same path is its mirror image.
//! - An entry's *state* on a host is *live* (it exists there, with its
//!   metadata and body) or *absent*: the host never saw it (no record) or
//!   saw it deleted (a *tombstone*, which keeps the deletion's version so
//!   the deletion can travel).
//! - A *version* is an entry record's version vector
//!   ([`crate::tree::Version`]): for each host that changed the entry,
//!   the counter of its latest change. Version `a` *dominates* `b` when it
//!   has seen every change `b` has; two versions are *equal* when each
//!   dominates the other, and *concurrent* when neither does. The *merged*
//!   version of two is their element-wise maximum.
//! - A *conflict* is two different states under concurrent versions:
//!   changes made on two hosts since they last agreed. It is *settled* by
//!   `snapsync force PATH` on one side (the path is then *forced*: its
//!   state as it was when force ran wins, with each peer until that peer
//!   holds it; see [`crate::store::Force`]) or by the group's `auto`
//!   policy; until then nothing is overwritten.
//! - A *receive-only* host (written in parentheses in the config, csync2's
//!   "slave") takes the group's states and never sends its own.
//!
//! - A *reconcile* of one group against one peer ([`reconcile`]): compare
//!   roots, walk down where the trees differ deciding each differing path
//!   (`walk.rs`), then apply what this node takes (`apply.rs`). The walk
//!   holds no writer token; the apply takes it for its local phases only
//!   (docs/design.md, "Concurrency and locking").
//!
//! [`decide`] is the per-entry decision and its documentation lists the
//! rules; [`resolve`] settles conflicts by the group's `auto` policy. The
//! layer below the sessions: it reaches the peer through [`Peer`] and
//! [`request`], and writes the trees only through [`crate::fs`].

mod apply;
mod decide;
mod error;
mod link;
mod roots;
mod walk;
mod wire;

pub(crate) use apply::{max_chunks, minimal};
pub use decide::{
    ConflictKind, Decision, Resolution, Side, agreed_version, decide, decide_receive_only, merged_version, resolve,
    settled_version,
};
pub use error::SyncError;
pub use link::{Peer, PeerStream, open, request, send_only};
pub use roots::{RootsAnswer, roots_of, roots_summary};
pub use walk::{ChangeReport, GroupReport, clear_conflicts, reconcile};
pub use wire::{from_wire, to_wire};
