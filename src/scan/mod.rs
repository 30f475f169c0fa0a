//! Scanning: bring the recorded state of a group in line with its disk.
//!
//! Terms:
//! - A *scan* visits a group's include roots (or only some paths below
//!   them, the *scope*) and produces the writes that make the state match
//!   the disk: changed entry records, new directory nodes and chunk lists,
//!   and the group's new root set. Nothing is written here; the caller
//!   commits [`ScanOutput::writes`] in one batch.
//! - The *stat cache* is the [`Stat`] kept in each file's record. A file
//!   whose `lstat` still matches it (and which was not racily clean) is not
//!   opened. A directory's stat cache stands for its listing: a directory
//!   whose `fstat` still matches it is not listed (see `visit_dir`). An
//!   unchanged tree costs one `lstat` per entry and one read of the state
//!   per directory.
//! - A *problem* is something wrong with one path (unreadable, changing
//!   while read, a special file). It is reported and the rest of the scan
//!   goes on; the path keeps its previous record.
//!
//! Directories are visited depth-first in parallel (rayon): each directory
//! merges its listing with its stored children, visits them, and hashes its
//! node only when something below it changed. The walk never follows
//! symlinks and never opens a path the group's patterns exclude. Each
//! directory is opened once (`O_NOFOLLOW`, relative to its parent's
//! descriptor), listed through that descriptor, and its entries are
//! `lstat`ed, opened and read relative to it ([`crate::fs::Dir`]): the
//! kernel looks up one name per entry, and a directory swapped for a
//! symlink once opened cannot lead the walk anywhere else.

mod read;

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rayon::prelude::*;

use crate::chunk::ChunkRef;
use crate::config::{Class, ResolvedGroup};
use crate::fs::{Dir, Listing};
use crate::hash::Hash;
use crate::store::{
    ChunkStore, DirRecord, DirView, EntryBrief, EntryRecord, Stat, Store, StoreError, Version, encode_manifest,
    join_logical, xor_dir_digest,
};
use crate::tree::{Body, Kind, Meta, Node, NodeEntry, RootEntry, RootSet, Timestamp};

/// Which part of a group to scan.
#[derive(Clone, Debug)]
pub enum Scope {
    /// Every include root.
    All,
    /// Only these local paths (and everything below them).
    Paths(Vec<PathBuf>),
}

/// Everything a scan wants written.
#[derive(Debug, Default)]
pub struct Writes {
    /// Directory records to store or drop.
    pub dirs: Vec<DirWrite>,
    /// New directory nodes: tree hash, encoding and encoded manifest.
    pub nodes: Vec<(Hash, Vec<u8>, Vec<u8>)>,
}

/// One directory record to store or drop.
#[derive(Debug)]
pub struct DirWrite {
    /// The directory's logical path.
    pub dir: Vec<u8>,
    /// The encoded record, or `None` to drop it.
    pub record: Option<Vec<u8>>,
    /// The new record's share of the group's version digest
    /// ([`crate::store::xor_dir_digest`]; zero when dropped), so the commit
    /// keeps the digest without decoding the record again.
    pub share: [u8; 32],
}

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The path was skipped on purpose (a special file, a file that kept
    /// changing while read); the run still succeeds.
    Warning,
    /// The path could not be scanned; the run fails after finishing the rest.
    Error,
}

/// Something wrong with one path.
#[derive(Debug, thiserror::Error, serde::Serialize)]
#[error("{}: {message}", path.display())]
pub struct Problem {
    /// The local path (in JSON, lossily as text).
    #[serde(serialize_with = "path_as_text")]
    pub path: PathBuf,
    /// What happened.
    pub message: String,
    /// Whether it fails the run.
    pub severity: Severity,
}

fn path_as_text<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// Counters of one scan.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ScanStats {
    /// Entries looked at on disk.
    pub entries_seen: u64,
    /// Directories listed.
    pub dirs_listed: u64,
    /// Files opened and read.
    pub files_read: u64,
    /// Bytes read from those files.
    pub bytes_read: u64,
    /// Entries created, changed or deleted.
    pub entries_changed: u64,
}

/// The result of scanning one group.
#[derive(Debug)]
pub struct ScanOutput {
    /// The group's root set after the scan.
    pub roots: RootSet,
    /// Chunk lists of roots that are files, in the order of `roots`.
    pub root_chunks: Vec<Vec<ChunkRef>>,
    /// What must be written to record it.
    pub writes: Writes,
    /// Per-path problems, in no particular order.
    pub problems: Vec<Problem>,
    /// Counters.
    pub stats: ScanStats,
    /// The last version counter handed out.
    pub seq: u64,
    /// Entries in the group's tree.
    pub entries: u64,
    /// Bytes of files in the group's tree.
    pub bytes: u64,
    /// Stored bytes of chunks this scan added to the chunk store.
    pub added_bytes: u64,
    /// The scan was interrupted ([`Scanner::interrupt`]): it stopped
    /// visiting entries, so this output is partial and must not be
    /// recorded.
    pub interrupted: bool,
    /// Every directory whose record the scan kept was looked at: none was
    /// left as recorded because it could not be stat'ed, opened or listed.
    /// After a scan of the whole group, its records hold the listings of
    /// the current patterns ([`Scanner::trust_listings`]).
    pub listings_current: bool,
}

/// A scan of one group against one state.
pub struct Scanner<'a> {
    /// The group, resolved for the local host.
    pub group: &'a ResolvedGroup,
    /// The node's state.
    pub store: &'a Store,
    /// Where to keep chunk bytes, if the group keeps backups.
    pub chunks: Option<&'a ChunkStore>,
    /// The local host name, for version vectors.
    pub host: &'a str,
    /// Ticks once per entry seen; counts the bytes of the files read.
    pub progress: &'a dyn crate::progress::ProgressTask,
    /// Read every file once, whatever the stat cache says: the records'
    /// `stored` flags refer to another chunk store than `chunks`.
    pub read_all: bool,
    /// States just applied from a peer, by logical path (see [`Adopted`]).
    pub adopt: Option<&'a Adopted>,
    /// Stops the scan once raised (see [`ScanOutput::interrupted`]).
    pub interrupt: Option<&'a crate::interrupt::Interrupt>,
    /// The state's directory records were listed under this group's
    /// current patterns and roots ([`listing_fingerprint`]): a directory
    /// whose `fstat` still matches its record is not listed again.
    pub trust_listings: bool,
}

