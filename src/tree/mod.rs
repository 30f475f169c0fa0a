//! Entries and the Merkle tree over them.
//!
//! Terms:
//! - An *entry* is one tracked filesystem object: a regular file, a
//!   directory or a symbolic link. Its [`Meta`] is what snapsync keeps
//!   identical across hosts (permission bits, owner, mtime) and its [`Body`]
//!   is what it holds (a file's size and content hash, a directory's tree
//!   hash, a link's target).
//! - A *node* is one directory's list of entries, sorted by name bytes. Its
//!   canonical encoding ([`Node::encode`]) is hashed in its own BLAKE3 domain
//!   to give the directory's *tree hash*, which a parent directory's entry
//!   carries. Equal trees therefore have equal hashes whatever order they
//!   were scanned in, and two hosts find what differs by descending only
//!   into entries whose hashes differ.
//! - A *root set* ([`RootSet`]) lists the include roots of one group, each
//!   by its logical path (the include as written in the config, before
//!   `%prefix%` expansion) with the entry found there, or none. Its hash is
//!   the group's root hash.
//!
//! What the hash covers, and why: directory and symlink mtimes are left out
//! (a directory's mtime moves whenever a child is written, and Linux cannot
//! set a link's mtime portably), as are owner or mode where the group says
//! `ignore uid|gid|mod`. Version information used for reconciling is not
//! part of the tree either: the same change made on two hosts must give the
//! same tree.

mod encode;
mod version;

pub use encode::{MAX_NAME_LEN, TreeError, validate_name};
pub use version::{CREATION_CONTEXT, Version};

/// The logical path of `name` in directory `parent` (`name` alone for an
/// include root, whose parent is the empty path).
pub fn join_logical(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        return name.to_vec();
    }
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    p.extend_from_slice(parent);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

use serde::{Deserialize, Serialize};

use crate::hash::Hash;

/// BLAKE3 `derive_key` context for directory nodes.
const NODE_CONTEXT: &str = "snapsync 2026-11 tree node v1";
/// BLAKE3 `derive_key` context for root sets.
const ROOT_CONTEXT: &str = "snapsync 2026-11 group root v1";

/// A point in time with nanosecond resolution, as `stat` reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp {
    /// Seconds since the Unix epoch (negative before it).
    pub secs: i64,
    /// Nanoseconds within the second, below 1e9.
    pub nanos: u32,
}

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Self::from_system(std::time::SystemTime::now())
    }

    /// Converts a `SystemTime`, saturating outside the representable range.
    pub fn from_system(t: std::time::SystemTime) -> Self {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Timestamp { secs: d.as_secs() as i64, nanos: d.subsec_nanos() },
            Err(e) => {
                let d = e.duration();
                let (mut secs, mut nanos) = (-(d.as_secs() as i64), d.subsec_nanos());
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                Timestamp { secs, nanos }
            }
        }
    }

    /// Converts to a `SystemTime`.
    pub fn to_system(self) -> std::time::SystemTime {
        let base = std::time::UNIX_EPOCH;
        if self.secs >= 0 {
            base + std::time::Duration::new(self.secs as u64, self.nanos)
        } else {
            base - std::time::Duration::from_secs(self.secs.unsigned_abs())
                + std::time::Duration::from_nanos(u64::from(self.nanos))
        }
    }
}

/// What kind of filesystem object an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
}

impl Kind {
    /// A short lower-case name for listings and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
        }
    }
}

/// What an entry holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A regular file: its length and the hash of its chunk list.
    File {
        /// Length in bytes.
        size: u64,
        /// [`crate::chunk::content_hash`] of the file's chunks.
        content: Hash,
    },
    /// A directory: the tree hash of its node.
    Dir {
        /// Hash of the directory's [`Node`].
        tree: Hash,
    },
    /// A symbolic link: its target, as raw bytes.
    Symlink {
        /// The link target exactly as `readlink` returns it.
        target: Vec<u8>,
    },
}

impl Body {
    /// The kind of entry this body belongs to.
    pub fn kind(&self) -> Kind {
        match self {
            Body::File { .. } => Kind::File,
            Body::Dir { .. } => Kind::Dir,
            Body::Symlink { .. } => Kind::Symlink,
        }
    }
}

/// The metadata snapsync keeps identical across hosts.
///
/// Fields a group ignores are `None`, so they neither enter the hash nor
/// get applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Permission bits (`st_mode & 0o7777`); `None` for symlinks and under `ignore mod`.
    pub mode: Option<u32>,
    /// Owner user id; `None` under `ignore uid`.
    pub uid: Option<u32>,
    /// Owner group id; `None` under `ignore gid`.
    pub gid: Option<u32>,
    /// Modification time of a regular file; `None` for directories and symlinks.
    pub mtime: Option<Timestamp>,
}

/// One named entry of a directory node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// The file name: raw bytes, no `/` or NUL, not `.` or `..`.
    pub name: Vec<u8>,
    /// Kept metadata.
    pub meta: Meta,
    /// Content.
    pub body: Body,
}

/// One directory: its entries sorted by name, names unique.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The entries, strictly increasing by `name`.
    pub entries: Vec<NodeEntry>,
}

impl Node {
    /// Builds a node from entries in any order. Fails on a duplicate or invalid name.
    pub fn from_unsorted(mut entries: Vec<NodeEntry>) -> Result<Self, TreeError> {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let node = Node { entries };
        node.check()?;
        Ok(node)
    }

    /// The directory's tree hash.
    pub fn hash(&self) -> Hash {
        Self::hash_encoded(&self.encode())
    }

    /// The tree hash of an already encoded node.
    pub fn hash_encoded(encoded: &[u8]) -> Hash {
        Hash(blake3::derive_key(NODE_CONTEXT, encoded))
    }

    /// Looks an entry up by name.
    pub fn get(&self, name: &[u8]) -> Option<&NodeEntry> {
        self.entries.binary_search_by(|e| e.name.as_slice().cmp(name)).ok().map(|i| &self.entries[i])
    }
}

/// The include roots of one group with what each holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootSet {
    /// `(logical path, entry)`, sorted by logical path; `None` where the
    /// root does not exist on disk.
    pub roots: Vec<(String, Option<RootEntry>)>,
}

/// What an include root holds: its metadata and body (no name: the
/// logical path names it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootEntry {
    /// Kept metadata.
    pub meta: Meta,
    /// Content.
    pub body: Body,
}

impl RootSet {
    /// The group's root hash.
    pub fn hash(&self) -> Hash {
        let encoded = postcard::to_stdvec(self).expect("encoding to a Vec cannot fail");
        Hash(blake3::derive_key(ROOT_CONTEXT, &encoded))
    }
}
