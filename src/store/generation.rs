//! Generations: recorded states of a group's tree.
//!
//! A generation is small: it names the group's root set at one moment,
//! and every node, content and chunk below it is shared with the live tree
//! and the other generations through their hashes. Ids are global to the
//! node and increase, so `restore --generation N` needs no group name.

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkRef;
use crate::tree::{RootSet, Timestamp};

/// One recorded state of one group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    /// Increasing id, unique on this node.
    pub id: u64,
    /// The group it belongs to.
    pub group: String,
    /// When it was recorded.
    pub time: Timestamp,
    /// Why: `local scan`, `before restore`, `restore of generation N`, or
    /// (from a sync) `from PEER`.
    pub cause: String,
    /// The tree: the group's roots and what they held.
    pub roots: RootSet,
    /// The chunk lists of roots that are files (empty for other roots),
    /// in the order of `roots`: nodes carry their files' chunk lists in
    /// manifests, roots have no node to hang them on.
    pub root_chunks: Vec<Vec<ChunkRef>>,
    /// Number of entries (files, directories, links) in the tree.
    pub entries: u64,
    /// Logical size: the sum of the sizes of its files.
    pub bytes: u64,
    /// Stored bytes of the chunks this generation added to the store.
    pub added_bytes: u64,
}