/// States a sync has just written to disk, by logical path, each with the
/// version it must be recorded under (the peer's, never a fresh local
/// one: that is what lets a change travel on without looking new).
///
/// A scan that finds an adopted path in exactly the adopted state records
/// it under the adopted version; a live file whose `lstat` still matches
/// the adopted record's stat is taken without being read again. Anything
/// else found there (the file was changed again meanwhile) is recorded as
/// a local change, as any scan would.
pub type Adopted = std::collections::HashMap<Vec<u8>, EntryRecord>;

/// What a visit found an entry's record to become.
enum Seen {
    /// The stored record stands as it is (or there is none, and still none).
    Same,
    /// A new record (a new, changed or deleted entry, or a fresher stat).
    /// Boxed: a directory collects one `Seen` per child, and on a scan that
    /// finds nothing changed those are all `Same`; unboxed, each would be
    /// the size of a record, written and moved for nothing.
    New(Box<EntryRecord>),
    /// The entry is not tracked (any more): no record.
    Untracked,
}

/// What to do with one entry.
enum Mode {
    /// Take the stored record as it is.
    Keep,
    /// Look at it on disk, everything below included.
    Full,
    /// Look at it and at these paths below it (component lists).
    Partial(Vec<Vec<Vec<u8>>>),
}

struct Run<'a, 's> {
    scan: &'s Scanner<'a>,
    writes: Mutex<Writes>,
    problems: Mutex<Vec<Problem>>,
    seq: AtomicU64,
    added_bytes: AtomicU64,
    entries_seen: AtomicU64,
    dirs_listed: AtomicU64,
    files_read: AtomicU64,
    bytes_read: AtomicU64,
    entries_changed: AtomicU64,
    /// A fatal store error: the scan stops and reports it.
    fatal: Mutex<Option<StoreError>>,
    /// Entries were left unvisited: the scan's interrupt was raised.
    interrupted: AtomicBool,
    /// A directory kept its record without being looked at.
    unlisted: AtomicBool,
}

impl Scanner<'_> {
    /// Scans `scope` of the group and returns what to write.
    pub fn run(&self, scope: &Scope) -> Result<ScanOutput, StoreError> {
        let run = Run {
            scan: self,
            writes: Mutex::default(),
            problems: Mutex::default(),
            seq: AtomicU64::new(self.store.seq()?),
            added_bytes: AtomicU64::new(0),
            entries_seen: AtomicU64::new(0),
            dirs_listed: AtomicU64::new(0),
            files_read: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            entries_changed: AtomicU64::new(0),
            fatal: Mutex::new(None),
            interrupted: AtomicBool::new(false),
            unlisted: AtomicBool::new(false),
        };
        // The roots are the children of the record with the empty path.
        let old = self.store.dir_record(&self.group.name, b"")?.unwrap_or_default();
        let mut new = DirRecord::default();
        for root in &self.group.roots {
            let mode = match scope {
                Scope::All => Mode::Full,
                Scope::Paths(paths) => root_mode(&root.local, paths),
            };
            let logical = root.logical.as_bytes();
            let prev = old.get(logical);
            // SPEC §4.18: an include root that is a symlink here (say, the
            // tree was moved and a link left behind) is reported and keeps
            // its record as it was; it is never recorded, and so never
            // sent, as a symlink.
            if !matches!(mode, Mode::Keep) && root_is_symlink(&run, &root.local) {
                if let Some(prev) = prev {
                    new.children.push((logical.to_vec(), prev.clone()));
                }
                continue;
            }
            let at = Loc::Root(&root.local);
            let rec = match run.visit(b"", logical, at, prev.map(Old::Whole), Class::Included, &mode) {
                Seen::Same => prev.cloned(),
                Seen::New(r) => Some(*r),
                Seen::Untracked => None,
            };
            if let Some(rec) = rec {
                new.children.push((logical.to_vec(), rec));
            }
        }
        // Roots the configuration no longer names: forget what was below them.
        for (logical, rec) in &old.children {
            if !self.group.roots.iter().any(|r| r.logical.as_bytes() == logical.as_slice()) {
                run.forget(b"", logical, rec.body.kind());
            }
        }
        if let Some(f) = run.fatal.lock().expect("poisoned").take() {
            return Err(f);
        }
        new.children.sort_by(|a, b| a.0.cmp(&b.0));
        if new != old {
            run.write_dir(Vec::new(), Some(&new));
        }
        let (mut entries, mut bytes) = (0, 0);
        let mut roots = Vec::new();
        let mut root_chunks = Vec::new();
        for root in &self.group.roots {
            let rec = new.get(root.logical.as_bytes()).filter(|r| !r.deleted);
            if let Some(r) = rec {
                entries += r.count;
                bytes += r.bytes;
            }
            roots.push((root.logical.clone(), rec.map(|r| RootEntry { meta: r.meta.clone(), body: r.body.clone() })));
            root_chunks.push(rec.map(|r| r.chunks.clone()).unwrap_or_default());
        }
        Ok(ScanOutput {
            roots: RootSet { roots },
            root_chunks,
            writes: run.writes.into_inner().expect("poisoned"),
            problems: run.problems.into_inner().expect("poisoned"),
            stats: ScanStats {
                entries_seen: run.entries_seen.into_inner(),
                dirs_listed: run.dirs_listed.into_inner(),
                files_read: run.files_read.into_inner(),
                bytes_read: run.bytes_read.into_inner(),
                entries_changed: run.entries_changed.into_inner(),
            },
            seq: run.seq.into_inner(),
            entries,
            bytes,
            added_bytes: run.added_bytes.into_inner(),
            interrupted: run.interrupted.into_inner(),
            listings_current: !run.unlisted.into_inner(),
        })
    }
}

