//! Directory records, entry records and their keys.
//!
//! A directory's children are stored together, as one *directory record*
//! keyed `group NUL logical-path-of-the-directory`. A rescan reads each
//! directory's record with one point lookup and merges it with the
//! directory listing; a change rewrites the one record of its directory.
//! One value per directory rather than one per entry keeps the database's
//! journal to a few thousand items for a tree of 100k files, which is what
//! opening the database costs (fjall replays its active journal on open).
//! The include roots of a group are the children of the directory record
//! with the empty path, named by their logical paths. Everything below
//! directory `d` is the record `d` and the records keyed `d/...`.

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkRef;
use crate::tree::{Body, Meta, Timestamp, Version, join_logical};

/// What `lstat` said when the entry was last read: if all of it still
/// matches, the file is not opened again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    /// `st_size`.
    pub size: u64,
    /// `st_mtime` with nanoseconds.
    pub mtime: Timestamp,
    /// `st_ctime` with nanoseconds: catches rewrites that restore the mtime.
    pub ctime: Timestamp,
    /// `st_ino`.
    pub ino: u64,
    /// `st_dev`.
    pub dev: u64,
    /// `st_mode`, file type bits included.
    pub mode: u32,
    /// `st_uid`.
    pub uid: u32,
    /// `st_gid`.
    pub gid: u32,
}

/// The children of one directory, sorted by name, tombstones included.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirRecord {
    /// `(name, record)`, strictly increasing by name.
    pub children: Vec<(Vec<u8>, EntryRecord)>,
}

impl DirRecord {
    /// The stored encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = postcard::to_stdvec(self).expect("encoding to a Vec cannot fail");
        // A scan holds every record it encodes until its commit: without
        // the doubling slack (up to half of each buffer), a first scan of
        // 1M files holds a third less.
        out.shrink_to_fit();
        out
    }

    /// Decodes a stored record.
    pub fn decode(bytes: &[u8]) -> Result<DirRecord, String> {
        // `take_from_bytes`, not `from_bytes`, which ignores what follows
        // the value: bytes after a record mean it was damaged (found by
        // the dir_record fuzz target).
        match postcard::take_from_bytes(bytes) {
            Ok((record, [])) => Ok(record),
            Ok((_, rest)) => Err(format!("{} bytes after the record", rest.len())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The record of child `name`.
    pub fn get(&self, name: &[u8]) -> Option<&EntryRecord> {
        self.children.binary_search_by(|(n, _)| n.as_slice().cmp(name)).ok().map(|i| &self.children[i].1)
    }
}

/// What the node knows of one tracked path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRecord {
    /// Kept metadata (as in the tree).
    pub meta: Meta,
    /// Content (as in the tree); for a tombstone, the last one seen.
    pub body: Body,
    /// A regular file's chunk list (empty for other kinds).
    pub chunks: Vec<ChunkRef>,
    /// The stat cache; meaningless for tombstones.
    pub stat: Stat,
    /// Whether the stat cache must not be trusted: the file's mtime was so
    /// close to the time it was read that a write in the same clock tick
    /// could go unnoticed (git's "racily clean" problem).
    pub racy: bool,
    /// Whether the file's chunks are in the group's chunk store.
    pub stored: bool,
    /// Version vector of the entry's last change.
    pub version: Version,
    /// The entry was deleted; kept so the deletion can travel.
    pub deleted: bool,
    /// Entries in the subtree rooted here, this one included (1 for a file
    /// or link). Kept so a partial rescan can total the tree without
    /// walking it.
    pub count: u64,
    /// Bytes of regular files in the subtree rooted here.
    pub bytes: u64,
}

impl EntryRecord {
    /// Whether two records hold the same state: both absent (no record or
    /// a tombstone), or live entries of one kind with equal metadata and
    /// body (a directory's body, the hash of its children, excepted: its
    /// children are compared one by one). Versions are not compared.
    pub fn same_state(a: Option<&EntryRecord>, b: Option<&EntryRecord>) -> bool {
        match (a.filter(|r| !r.deleted), b.filter(|r| !r.deleted)) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.meta == b.meta
                    && match (&a.body, &b.body) {
                        (Body::Dir { .. }, Body::Dir { .. }) => true,
                        (x, y) => x == y,
                    }
            }
            _ => false,
        }
    }

    #[cfg(test)]
    pub(crate) fn tombstone_for_test() -> EntryRecord {
        EntryRecord {
            meta: Meta::default(),
            body: Body::Symlink { target: b"x".to_vec() },
            chunks: Vec::new(),
            stat: Stat::default(),
            racy: false,
            stored: false,
            version: Version::default().bumped("a", 1),
            deleted: true,
            count: 1,
            bytes: 0,
        }
    }
}

