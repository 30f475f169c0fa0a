//! Conflicts found by reconciling, and paths forced to win one.
//!
//! A *conflict* is kept per group, path and peer until a later reconcile
//! with that peer finds the path settled (or the two trees equal). A
//! *forced* path (`snapsync force PATH`) wins its next conflict; the mark
//! is dropped once it has.

use serde::{Deserialize, Serialize};

use super::EntryRecord;
use crate::tree::Timestamp;

/// One unresolved conflict with one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The group.
    pub group: String,
    /// The logical path.
    pub path: Vec<u8>,
    /// The peer holding the other side.
    pub peer: String,
    /// What kind of conflict (`modified on both sides`, ...).
    pub kind: String,
    /// The local side when it was found (`None`: never seen here).
    pub local: Option<EntryRecord>,
    /// The peer's side when it was found.
    pub remote: Option<EntryRecord>,
    /// When it was last found.
    pub time: Timestamp,
}

pub(super) const CONFLICT_PREFIX: &[u8] = b"conflict\0";
pub(super) const FORCE_PREFIX: &[u8] = b"force\0";

/// `PREFIX group NUL path NUL`: every key of one path starts with it.
pub(super) fn path_key(prefix: &[u8], group: &str, path: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + group.len() + path.len() + 2);
    k.extend_from_slice(prefix);
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k.extend_from_slice(path);
    k.push(0);
    k
}

/// The key of a conflict: its path key and the peer.
pub(super) fn conflict_key(group: &str, path: &[u8], peer: &str) -> Vec<u8> {
    let mut k = path_key(CONFLICT_PREFIX, group, path);
    k.extend_from_slice(peer.as_bytes());
    k
}