/// What the directory listings in a group's records were taken under: its
/// include roots and its patterns, as the scanner classifies names. A
/// state whose records were all listed under another (or under none: a
/// state older than this, whose directory records never said whether
/// they stand for a listing) lists every directory in its next full scan
/// ([`Scanner::trust_listings`]).
pub fn listing_fingerprint(group: &ResolvedGroup) -> Hash {
    let mut h = blake3::Hasher::new_derive_key("snapsync 2026-12 directory listings");
    // NUL ends each string: neither paths nor patterns hold one.
    for root in &group.roots {
        h.update(root.logical.as_bytes()).update(b"\0");
        h.update(root.local.as_os_str().as_bytes()).update(b"\0");
    }
    h.update(b"\0");
    for p in group.matcher.patterns() {
        h.update(format!("{:?}", p.kind).as_bytes()).update(b"\0");
        h.update(p.text.as_bytes()).update(b"\0");
    }
    Hash(*h.finalize().as_bytes())
}

/// Whether the include root at `local` is a symlink; reports it if so.
fn root_is_symlink(run: &Run<'_, '_>, local: &Path) -> bool {
    let Ok(md) = std::fs::symlink_metadata(local) else { return false };
    if !md.file_type().is_symlink() {
        return false;
    }
    let target = std::fs::read_link(local).map(|t| t.display().to_string()).unwrap_or_default();
    run.problem(
        local,
        format!(
            "include root is a symlink (to {target}): it is not synced; make the configured path the tree itself, \
             or include the link's target"
        ),
        Severity::Error,
    );
    true
}

/// How a root is scanned when only `paths` are asked for.
fn root_mode(root: &Path, paths: &[PathBuf]) -> Mode {
    let mut below = Vec::new();
    for p in paths {
        if let Ok(rest) = p.strip_prefix(root) {
            let comps: Vec<Vec<u8>> = rest.iter().map(|c| c.as_bytes().to_vec()).collect();
            if comps.is_empty() {
                return Mode::Full;
            }
            below.push(comps);
        }
    }
    if below.is_empty() { Mode::Keep } else { Mode::Partial(below) }
}

impl Run<'_, '_> {
    fn group(&self) -> &str {
        &self.scan.group.name
    }

    fn problem(&self, path: &Path, message: impl Into<String>, severity: Severity) {
        let p = Problem { path: path.to_path_buf(), message: message.into(), severity };
        match severity {
            Severity::Warning => tracing::warn!("{p}"),
            Severity::Error => tracing::error!("{p}"),
        }
        self.problems.lock().expect("poisoned").push(p);
    }

