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
    /// could go unnoticed (git's "racily clean" problem). For a directory:
    /// the stat does not stand for a listing of its names (see the scan
    /// rules in docs/design.md), so the next walk lists it.
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

/// A stored directory record as a scan reads it: each child's name and
/// what a scan compares with the disk ([`EntryBrief`]), parsed without
/// allocating (chunk lists and version vectors are stepped over). A
/// child's whole record is decoded the first time it is asked for
/// ([`DirView::full`]): a scan that finds a directory unchanged never
/// needs one.
#[derive(Default)]
pub struct DirView {
    bytes: Vec<u8>,
    children: Vec<ViewChild>,
}

struct ViewChild {
    /// Where the name is in the record's bytes.
    name: std::ops::Range<usize>,
    /// Where the child's entry record is.
    record: std::ops::Range<usize>,
    brief: EntryBrief,
    full: std::sync::OnceLock<EntryRecord>,
}

/// The fields of an [`EntryRecord`] a scan compares with the disk (all
/// but its chunk list and version vector), decoded from the record's
/// encoding with those two stepped over. The fields stay in the order of
/// [`EntryRecord`]'s (`dir_view_agrees_with_the_record` checks it).
#[derive(Debug, Deserialize)]
pub struct EntryBrief {
    /// As in [`EntryRecord::meta`].
    pub meta: Meta,
    /// As in [`EntryRecord::body`].
    pub body: Body,
    _chunks: Skipped<ChunkRef>,
    /// As in [`EntryRecord::stat`].
    pub stat: Stat,
    /// As in [`EntryRecord::racy`].
    pub racy: bool,
    /// As in [`EntryRecord::stored`].
    pub stored: bool,
    _version: SkippedVersion,
    /// As in [`EntryRecord::deleted`].
    pub deleted: bool,
    /// As in [`EntryRecord::count`].
    pub count: u64,
    /// As in [`EntryRecord::bytes`].
    pub bytes: u64,
}

/// A sequence read and dropped element by element.
#[derive(Debug)]
struct Skipped<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Skipped<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Each<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Each<T> {
            type Value = Skipped<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<T>()?.is_some() {}
                Ok(Skipped(std::marker::PhantomData))
            }
        }
        d.deserialize_seq(Each(std::marker::PhantomData))
    }
}

/// A [`Version`] read and dropped: its host names are borrowed, not copied.
#[derive(Debug)]
struct SkippedVersion;

impl<'de> Deserialize<'de> for SkippedVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Inner;
        impl<'de> serde::de::Visitor<'de> for Inner {
            type Value = SkippedVersion;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a version vector")
            }
            fn visit_newtype_struct<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                Skipped::<(&'de str, u64)>::deserialize(d).map(|_| SkippedVersion)
            }
        }
        d.deserialize_newtype_struct("Version", Inner)
    }
}

impl DirView {
    /// Parses a stored record. Refuses what [`DirRecord::decode`] refuses.
    pub fn decode(bytes: Vec<u8>) -> Result<DirView, String> {
        let err = |e: postcard::Error| e.to_string();
        let (count, mut rest) = postcard::take_from_bytes::<usize>(&bytes).map_err(err)?;
        let at = |rest: &[u8]| bytes.len() - rest.len();
        // Each child takes at least a byte, so a count beyond what is
        // left is damage, not an allocation to make.
        let mut children = Vec::with_capacity(count.min(rest.len()));
        for _ in 0..count {
            let (name, after_name) = postcard::take_from_bytes::<&[u8]>(rest).map_err(err)?;
            let name = at(after_name) - name.len()..at(after_name);
            let (brief, after) = postcard::take_from_bytes::<EntryBrief>(after_name).map_err(err)?;
            let record = at(after_name)..at(after);
            children.push(ViewChild { name, record, brief, full: std::sync::OnceLock::new() });
            rest = after;
        }
        if !rest.is_empty() {
            return Err(format!("{} bytes after the record", rest.len()));
        }
        Ok(DirView { bytes, children })
    }

    /// How many children the record holds, tombstones included.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// Whether the record holds no child.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// Child `i`'s name (children are in increasing name order).
    pub fn name(&self, i: usize) -> &[u8] {
        &self.bytes[self.children[i].name.clone()]
    }

    /// What a scan compares of child `i`.
    pub fn brief(&self, i: usize) -> &EntryBrief {
        &self.children[i].brief
    }

    /// Child `i`'s whole record, decoded once.
    pub fn full(&self, i: usize) -> &EntryRecord {
        let c = &self.children[i];
        c.full.get_or_init(|| {
            // The same bytes parsed as a brief: every field was read
            // then, so they decode.
            postcard::from_bytes(&self.bytes[c.record.clone()]).expect("a child parsed as a brief decodes")
        })
    }

    /// The index of the child named `name`.
    pub fn position(&self, name: &[u8]) -> Option<usize> {
        self.children.binary_search_by(|c| self.bytes[c.name.clone()].cmp(name)).ok()
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

    /// A view gives each child's name, brief and whole record as the full
    /// decode does, and refuses what it refuses.
    #[test]
    fn dir_view_agrees_with_the_record() {
        use crate::hash::Hash;
        let file = |n: u8| EntryRecord {
            meta: Meta { mode: Some(0o644), uid: Some(1), gid: Some(2), mtime: Some(Timestamp { secs: 5, nanos: 6 }) },
            body: Body::File { size: 70_000 + u64::from(n), content: Hash::of(&[n]) },
            chunks: vec![
                ChunkRef { hash: Hash::of(b"c1"), len: 65_536 },
                ChunkRef { hash: Hash::of(&[n, 2]), len: 4_464 + u32::from(n) },
            ],
            stat: Stat { size: 70_000, ino: 9, dev: 8, mode: 0o100644, uid: 1, gid: 2, ..Stat::default() },
            racy: n.is_multiple_of(2),
            stored: n.is_multiple_of(3),
            version: Version::default().bumped("alpha", u64::from(n)).bumped("b", 300),
            deleted: false,
            count: 1,
            bytes: 70_000,
        };
        let rec = DirRecord {
            children: vec![
                (b"a".to_vec(), file(1)),
                (b"b\xff".to_vec(), EntryRecord::tombstone_for_test()),
                (b"link".to_vec(), EntryRecord { deleted: false, ..EntryRecord::tombstone_for_test() }),
                (vec![b'z'; 300], file(2)),
            ],
        };
        let bytes = rec.encode();
        let view = DirView::decode(bytes.clone()).unwrap();
        assert_eq!(view.len(), rec.children.len());
        for (i, (name, r)) in rec.children.iter().enumerate() {
            assert_eq!(view.name(i), name.as_slice());
            let b = view.brief(i);
            let brief = (&b.meta, &b.body, &b.stat, b.racy, b.stored, b.deleted, b.count, b.bytes);
            assert_eq!(brief, (&r.meta, &r.body, &r.stat, r.racy, r.stored, r.deleted, r.count, r.bytes));
            assert_eq!(view.full(i), r);
            assert_eq!(view.position(name), Some(i));
        }
        assert_eq!(view.position(b"nope"), None);
        assert!(DirView::decode(DirRecord::default().encode()).unwrap().is_empty());
        // Damage: cut short, or followed by more bytes.
        for cut in [1, bytes.len() / 2, bytes.len() - 1] {
            assert!(DirView::decode(bytes[..cut].to_vec()).is_err(), "cut at {cut}");
            assert!(DirRecord::decode(&bytes[..cut]).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(DirView::decode(longer).is_err());
    }

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