/// The key of the directory record of `dir` (a logical path, empty for
/// the roots) in `group`.
pub fn dir_key(group: &str, dir: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(group.len() + 1 + dir.len());
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k.extend_from_slice(dir);
    k
}

/// Splits a directory record key into `(group, dir)`.
pub fn split_dir_key(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let g = key.iter().position(|&b| b == 0)?;
    Some((&key[..g], &key[g + 1..]))
}

/// The `derive_key` context of version digests ([`version_digest`]).
pub const VERSION_DIGEST_CONTEXT: &str = "snapsync 2026-11 version digest v1";

/// One entry's share of its group's version digest: a hash of its logical
/// path, version vector and tombstone flag.
fn entry_digest(logical: &[u8], rec: &EntryRecord) -> [u8; 32] {
    let encoded = postcard::to_stdvec(&(logical, &rec.version, rec.deleted)).expect("encoding to a Vec cannot fail");
    blake3::derive_key(VERSION_DIGEST_CONTEXT, &encoded)
}

/// XORs into `acc` the share of the entry at `logical` with record `rec`.
///
/// A tombstone under the empty version has no share: it is the same state
/// as no record at all (every version dominates it, and an absent entry
/// equals it), and is what a receive-only host keeps of an entry of its
/// own that a sync removed because the group never had it. Counting it
/// would keep that host's digest apart from its peers' for good.
pub fn xor_entry_digest(acc: &mut [u8; 32], logical: &[u8], rec: &EntryRecord) {
    if rec.deleted && rec.version.0.is_empty() {
        return;
    }
    let d = entry_digest(logical, rec);
    acc.iter_mut().zip(d).for_each(|(a, b)| *a ^= b);
}

/// XORs into `acc` the shares of every child of directory record `rec`
/// (of directory `dir`). XOR makes the group's digest independent of
/// order and lets a changed record be swapped out and in again.
pub fn xor_dir_digest(acc: &mut [u8; 32], dir: &[u8], rec: &DirRecord) {
    for (name, r) in &rec.children {
        xor_entry_digest(acc, &join_logical(dir, name), r);
    }
}

/// The version digest of a group's records: equal on two hosts exactly
/// when they track the same paths under the same versions (up to hash
/// collisions). Kept up to date by every commit of a scan.
pub fn version_digest<'a>(records: impl IntoIterator<Item = (&'a [u8], &'a DirRecord)>) -> crate::hash::Hash {
    let mut acc = [0u8; 32];
    for (dir, rec) in records {
        xor_dir_digest(&mut acc, dir, rec);
    }
    crate::hash::Hash(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_back() {
        let k = dir_key("grp", b"/a/b");
        assert_eq!(split_dir_key(&k), Some((&b"grp"[..], &b"/a/b"[..])));
        assert_eq!(split_dir_key(&dir_key("grp", b"")), Some((&b"grp"[..], &b""[..])));
    }

    #[test]
    fn directory_records_round_trip() {
        let mut d = DirRecord::default();
        d.children.push((b"a".to_vec(), EntryRecord::tombstone_for_test()));
        assert_eq!(DirRecord::decode(&d.encode()).unwrap(), d);
        assert!(d.get(b"a").is_some() && d.get(b"b").is_none());
    }

    /// A tombstone under the empty version is the same state as no
    /// record, and has no share in the digest; any other record has one.
    #[test]
    fn empty_version_tombstones_have_no_digest_share() {
        let none = version_digest(std::iter::empty());
        let gone = EntryRecord { version: Version::default(), ..EntryRecord::tombstone_for_test() };
        let mut d = DirRecord::default();
        d.children.push((b"gone".to_vec(), gone.clone()));
        assert_eq!(version_digest([(&b"/r"[..], &d)]), none);
        let live = EntryRecord { deleted: false, ..gone };
        let mut with_live = DirRecord::default();
        with_live.children.push((b"gone".to_vec(), live));
        assert_ne!(version_digest([(&b"/r"[..], &with_live)]), none);
        let mut versioned = DirRecord::default();
        versioned.children.push((b"gone".to_vec(), EntryRecord::tombstone_for_test()));
        assert_ne!(version_digest([(&b"/r"[..], &versioned)]), none);
    }

    #[test]
    fn version_vectors_compare() {
        let a = Version::default().bumped("a", 1);
        let ab = a.bumped("b", 4);
        assert!(ab.dominates(&a));
        assert!(!a.dominates(&ab));
        let a2 = a.bumped("a", 2);
        assert!(!a2.dominates(&ab) && !ab.dominates(&a2));
        assert_eq!(ab.bumped("a", 3).0, vec![("a".to_owned(), 3), ("b".to_owned(), 4)]);
    }
}