    fn fatal(&self, e: StoreError) {
        self.fatal.lock().expect("poisoned").get_or_insert(e);
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn write_dir(&self, dir: Vec<u8>, rec: Option<&DirRecord>) {
        let mut share = [0u8; 32];
        if let Some(r) = rec {
            xor_dir_digest(&mut share, &dir, r);
        }
        let w = DirWrite { record: rec.map(DirRecord::encode), dir, share };
        self.writes.lock().expect("poisoned").dirs.push(w);
        crate::killpoint::hit("scan.dir");
    }

    /// Notes that the directory recorded as `old`, if any, keeps its
    /// record without having been looked at ([`ScanOutput::listings_current`]).
    fn kept_unlisted(&self, old: Option<Old<'_>>) {
        if old.is_some_and(|o| !o.deleted() && o.kind() == Kind::Dir) {
            self.unlisted.store(true, Ordering::Relaxed);
        }
    }

    /// The tombstone of `old`, and tombstones for everything below it.
    fn gone(&self, parent: &[u8], name: &[u8], old: &EntryRecord) -> Seen {
        if old.deleted {
            return Seen::Same;
        }
        let mut seen_below = Version::default();
        if old.body.kind() == Kind::Dir {
            match self.scan.store.dir_records_below(self.group(), &join_logical(parent, name)) {
                Ok(below) => {
                    for (dir, mut rec) in below {
                        for (n, child) in rec.children.iter_mut().filter(|(_, c)| !c.deleted) {
                            seen_below = seen_below.with_counters_of(&child.version);
                            let mut t = self.tombstone(child);
                            // A deletion taken from a peer keeps the peer's
                            // versions below the directory too.
                            if let Some(a) = self.scan.adopt.and_then(|a| a.get(&join_logical(&dir, n)))
                                && a.deleted
                            {
                                t.version = a.version.clone();
                            }
                            *child = t;
                        }
                        self.write_dir(dir, Some(&rec));
                    }
                }
                Err(e) => self.fatal(e),
            }
        }
        let mut t = self.tombstone(old);
        // The directory's deletion has seen everything it held.
        t.version = t.version.with_counters_of(&seen_below);
        Seen::New(Box::new(t))
    }

    fn tombstone(&self, old: &EntryRecord) -> EntryRecord {
        self.entries_changed.fetch_add(1, Ordering::Relaxed);
        EntryRecord {
            deleted: true,
            racy: false,
            chunks: Vec::new(),
            version: old.version.bumped(self.scan.host, self.next_seq()),
            ..old.clone()
        }
    }

    /// Drops an entry and everything below it from the state, without
    /// tombstones: it left the included set, which is not a deletion.
    fn forget(&self, parent: &[u8], name: &[u8], kind: Kind) -> Seen {
        if kind == Kind::Dir {
            match self.scan.store.dir_records_below(self.group(), &join_logical(parent, name)) {
                Ok(below) => {
                    for (dir, _) in below {
                        self.write_dir(dir, None);
                    }
                }
                Err(e) => self.fatal(e),
            }
        }
        Seen::Untracked
    }

    /// Visits one entry and says what its record becomes, recording an
    /// adopted state under its adopted version.
    fn visit(&self, parent: &[u8], name: &[u8], at: Loc<'_>, old: Option<Old<'_>>, class: Class, mode: &Mode) -> Seen {
        let adopted = match self.scan.adopt {
            Some(a) if !matches!(mode, Mode::Keep) => a.get(&join_logical(parent, name)),
            _ => None,
        };
        let Some(adopted) = adopted else {
            return self.visit_entry(parent, name, at, old, class, mode, None);
        };
        let seen = self.visit_entry(parent, name, at, old, class, mode, Some(adopted));
        let found = match &seen {
            Seen::Same => old.map(|o| o.full().clone()),
            Seen::New(r) => Some(EntryRecord::clone(r)),
            Seen::Untracked => None,
        };
        match found {
            Some(mut r) if EntryRecord::same_state(Some(&r), Some(adopted)) => {
                if old.is_some_and(|o| o.deleted() && r.deleted && o.full().version == adopted.version) {
                    return seen;
                }
                r.version = adopted.version.clone();
                Seen::New(Box::new(r))
            }
            // No record (excluded meanwhile), or another state: what the
            // scan found stands.
            _ => seen,
        }
    }

    /// Visits one entry and says what its record becomes.
    #[allow(clippy::too_many_arguments)]
    fn visit_entry(
        &self,
        parent: &[u8],
        name: &[u8],
        at: Loc<'_>,
        old: Option<Old<'_>>,
        class: Class,
        mode: &Mode,
        adopted: Option<&EntryRecord>,
    ) -> Seen {
        if let Mode::Keep = mode {
            return Seen::Same;
        }
        if self.scan.interrupt.is_some_and(|i| i.raised()) {
            // Left as recorded; the caller records none of this scan.
            self.interrupted.store(true, Ordering::Relaxed);
            return Seen::Same;
        }
        self.entries_seen.fetch_add(1, Ordering::Relaxed);
        self.scan.progress.inc(1);
        let gone = |old: Option<Old<'_>>| old.map_or(Seen::Untracked, |o| self.gone(parent, name, o.full()));
        // A directory is opened (never through a symlink) and its stat
        // taken through that descriptor: what is recorded is what is
        // listed, and its children are looked up relative to it, so a
        // directory swapped for a symlink cannot lead the walk out of the
        // tree. One replaced between the `lstat` and the open is looked at
        // again.
        let mut attempts = 0;
        let (stat, dir) = loop {
            let stat = match at.lstat() {
                Ok(st) => st,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return gone(old),
                Err(e) => {
                    self.problem(&at.path(), format!("cannot stat: {e}"), Severity::Error);
                    self.kept_unlisted(old);
                    return Seen::Same;
                }
            };
            if stat.mode & libc::S_IFMT != libc::S_IFDIR {
                break (stat, None);
            }
            match at.open_dir(matches!(mode, Mode::Full)).and_then(|d| Ok((stat_of_raw(&d.stat()?), d))) {
                Ok((stat, d)) => break (stat, Some(d)),
                Err(e)
                    if attempts < 2 && matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR | libc::ENOENT)) =>
                {
                    attempts += 1;
                }
                Err(e) => {
                    self.problem(&at.path(), format!("cannot list directory: {e}"), Severity::Error);
                    self.kept_unlisted(old);
                    return Seen::Same;
                }
            }
        };
        let kind = match stat.mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            _ => {
                self.problem(&at.path(), "skipped: not a regular file, directory or symlink", Severity::Warning);
                return gone(old);
            }
        };
        // An ancestor of an include is walked through but only tracked
        // when it is a directory.
        if class == Class::Ancestor && kind != Kind::Dir {
            return old.map_or(Seen::Untracked, |o| self.forget(parent, name, o.kind()));
        }
        // A directory replaced by something else: its subtree is deleted,
        // and what replaced it is compared with the tombstone.
        let replaced = match old {
            Some(o) if !o.deleted() && o.kind() == Kind::Dir && kind != Kind::Dir => {
                match self.gone(parent, name, o.full()) {
                    // Marked, so that hosts taking the replacement list the
                    // tombstones below it (`Version::replacing_dir`).
                    Seen::New(t) => Some(EntryRecord { version: t.version.replacing_dir(), ..*t }),
                    _ => None,
                }
            }
            _ => None,
        };
        let old = replaced.as_ref().map(Old::Whole).or(old);
        let meta = self.meta_of(&stat, kind);
        let seen = match (kind, dir) {
            (Kind::Dir, Some(dir)) => self.visit_dir(parent, name, &dir, old, meta, stat, mode, class),
            // A file just written by a sync is known by its stat: the
            // adopted record stands in for the old one, so it is not read
            // again while untouched.
            (Kind::File, _) => match adopted.filter(|a| !a.deleted && a.body.kind() == Kind::File) {
                Some(a) => match self.visit_file(at, Some(Old::Whole(a)), meta, stat) {
                    Seen::Same => Seen::New(Box::new(a.clone())),
                    seen => seen,
                },
                None => self.visit_file(at, old, meta, stat),
            },
            (Kind::Symlink, _) => self.visit_symlink(at, old, meta, stat),
            (Kind::Dir, None) => unreachable!("a directory is opened before its kind is taken"),
        };
        match (seen, replaced) {
            (Seen::Same, Some(t)) => Seen::New(Box::new(t)),
            (seen, _) => seen,
        }
    }

    fn meta_of(&self, st: &Stat, kind: Kind) -> Meta {
        let ignore = &self.scan.group.ignore;
        Meta {
            mode: (kind != Kind::Symlink && !ignore.mode).then_some(st.mode & 0o7777),
            uid: (!ignore.uid).then_some(st.uid),
            gid: (!ignore.gid).then_some(st.gid),
            mtime: (kind == Kind::File).then_some(st.mtime),
        }
    }

    /// The record of an entry as now found, keeping the old version when
    /// nothing the tree cares about changed.
    fn record(&self, old: Option<&EntryRecord>, meta: Meta, body: Body, stat: Stat) -> EntryRecord {
        let same = old.is_some_and(|o| {
            !o.deleted
                && o.meta == meta
                && match (&o.body, &body) {
                    // A directory's own version covers its metadata; its
                    // children carry their own versions.
                    (Body::Dir { .. }, Body::Dir { .. }) => true,
                    (a, b) => a == b,
                }
        });
        let version = match old {
            Some(o) if same => o.version.clone(),
            Some(o) => o.version.bumped(self.scan.host, self.next_seq()),
            None => Version::created(&meta, &body),
        };
        if !same {
            self.entries_changed.fetch_add(1, Ordering::Relaxed);
        }
        let bytes = match &body {
            Body::File { size, .. } => *size,
            _ => 0,
        };
        EntryRecord {
            meta,
            body,
            chunks: Vec::new(),
            stat,
            racy: false,
            stored: false,
            version,
            deleted: false,
            count: 1,
            bytes,
        }
    }

    fn visit_symlink(&self, at: Loc<'_>, old: Option<Old<'_>>, meta: Meta, stat: Stat) -> Seen {
        if let Some(o) = old
            && !o.deleted()
            && *o.stat() == stat
            && *o.meta() == meta
            && o.kind() == Kind::Symlink
        {
            return Seen::Same;
        }
        let target = match at.read_link() {
            Ok(t) => t,
            Err(e) => {
                self.problem(&at.path(), format!("cannot read link: {e}"), Severity::Error);
                return Seen::Same;
            }
        };
        Seen::New(Box::new(self.record(old.map(Old::full), meta, Body::Symlink { target }, stat)))
    }

    fn visit_file(&self, at: Loc<'_>, old: Option<Old<'_>>, meta: Meta, stat: Stat) -> Seen {
        let backups = self.scan.chunks;
        if let Some(o) = old
            && !o.deleted()
            && *o.stat() == stat
            && !o.racy()
            && *o.meta() == meta
            && (backups.is_none() || (o.stored() && !self.scan.read_all))
            && o.kind() == Kind::File
        {
            return Seen::Same;
        }
        let read = match read::read_stable(at, backups) {
            Ok(r) => r,
            Err(read::ReadError::Unstable) => {
                self.problem(
                    &at.path(),
                    "skipped: changed while being read; it is read again next run",
                    Severity::Warning,
                );
                return Seen::Same;
            }
            // Deleted between the listing and the read: the next run
            // records the deletion.
            Err(read::ReadError::Gone) => return Seen::Same,
            Err(read::ReadError::Io(e)) => {
                self.problem(&at.path(), format!("cannot read: {e}"), Severity::Error);
                return Seen::Same;
            }
            Err(read::ReadError::Store(e)) => {
                self.fatal(e);
                return Seen::Same;
            }
        };
        self.files_read.fetch_add(1, Ordering::Relaxed);
        self.bytes_read.fetch_add(read.stat.size, Ordering::Relaxed);
        self.scan.progress.read(read.stat.size);
        self.added_bytes.fetch_add(read.added_bytes, Ordering::Relaxed);
        // The stat taken on the open file is the one that matches the
        // bytes read; metadata may have moved since the lstat.
        let meta = Meta { mtime: Some(read.stat.mtime), ..meta };
        let body = Body::File { size: read.stat.size, content: crate::chunk::content_hash(&read.chunks) };
        let old = old.map(Old::full);
        let mut rec = self.record(old, meta, body, read.stat);
        rec.chunks = read.chunks;
        rec.racy = read.racy;
        rec.stored = backups.is_some();
        if old == Some(&rec) { Seen::Same } else { Seen::New(Box::new(rec)) }
    }

    #[allow(clippy::too_many_arguments)]
    fn visit_dir(
        &self,
        parent: &[u8],
        name: &[u8],
        dir: &Dir,
        old: Option<Old<'_>>,
        meta: Meta,
        stat: Stat,
        mode: &Mode,
        class: Class,
    ) -> Seen {
        let logical = join_logical(parent, name);
        let (stored, exists) = match self.scan.store.dir_view(self.group(), &logical) {
            Ok(Some(view)) => (view, true),
            Ok(None) => (DirView::default(), false),
            Err(e) => {
                self.fatal(e);
                return Seen::Same;
            }
        };
        let local = dir.path();
        // Listed as recorded: the names in a directory cannot change
        // without moving its change time, and its record was taken from a
        // listing of them (see `racy` below).
        let as_recorded = self.scan.trust_listings
            && exists
            && old.is_some_and(|o| !o.deleted() && o.kind() == Kind::Dir && !o.racy() && *o.stat() == stat);
        let listed = matches!(mode, Mode::Full) && !as_recorded;
        let listing = match mode {
            Mode::Full if listed => {
                self.dirs_listed.fetch_add(1, Ordering::Relaxed);
                match dir.listing() {
                    Ok(l) => l,
                    Err(e) => {
                        self.problem(local, format!("cannot list directory: {e}"), Severity::Error);
                        self.kept_unlisted(old);
                        return Seen::Same;
                    }
                }
            }
            _ => Listing::default(),
        };
        // Judged when listed: a visit of the children can take long.
        let changed_lately = listed && read::recent(stat.ctime);
        #[cfg(test)]
        tests::after_listing(local);
        let stored = &stored;
        let mut paths = ChildPaths::new(local);
        let matcher = &self.scan.group.matcher;
        let all_included = class == Class::Included && matcher.excludes_nothing();
        let mut classify = |n: &[u8]| if all_included { Class::Included } else { matcher.classify(paths.get(n)) };
        // (name, index of its stored record, class, mode) for each child
        // to visit; names are borrowed from the listing or the record.
        let mut todo: Vec<(&[u8], Option<usize>, Class, Mode)> = Vec::with_capacity(listing.len());
        let mut wanted: Vec<(Vec<u8>, Mode)> = Vec::new();
        match mode {
            // Every stored name, tombstones too: a name back on disk is
            // seen as a listing would see it.
            Mode::Full if !listed => {
                todo.extend((0..stored.len()).map(|i| (stored.name(i), Some(i), classify(stored.name(i)), Mode::Full)));
            }
            Mode::Full => {
                // snapsync's own temporary files (a restore or transfer in
                // flight, or left by a crash) are never tracked.
                let mut listed = listing.iter().filter(|n| !n.starts_with(TEMP_PREFIX)).peekable();
                let mut s = 0;
                loop {
                    let next = (s < stored.len()).then(|| stored.name(s));
                    let (n, rec, m) = match (listed.peek().copied(), next) {
                        (None, None) => break,
                        (Some(l), Some(n)) if l == n => {
                            listed.next();
                            s += 1;
                            (l, Some(s - 1), Mode::Full)
                        }
                        (Some(l), next) if next.is_none_or(|n| l < n) => {
                            listed.next();
                            (l, None, Mode::Full)
                        }
                        // A stored child missing from the listing: a
                        // tombstone stays as it is; the others are visited
                        // so the visit confirms they are gone (or excluded
                        // now).
                        (_, Some(n)) => {
                            s += 1;
                            (n, Some(s - 1), if stored.brief(s - 1).deleted { Mode::Keep } else { Mode::Full })
                        }
                        (Some(_), None) => unreachable!("taken by the arm above"),
                    };
                    todo.push((n, rec, classify(n), m));
                }
            }
            Mode::Partial(targets) => {
                for t in targets {
                    let (first, rest) = t.split_first().expect("targets are never empty");
                    let m = if rest.is_empty() { Mode::Full } else { Mode::Partial(vec![rest.to_vec()]) };
                    match wanted.iter_mut().find(|(n, _)| n == first) {
                        Some((_, existing)) => merge_mode(existing, m),
                        None => wanted.push((first.clone(), m)),
                    }
                }
                let mut taken = vec![false; stored.len()];
                for (n, m) in &mut wanted {
                    let i = stored.position(n);
                    if let Some(i) = i {
                        taken[i] = true;
                    }
                    todo.push((n.as_slice(), i, classify(n), std::mem::replace(m, Mode::Keep)));
                }
                let rest = taken.iter().enumerate().filter(|(_, t)| !**t);
                todo.extend(rest.map(|(i, _)| (stored.name(i), Some(i), Class::Included, Mode::Keep)));
            }
            Mode::Keep => unreachable!("visit handles Keep"),
        }
        let visited: Vec<Seen> = todo
            .par_iter()
            .map(|&(n, i, class, ref m)| {
                let rec = i.map(|i| Old::InView(stored, i));
                if class == Class::Excluded {
                    // Excluded now: forgotten, never a deletion.
                    rec.map_or(Seen::Untracked, |r| self.forget(&logical, n, r.kind()))
                } else {
                    self.visit(&logical, n, Loc::In(dir, n), rec, class, m)
                }
            })
            .collect();
        let changed = !exists
            || visited.iter().zip(&todo).any(|(seen, t)| match seen {
                Seen::Same => false,
                Seen::New(_) => true,
                Seen::Untracked => t.1.is_some(),
            });
        // Whether the record to keep can stand for a listing next time
        // (`racy` says it cannot). A listing counts when every name in it
        // ended up recorded (or is excluded): a name left out for now (it
        // could not be read, it is a special file) must be looked at
        // again. And when the directory changed within the racy window: a
        // change in the same clock tick as the last one may leave its
        // times as they were.
        let racy = match mode {
            Mode::Full if listed => {
                let recorded = visited.iter().zip(&todo).all(|(seen, &(_, i, class, _))| match seen {
                    Seen::New(_) => true,
                    Seen::Same => i.is_some(),
                    Seen::Untracked => class == Class::Excluded,
                });
                !recorded || changed_lately
            }
            Mode::Full => false,
            // Not listed: the record stands for a listing only as long
            // as the directory is as it was.
            _ => !as_recorded,
        };
        // A directory looked at through some paths only keeps its stat as
        // recorded when nothing else changes: keeping the old one is
        // always safe (it differs from the directory's, so the next full
        // look lists it).
        let same_stat = |o: Old<'_>| !matches!(mode, Mode::Full) || (*o.stat() == stat && o.racy() == racy);
        if !changed && let Some(o) = old.filter(|o| !o.deleted() && o.kind() == Kind::Dir) {
            // Same children as recorded: same node, same tree hash.
            if *o.meta() == meta && same_stat(o) {
                return Seen::Same;
            }
            let mut rec = self.record(Some(o.full()), meta, o.body().clone(), stat);
            (rec.count, rec.bytes, rec.racy) = (o.count(), o.bytes(), racy);
            return Seen::New(Box::new(rec));
        }
        // Records kept as they were are cloned: only the directories
        // where something changed get here.
        let mut children: Vec<(Vec<u8>, EntryRecord)> = visited
            .into_iter()
            .zip(&todo)
            .filter_map(|(seen, &(n, i, ..))| match seen {
                Seen::Same => i.map(|i| (stored.name(i).to_vec(), stored.full(i).clone())),
                Seen::New(r) => Some((n.to_vec(), *r)),
                Seen::Untracked => None,
            })
            .collect();
        children.sort_by(|a, b| a.0.cmp(&b.0));
        let new = DirRecord { children };
        if changed {
            self.write_dir(logical, Some(&new));
        }

        let (mut count, mut bytes) = (1, 0);
        let mut entries = Vec::with_capacity(new.children.len());
        let mut manifest = Vec::with_capacity(new.children.len());
        for (n, r) in new.children.iter().filter(|(_, r)| !r.deleted) {
            count += r.count;
            bytes += r.bytes;
            entries.push(NodeEntry { name: n.clone(), meta: r.meta.clone(), body: r.body.clone() });
            manifest.push(r.chunks.clone());
        }
        let node = Node { entries };
        let encoded = node.encode();
        let tree = Node::hash_encoded(&encoded);
        let body = Body::Dir { tree };
        // A live old record with this tree hash means the node is stored and
        // kept alive by the current tree; a tombstone's node may have been
        // collected since, so a re-created identical directory stores it again.
        if old.is_none_or(|o| o.deleted() || *o.body() != body) {
            self.writes.lock().expect("poisoned").nodes.push((tree, encoded, encode_manifest(&manifest)));
        }
        match old {
            Some(o)
                if !o.deleted()
                    && *o.meta() == meta
                    && *o.body() == body
                    && o.count() == count
                    && o.bytes() == bytes
                    && same_stat(o) =>
            {
                Seen::Same
            }
            old => {
                let mut rec = self.record(old.map(Old::full), meta, body, stat);
                (rec.count, rec.bytes, rec.racy) = (count, bytes, racy);
                Seen::New(Box::new(rec))
            }
        }
    }
}

fn merge_mode(existing: &mut Mode, new: Mode) {
    match (existing, new) {
        (e @ Mode::Full, _) => *e = Mode::Full,
        (e, Mode::Full) => *e = Mode::Full,
        (Mode::Partial(a), Mode::Partial(b)) => a.extend(b),
        (e, m) => *e = m,
    }
}

/// Names starting with this are snapsync's temporary files.
pub const TEMP_PREFIX: &[u8] = b".snapsync-";

/// An entry's stored record as the scan meets it: a child in its
/// directory's [`DirView`] (what an unchanged entry is told by is read;
/// the whole record is decoded the first time it is needed), or a record
/// already whole.
#[derive(Clone, Copy)]
enum Old<'r> {
    Whole(&'r EntryRecord),
    InView(&'r DirView, usize),
}

impl<'r> Old<'r> {
    /// The whole record.
    fn full(self) -> &'r EntryRecord {
        match self {
            Old::Whole(r) => r,
            Old::InView(v, i) => v.full(i),
        }
    }

    fn pick<T>(self, whole: impl FnOnce(&'r EntryRecord) -> T, brief: impl FnOnce(&'r EntryBrief) -> T) -> T {
        match self {
            Old::Whole(r) => whole(r),
            Old::InView(v, i) => brief(v.brief(i)),
        }
    }

    fn deleted(self) -> bool {
        self.pick(|r| r.deleted, |b| b.deleted)
    }

    fn kind(self) -> Kind {
        self.body().kind()
    }

    fn meta(self) -> &'r Meta {
        self.pick(|r| &r.meta, |b| &b.meta)
    }

    fn body(self) -> &'r Body {
        self.pick(|r| &r.body, |b| &b.body)
    }

    fn stat(self) -> &'r Stat {
        self.pick(|r| &r.stat, |b| &b.stat)
    }

    fn racy(self) -> bool {
        self.pick(|r| r.racy, |b| b.racy)
    }

    fn stored(self) -> bool {
        self.pick(|r| r.stored, |b| b.stored)
    }

    fn count(self) -> u64 {
        self.pick(|r| r.count, |b| b.count)
    }

    fn bytes(self) -> u64 {
        self.pick(|r| r.bytes, |b| b.bytes)
    }
}

/// Where an entry is on disk.
#[derive(Clone, Copy)]
enum Loc<'p> {
    /// An include root, by its configured path (the configuration vouches
    /// for the directories above it).
    Root(&'p Path),
    /// `name` in an open directory.
    In(&'p Dir, &'p [u8]),
}

impl Loc<'_> {
    /// The local path, for messages (built only when needed: an unchanged
    /// entry never needs it).
    fn path(&self) -> PathBuf {
        match self {
            Loc::Root(p) => p.to_path_buf(),
            Loc::In(d, n) => d.path().join(OsStr::from_bytes(n)),
        }
    }

    /// The entry's `lstat`.
    fn lstat(&self) -> io::Result<Stat> {
        match self {
            Loc::Root(p) => std::fs::symlink_metadata(p).map(|md| stat_of(&md)),
            Loc::In(d, n) => d.lstat(n).map(|st| stat_of_raw(&st)),
        }
    }

    /// Opens the entry as a directory; a symlink in its place is refused.
    /// Unless it is to be listed, it is opened only to reach entries below
    /// it, which takes search permission alone (as a lookup by path does).
    fn open_dir(&self, listed: bool) -> io::Result<Dir> {
        match (self, listed) {
            (Loc::Root(p), true) => Dir::open(p),
            (Loc::Root(p), false) => Dir::open_to_lookup(p),
            (Loc::In(d, n), true) => d.open_dir(OsStr::from_bytes(n)),
            (Loc::In(d, n), false) => d.open_dir_to_lookup(OsStr::from_bytes(n)),
        }
    }

    /// Opens the entry for reading; a symlink in its place is refused.
    fn open_file(&self) -> io::Result<File> {
        match self {
            Loc::Root(p) => crate::fs::open_nofollow(p),
            Loc::In(d, n) => d.open_file(n),
        }
    }

    fn read_link(&self) -> io::Result<Vec<u8>> {
        match self {
            Loc::Root(p) => std::fs::read_link(p).map(|t| t.into_os_string().into_vec()),
            Loc::In(d, n) => d.read_link(n),
        }
    }
}

/// The paths of a directory's children, for pattern matching, built one
/// at a time in one buffer.
struct ChildPaths {
    buf: Vec<u8>,
    base: usize,
}

impl ChildPaths {
    fn new(dir: &Path) -> ChildPaths {
        let mut buf = dir.as_os_str().as_bytes().to_vec();
        if buf.last() != Some(&b'/') {
            buf.push(b'/');
        }
        ChildPaths { base: buf.len(), buf }
    }

    /// The path of child `name` (as `Path::join` makes it).
    fn get(&mut self, name: &[u8]) -> &Path {
        self.buf.truncate(self.base);
        self.buf.extend_from_slice(name);
        Path::new(OsStr::from_bytes(&self.buf))
    }
}

/// The stat cache fields of `st`, as [`stat_of`] takes them from the same
/// entry's `Metadata`.
#[allow(clippy::unnecessary_cast)] // the field types differ between targets
pub(crate) fn stat_of_raw(st: &libc::stat) -> Stat {
    Stat {
        size: st.st_size as u64,
        mtime: Timestamp { secs: st.st_mtime as i64, nanos: st.st_mtime_nsec as u32 },
        ctime: Timestamp { secs: st.st_ctime as i64, nanos: st.st_ctime_nsec as u32 },
        ino: st.st_ino as u64,
        dev: st.st_dev as u64,
        mode: st.st_mode as u32,
        uid: st.st_uid as u32,
        gid: st.st_gid as u32,
    }
}

/// The stat cache fields of `md`.
pub(crate) fn stat_of(md: &Metadata) -> Stat {
    Stat {
        size: md.size(),
        mtime: Timestamp { secs: md.mtime(), nanos: md.mtime_nsec() as u32 },
        ctime: Timestamp { secs: md.ctime(), nanos: md.ctime_nsec() as u32 },
        ino: md.ino(),
        dev: md.dev(),
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;

    /// Run once, when the directory at its path has been opened and
    /// listed, before its entries are looked at.
    type Hook = (PathBuf, Box<dyn FnOnce() + Send>);
    static AFTER_LISTING: Mutex<Option<Hook>> = Mutex::new(None);

    pub(super) fn after_listing(dir: &Path) {
        let mut hook = AFTER_LISTING.lock().expect("poisoned");
        if hook.as_ref().is_some_and(|(p, _)| p == dir) {
            let (_, f) = hook.take().expect("just checked");
            drop(hook);
            f();
        }
    }

    /// A directory swapped for a symlink to a directory outside the tree
    /// after it was listed, before its entries are looked at: the entries
    /// are looked up in the directory listed, never through the link.
    #[test]
    fn a_directory_swapped_for_a_symlink_after_its_listing_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let (tree, outside) = (d.path().join("tree"), d.path().join("outside"));
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("sub/f"), b"inside").unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("f"), b"outside!").unwrap();
        let src = format!("group g {{ host h; key {}/key; include {}; }}", d.path().display(), tree.display());
        let config = crate::config::parse_str(&src, Path::new("t.cfg")).unwrap();
        let engine = Engine::open(&config, "h", &d.path().join("state")).unwrap();
        let w = engine.store.writer_blocking();
        engine.check(&w, &[], &crate::progress::Quiet, None).unwrap();
        // The file changes (so its stat cache does not spare the lookup),
        // then the directory goes and a link to `outside` takes its name.
        std::fs::write(tree.join("sub/f"), b"inside, changed").unwrap();
        let (sub, moved) = (tree.join("sub"), d.path().join("moved"));
        let swap = {
            let (sub, moved, outside) = (sub.clone(), moved.clone(), outside.clone());
            move || {
                std::fs::rename(&sub, &moved).unwrap();
                std::os::unix::fs::symlink(&outside, &sub).unwrap();
            }
        };
        *AFTER_LISTING.lock().unwrap() = Some((sub.clone(), Box::new(swap)));
        engine.check(&w, &[], &crate::progress::Quiet, None).unwrap();
        assert!(AFTER_LISTING.lock().unwrap().is_none(), "the hook ran");
        assert!(std::fs::symlink_metadata(&sub).unwrap().file_type().is_symlink());
        let records: Vec<(Vec<u8>, DirRecord)> = engine.store.all_dir_records("g").collect::<Result<_, _>>().unwrap();
        let sizes: Vec<u64> = records
            .iter()
            .flat_map(|(_, r)| &r.children)
            .filter(|(n, _)| n == b"f")
            .map(|(_, r)| match r.body {
                Body::File { size, .. } => size,
                _ => panic!("f is a file"),
            })
            .collect();
        assert_eq!(sizes, vec![b"inside, changed".len() as u64], "what was recorded is the listed directory's file");
    }

    /// The stat cache taken through a directory descriptor is the one a
    /// path's `lstat` gives, field for field: a scan after an upgrade
    /// reads no file again.
    #[test]
    fn a_stat_through_the_directory_equals_the_stat_by_path() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"data").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("f", d.path().join("link")).unwrap();
        let dir = Dir::open(d.path()).unwrap();
        for name in ["f", "sub", "link"] {
            let by_path = stat_of(&std::fs::symlink_metadata(d.path().join(name)).unwrap());
            assert_eq!(Loc::In(&dir, name.as_bytes()).lstat().unwrap(), by_path, "{name}");
        }
        let sub = Loc::In(&dir, b"sub").open_dir(true).unwrap();
        assert_eq!(
            stat_of_raw(&sub.stat().unwrap()),
            stat_of(&std::fs::symlink_metadata(d.path().join("sub")).unwrap())
        );
        assert_eq!(Loc::In(&dir, b"link").read_link().unwrap(), b"f");
        assert!(Loc::In(&dir, b"link").open_dir(true).is_err(), "a link is not opened as a directory");
        assert!(Loc::In(&dir, b"link").open_dir(false).is_err(), "not even to look below it");
        assert!(Loc::In(&dir, b"link").open_file().is_err(), "nor as a file");
    }
}
