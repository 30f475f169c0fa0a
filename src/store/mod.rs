//! The node's state: a fjall database in the state directory.
//!
//! Terms:
//! - The *state directory* holds one node's state for one config and one
//!   host name: a `lock` file and the `db` database.
//! - An *entry record* ([`EntryRecord`]) is what the node knows of one
//!   tracked path: the kept metadata and body (as in the Merkle tree), a
//!   file's chunk list, the stat cache that lets a rescan skip unchanged
//!   files, the version vector used for reconciling, and whether it is a
//!   *tombstone* (deleted). A *directory record* ([`DirRecord`]) holds the
//!   entry records of one directory's children.
//! - *Nodes* (tree hash → encoded directory node) and their *manifests*
//!   (tree hash → the chunk lists of the node's files, in entry order) are
//!   content-addressed and shared by the live tree and every generation.
//! - A *generation* ([`Generation`]) is a recorded root set of one group.
//!   Which generations stay is the *retention* plan (`retention.rs`),
//!   built on the differences between consecutive generations
//!   (`diff.rs`); the collector (`gc.rs`) drops the others.
//!
//! The state directory, its lock and its database are readable by their
//! owner only; opening the store tightens any looser mode it finds
//! (`private.rs`).
//!
//! Beside the database, the *marker* (`marker.rs`) keeps the store id, the
//! highest version counter and generation id ever handed out, and the chunk
//! store names, so a damaged, truncated or removed database is detected
//! and a fresh one continues the ids instead of starting over. A database
//! that cannot be opened is moved aside (`db.damaged-TIME`) and a fresh
//! state is built from the live trees; [`Store::damage`] says what was
//! found, naming `snapsync verify --repair`.
//!
//! Keyspaces: `meta` (counters, format, per-group root sets), `dirs`,
//! `nodes`, `manifests`, `generations`. Chunk bytes live apart, in a
//! [`ChunkStore`] under the group's backup directory. All writes of one run
//! go into one [`fjall::OwnedWriteBatch`], committed atomically and synced
//! (docs/design.md, "Write ordering").

mod chunks;
mod conflict;
mod diff;
mod error;
mod gc;
mod generation;
mod marker;
mod private;
mod record;
mod retention;
mod writer;

/// Version vectors and logical paths are the tree's vocabulary, which the
/// wire format shares; the records use them.
pub use crate::tree::{Version, join_logical};
pub use chunks::ChunkStore;
pub use conflict::{Conflict, Force};
pub use diff::{DiffScope, Side, diff_trees, entry_at};
pub use error::StoreError;
pub use gc::{GcDebt, GcGroup, GcReport, collect_garbage, collect_if_due};
pub use generation::Generation;
pub use private::{PRIVATE_UMASK, original_umask, restrict_umask};
pub use record::{
    DirRecord, DirView, EntryBrief, EntryRecord, Stat, dir_key, split_dir_key, version_digest, xor_dir_digest,
    xor_entry_digest,
};
pub use retention::{KeepReason, Retention, plan as retention_plan};
pub use writer::Writer;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::chunk::ChunkRef;
use crate::hash::Hash;
use crate::tree::{Node, RootSet};

/// Version of the state layout; stored under `meta/format`.
pub const STATE_FORMAT: u32 = 1;

const KEY_FORMAT: &[u8] = b"format";
const KEY_SEQ: &[u8] = b"seq";
const KEY_NEXT_GENERATION: &[u8] = b"next-generation";
const KEY_GC_DEBT: &[u8] = b"gc-debt";
const ROOT_PREFIX: &[u8] = b"root\0";
const CHUNK_STORE_PREFIX: &[u8] = b"chunk-store\0";
const GROUP_STORE_PREFIX: &[u8] = b"group-store\0";
/// What a group's directory records were listed under
/// ([`crate::scan::listing_fingerprint`]).
const LISTING_PREFIX: &[u8] = b"listing\0";
/// The kept version digests. The key changed with the rule that a
/// tombstone under the empty version has no share
/// ([`crate::store::xor_entry_digest`]): a digest kept under the earlier
/// key may count such tombstones, so it is left behind and computed again
/// from the records (then kept under this key), and removed when the new
/// one is written.
const VERSION_DIGEST_PREFIX: &[u8] = b"vdigest2\0";
/// The key of digests kept before [`VERSION_DIGEST_PREFIX`].
const OLD_VERSION_DIGEST_PREFIX: &[u8] = b"vdigest\0";

/// One node's open state database. Holding it holds the state lock.
pub struct Store {
    dir: PathBuf,
    /// The open database; replaced when it is reopened after a failed
    /// write ([`Store::reopen`]). `None` only while that happens.
    h: std::sync::RwLock<Option<Arc<Handles>>>,
    /// Bytes committed since the memtables were last flushed.
    unflushed: std::sync::atomic::AtomicU64,
    /// The marker as last written, and the counters committed since;
    /// held across a commit.
    marker: std::sync::Mutex<MarkerState>,
    /// Damage found when opening, as messages for the operator.
    damage: Vec<String>,
    /// Held by whatever writes the state ([`Writer`]).
    writer: writer::WriterLock,
    _lock: File,
}

/// The marker as last written, and the counters the database holds
/// committed now (the next marker's settled ones).
#[derive(Default)]
struct MarkerState {
    written: marker::Marker,
    committed: (u64, u64),
}

/// The open database and its keyspaces, before they become a [`Store`].
struct Handles {
    db: Database,
    meta: Keyspace,
    dirs: Keyspace,
    nodes: Keyspace,
    manifests: Keyspace,
    generations: Keyspace,
}

/// Block cache of a database (state or chunk store): the directory
/// records a scan or a listing reads again. fjall's default is 32 MiB.
pub(crate) const DB_CACHE_BYTES: u64 = 8 << 20;

/// Writes a keyspace holds in memory before flushing them to its tables
/// (fjall's default is 64 MiB). Every put of a directory record stays in
/// the memtable until the flush, superseded ones too, so a first sync of a
/// large tree would otherwise keep tens of megabytes of old records
/// resident. fjall stores the size with the keyspace when it creates it:
/// databases made before this setting keep 64 MiB.
pub(crate) const DB_MEMTABLE_BYTES: u64 = 8 << 20;

/// Opens the state database. fjall checks some of what it replays with
/// assertions: a damaged journal can panic instead of returning an error,
/// so a panic while opening counts as damage too.
fn open_db(db_path: &Path) -> Result<Handles, fjall::Error> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| open_db_inner(db_path));
    std::panic::set_hook(hook);
    opened.unwrap_or(Err(fjall::Error::Unrecoverable))
}

fn open_db_inner(db_path: &Path) -> Result<Handles, fjall::Error> {
    // No journal compression: fjall re-encodes every journal entry when
    // it replays the journal on open, and compressing them again costs
    // more there than the disk space saves.
    let db = Database::builder(db_path)
        .journal_compression(fjall::CompressionType::None)
        .cache_size(DB_CACHE_BYTES)
        .open()?;
    let ks = |name: &str| db.keyspace(name, || KeyspaceCreateOptions::default().max_memtable_size(DB_MEMTABLE_BYTES));
    Ok(Handles {
        meta: ks("meta")?,
        dirs: ks("dirs")?,
        nodes: ks("nodes")?,
        manifests: ks("manifests")?,
        generations: ks("generations")?,
        db,
    })
}

/// Whether a database error means the files are damaged (as opposed to the
/// environment failing: permissions, a full disk, a lock).
pub(crate) fn is_damage(e: &fjall::Error) -> bool {
    fn io_damage(e: &std::io::Error) -> bool {
        use std::io::ErrorKind::*;
        matches!(e.kind(), UnexpectedEof | InvalidData)
    }
    match e {
        fjall::Error::Locked | fjall::Error::Poisoned | fjall::Error::KeyspaceDeleted => false,
        fjall::Error::Io(io) => io_damage(io),
        fjall::Error::Storage(fjall::LsmError::Io(io)) => io_damage(io),
        _ => true,
    }
}

/// Renames a damaged database directory to `PATH.damaged-SECONDS` (a
/// number appended if that exists) and returns the new name.
pub(crate) fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let base = format!("{}.damaged-{secs}", path.display());
    let mut aside = PathBuf::from(&base);
    let mut n = 1;
    while std::fs::symlink_metadata(&aside).is_ok() {
        aside = PathBuf::from(format!("{base}.{n}"));
        n += 1;
    }
    std::fs::rename(path, &aside).map_err(|e| StoreError::io(path, e))?;
    Ok(aside)
}

/// Closes the database in `slot` and opens the one at `path` again (see
/// [`Store::reopen`]). Fails, keeping the old one, if another task still
/// holds it after a bounded wait.
pub(crate) fn reopen<H>(
    slot: &std::sync::RwLock<Option<Arc<H>>>,
    path: &Path,
    open: fn(&Path) -> Result<H, fjall::Error>,
) -> Result<(), String> {
    let mut slot = slot.write().expect("database handle lock");
    let Some(mut old) = slot.take() else { return Err("the database is not open".into()) };
    // Readers that took the database before the write lock finish their
    // read and let go; new ones wait on the lock. Bounded: a holder that
    // does not let go within a second keeps the old one.
    let mut tries = 0;
    loop {
        match Arc::try_unwrap(old) {
            Ok(handles) => {
                drop(handles);
                break;
            }
            Err(still) if tries < 100 => {
                old = still;
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(still) => {
                *slot = Some(still);
                return Err("another task still uses the database; restart the daemon".into());
            }
        }
    }
    let mut last = String::new();
    // fjall joins its workers on close; a second try covers a worker that
    // still held its lock file for a moment.
    for _ in 0..2 {
        match open(path) {
            Ok(h) => {
                *slot = Some(Arc::new(h));
                return Ok(());
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("reopening failed ({last}); restart the daemon"))
}

/// The file that flags the state database as damaged for the next open.
const DAMAGE_FLAG: &str = "damaged";

/// The repair command every damage message names.
pub const REPAIR_COMMAND: &str = "snapsync verify --repair";

/// Above this many bytes of unflushed writes, closing the store flushes
/// its memtables. fjall otherwise replays the journal into memory on the
/// next open, which after a first scan of 100k files costs more than the
/// scan of an unchanged tree itself.
const FLUSH_ON_CLOSE_BYTES: u64 = 1 << 20;

impl Store {
    /// Opens (creating if needed) the state in `dir`, taking its lock.
    /// The directory, the lock file and everything in the database are
    /// made owner-only (0700 directories, 0600 files) if they are not.
    ///
    /// Fails with [`StoreError::Locked`] when another process holds it.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        private::private_dir(dir)?;
        let lock = take_lock(dir)?;
        private::tighten(&dir.join(LOCK_FILE))?;
        let mut damage = Vec::new();
        let marker = match marker::Marker::read(dir) {
            Ok(m) => m,
            Err(e) => {
                damage.push(format!("{e}; it is written again from the state database"));
                None
            }
        };
        let db_path = dir.join("db");
        let flag = dir.join(DAMAGE_FLAG);
        if let Ok(why) = std::fs::read_to_string(&flag) {
            if std::fs::symlink_metadata(&db_path).is_ok() {
                let aside = move_aside(&db_path)?;
                damage.push(format!(
                    "state database {} was found damaged while reading ({}); it was moved to {} and a fresh \
                     state is built from the live trees; generations recorded before are no longer listed; \
                     run `{REPAIR_COMMAND}`",
                    db_path.display(),
                    why.trim(),
                    aside.display()
                ));
            }
            std::fs::remove_file(&flag).map_err(|e| StoreError::io(&flag, e))?;
        }
        let db_was_there = std::fs::symlink_metadata(&db_path).is_ok();
        // The holder of the lock tightens: a running daemon's files are its own.
        private::private_dir(&db_path)?;
        private::tighten_tree(&db_path)?;
        let handles = match open_db(&db_path) {
            Ok(h) => h,
            Err(e) if is_damage(&e) => {
                let aside = move_aside(&db_path)?;
                damage.push(format!(
                    "state database {} cannot be opened ({e}); it was moved to {} and a fresh state is built \
                     from the live trees; generations recorded before are no longer listed; run `{REPAIR_COMMAND}`",
                    db_path.display(),
                    aside.display()
                ));
                private::private_dir(&db_path)?;
                open_db(&db_path).map_err(|e| StoreError::db(&db_path, e))?
            }
            Err(e) => return Err(StoreError::db(&db_path, e)),
        };
        let handles = if handles.meta.get(KEY_FORMAT).map_err(|e| StoreError::db(&db_path, e))?.is_none()
            && !(handles.dirs.is_empty().map_err(|e| StoreError::db(&db_path, e))?
                && handles.generations.is_empty().map_err(|e| StoreError::db(&db_path, e))?
                && handles.nodes.is_empty().map_err(|e| StoreError::db(&db_path, e))?)
        {
            // Records without their meta keyspace: counters, root sets and
            // chunk store links are gone, so the records cannot be trusted.
            drop(handles);
            let aside = move_aside(&db_path)?;
            damage.push(format!(
                "state database {} lost its meta keyspace; it was moved to {} and a fresh state is built \
                 from the live trees; generations recorded before are no longer listed; run `{REPAIR_COMMAND}`",
                db_path.display(),
                aside.display()
            ));
            private::private_dir(&db_path)?;
            open_db(&db_path).map_err(|e| StoreError::db(&db_path, e))?
        } else {
            handles
        };
        let store = Store {
            h: std::sync::RwLock::new(Some(Arc::new(handles))),
            dir: dir.to_path_buf(),
            unflushed: std::sync::atomic::AtomicU64::new(0),
            marker: Default::default(),
            damage,
            writer: Default::default(),
            _lock: lock,
        };
        let mut store = store;
        store.check_format(marker, db_was_there)?;
        Ok(store)
    }

    /// Damage found when the state was opened (and what was done about
    /// it), one message each; empty when none. Each names the repair
    /// command.
    pub fn damage(&self) -> &[String] {
        &self.damage
    }

    /// Whether a read found the open database damaged: it is flagged for
    /// the next open to move aside (see `Store::err`).
    pub fn found_damaged(&self) -> bool {
        std::fs::symlink_metadata(self.dir.join(DAMAGE_FLAG)).is_ok()
    }

    /// The state's store id, made once and kept in the marker.
    pub fn store_id(&self) -> String {
        self.marker.lock().expect("marker lock").written.store_id.clone()
    }

    /// The open database.
    fn h(&self) -> Arc<Handles> {
        self.h
            .read()
            .expect("state handle lock")
            .clone()
            .unwrap_or_else(|| panic!("state database {} could not be reopened", self.dir.display()))
    }

    /// Closes and reopens the database after a failed write. fjall
    /// *poisons* a database whose journal write or sync failed (a full
    /// disk): every later write fails until it is reopened, which a
    /// daemon otherwise never does. Fails if another task still holds the
    /// old database (it is kept then, and the message says to restart).
    fn reopen(&self) -> Result<(), String> {
        reopen(&self.h, &self.dir.join("db"), open_db)
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checks the format and squares the database with the marker: a new
    /// database starts from the marker's counters (and says so when the
    /// marker shows an earlier state existed), a database behind its
    /// marker is raised to it, and a missing marker is written.
    fn check_format(&mut self, marker: Option<marker::Marker>, db_was_there: bool) -> Result<(), StoreError> {
        let fresh = match self.h().meta.get(KEY_FORMAT).map_err(|e| self.err(e))? {
            None => true,
            Some(v) => {
                let found =
                    u32::from_be_bytes(v.as_ref().try_into().map_err(|_| self.corrupt("meta/format", "not 4 bytes"))?);
                if found != STATE_FORMAT {
                    return Err(StoreError::Format { path: self.dir.clone(), found, expected: STATE_FORMAT });
                }
                false
            }
        };
        let mut m = match marker {
            Some(m) => m,
            None => marker::Marker::new()?,
        };
        if fresh {
            let before = m.seq > 0 || m.next_generation > 1 || !m.chunk_stores.is_empty();
            if before && self.damage.is_empty() {
                let what = if db_was_there { "is empty (its journal was truncated or removed)" } else { "is missing" };
                self.damage.push(format!(
                    "state database {} {what}; a fresh state is built from the live trees, version counters \
                     continue after {} and generation ids at {}; generations recorded before are no longer \
                     listed; run `{REPAIR_COMMAND}`",
                    self.dir.join("db").display(),
                    m.seq,
                    m.next_generation
                ));
            }
            // Nothing else can hold the writer of a store being opened.
            let w = self.try_writer().expect("a store being opened has no other writer");
            let mut batch = self.batch(&w);
            batch.insert(&self.h().meta, KEY_FORMAT, STATE_FORMAT.to_be_bytes());
            batch.put_seq(m.seq);
            batch.insert(&self.h().meta, KEY_NEXT_GENERATION, m.next_generation.max(1).to_be_bytes());
            for (d, n) in &m.chunk_stores {
                batch.put_chunk_store_name(d, n);
            }
            batch.inner_commit()?;
        } else {
            let (seq, next) = (self.seq()?, self.next_generation_id()?);
            if seq < m.seq || next < m.next_generation {
                if m.lost_commits(seq, next) {
                    let mut behind = Vec::new();
                    if seq < m.seq {
                        behind.push(format!("version counter {seq} < {}", m.seq));
                    }
                    if next < m.next_generation {
                        behind.push(format!("next generation {next} < {}", m.next_generation));
                    }
                    self.damage.push(format!(
                        "state database {} is behind its marker ({}): commits it had acknowledged were lost \
                         (a truncated or damaged journal); ids continue from the marker; run `{REPAIR_COMMAND}`",
                        self.dir.join("db").display(),
                        behind.join(", ")
                    ));
                } else {
                    // Only the commit the marker announced last is missing:
                    // the process stopped before it committed, so it was
                    // never acknowledged and its writes are all absent.
                    tracing::info!(
                        "state database {}: the last commit was interrupted before it was written; ids continue \
                         from the marker",
                        self.dir.join("db").display()
                    );
                }
                let w = self.try_writer().expect("a store being opened has no other writer");
                let mut batch = self.batch(&w);
                batch.put_seq(seq.max(m.seq));
                batch.insert(&self.h().meta, KEY_NEXT_GENERATION, next.max(m.next_generation).to_be_bytes());
                batch.inner_commit()?;
            }
            m.seq = m.seq.max(seq);
            m.next_generation = m.next_generation.max(next);
            for guard in self.h().meta.prefix(CHUNK_STORE_PREFIX) {
                let (k, v) = guard.into_inner().map_err(|e| self.err(e))?;
                let d = PathBuf::from(std::ffi::OsStr::from_bytes(&k[CHUNK_STORE_PREFIX.len()..]));
                if m.chunk_store(&d).is_none() {
                    m.chunk_stores.push((d, String::from_utf8_lossy(&v).into_owned()));
                }
            }
        }
        // Everything the database holds now is committed and synced.
        (m.settled_seq, m.settled_next_generation) = (m.seq, m.next_generation.max(1));
        let on_disk = marker::Marker::read(&self.dir).ok().flatten();
        if on_disk.as_ref() != Some(&m) {
            m.write(&self.dir)?;
        }
        let committed = (m.seq, m.next_generation.max(1));
        *self.marker.get_mut().expect("marker lock") = MarkerState { written: m, committed };
        Ok(())
    }

    /// The error for a failed read or write. Damage found while the
    /// database is open (a table block that fails its checksum) cannot be
    /// moved aside under the open database: it is flagged in
    /// `STATE/damaged`, and the next open moves the database aside.
    fn err(&self, e: fjall::Error) -> StoreError {
        if !is_damage(&e) {
            return StoreError::db(&self.dir, e);
        }
        let flag = self.dir.join(DAMAGE_FLAG);
        if let Err(io) = std::fs::write(&flag, e.to_string()) {
            tracing::error!("{}: {io}", flag.display());
        }
        StoreError::Corrupt {
            path: self.dir.join("db"),
            what: "state database".into(),
            why: format!(
                "{e}; the next open of the state (the next command, or a restart of the daemon that holds \
                 it) moves it aside and builds a fresh state from the live trees"
            ),
        }
    }

    fn corrupt(&self, what: &str, why: impl Into<String>) -> StoreError {
        StoreError::Corrupt { path: self.dir.clone(), what: what.to_owned(), why: why.into() }
    }

    fn get_u64(&self, key: &[u8]) -> Result<u64, StoreError> {
        match self.h().meta.get(key).map_err(|e| self.err(e))? {
            None => Ok(0),
            Some(v) => {
                Ok(u64::from_be_bytes(v.as_ref().try_into().map_err(|_| self.corrupt("meta counter", "not 8 bytes"))?))
            }
        }
    }

    /// What changed since the last collection ([`GcDebt`]).
    pub fn gc_debt(&self) -> Result<GcDebt, StoreError> {
        match self.h().meta.get(KEY_GC_DEBT).map_err(|e| self.err(e))? {
            None => Ok(GcDebt::default()),
            Some(v) => postcard::from_bytes(&v).map_err(|e| self.corrupt("collection debt", e.to_string())),
        }
    }

    /// The last version counter this node handed out (0 if none yet).
    pub fn seq(&self) -> Result<u64, StoreError> {
        self.get_u64(KEY_SEQ)
    }

    /// Waits for the right to write the state ([`Writer`]).
    pub async fn writer(&self) -> Writer {
        Writer::acquire(&self.writer).await
    }

    /// Waits for the right to write the state on this thread, which must
    /// not be a runtime worker (a command's own thread, a blocking task).
    pub fn writer_blocking(&self) -> Writer {
        Writer::acquire_blocking(&self.writer)
    }

    /// The right to write the state, if no one holds it now.
    pub fn try_writer(&self) -> Option<Writer> {
        Writer::try_acquire(&self.writer)
    }

    /// Hands out the next version counter and commits it at once, for a
    /// version made outside a scan (a conflict settled during a reconcile).
    pub fn allocate_seq(&self, w: &Writer) -> Result<u64, StoreError> {
        let seq = self.seq()? + 1;
        let mut batch = self.batch(w);
        batch.put_seq(seq);
        batch.commit()?;
        Ok(seq)
    }

    /// The id the next generation will get (ids start at 1).
    pub fn next_generation_id(&self) -> Result<u64, StoreError> {
        Ok(self.get_u64(KEY_NEXT_GENERATION)?.max(1))
    }

    /// The record of directory `dir` (a logical path; empty for the
    /// include roots) of `group`.
    pub fn dir_record(&self, group: &str, dir: &[u8]) -> Result<Option<DirRecord>, StoreError> {
        match self.h().dirs.get(dir_key(group, dir)).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(v) => DirRecord::decode(&v).map(Some).map_err(|why| self.corrupt("directory record", why)),
        }
    }

    /// The record of directory `dir` of `group` as a scan reads it
    /// ([`DirView`]).
    pub fn dir_view(&self, group: &str, dir: &[u8]) -> Result<Option<DirView>, StoreError> {
        match self.h().dirs.get(dir_key(group, dir)).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(v) => DirView::decode(v.to_vec()).map(Some).map_err(|why| self.corrupt("directory record", why)),
        }
    }

    /// The record of `name` in directory `parent` of `group`.
    pub fn entry(&self, group: &str, parent: &[u8], name: &[u8]) -> Result<Option<EntryRecord>, StoreError> {
        Ok(self.dir_record(group, parent)?.and_then(|d| d.get(name).cloned()))
    }

    /// The records of directory `dir` and of every directory below it, as
    /// `(logical path, record)`. Used when a directory disappears.
    pub fn dir_records_below(&self, group: &str, dir: &[u8]) -> Result<Vec<(Vec<u8>, DirRecord)>, StoreError> {
        let mut out = Vec::new();
        if let Some(d) = self.dir_record(group, dir)? {
            out.push((dir.to_vec(), d));
        }
        let mut below = dir.to_vec();
        below.push(b'/');
        for guard in self.h().dirs.prefix(dir_key(group, &below)) {
            let (k, v) = guard.into_inner().map_err(|e| self.err(e))?;
            let (_, path) = split_dir_key(&k).ok_or_else(|| self.corrupt("directory key", "malformed"))?;
            out.push((path.to_vec(), DirRecord::decode(&v).map_err(|why| self.corrupt("directory record", why))?));
        }
        Ok(out)
    }

    /// About how many directory records the state holds, all groups
    /// together (fjall's estimate: overwritten records may count twice).
    /// Costs nothing; sizes work that scales with the tree.
    pub fn approximate_dirs(&self) -> usize {
        self.h().dirs.approximate_len()
    }

    /// Every directory record of `group`, in key order.
    pub fn all_dir_records(&self, group: &str) -> impl Iterator<Item = Result<(Vec<u8>, DirRecord), StoreError>> + '_ {
        self.h().dirs.prefix(dir_key(group, b"")).map(move |guard| {
            let (k, v) = guard.into_inner().map_err(|e| self.err(e))?;
            let (_, path) = split_dir_key(&k).ok_or_else(|| self.corrupt("directory key", "malformed"))?;
            Ok((path.to_vec(), DirRecord::decode(&v).map_err(|why| self.corrupt("directory record", why))?))
        })
    }

    /// The name of this node's chunk store in backup directory `dir`, once
    /// one was made there.
    pub fn chunk_store_name(&self, dir: &Path) -> Result<Option<String>, StoreError> {
        if let Some(name) = self.meta_string(&[CHUNK_STORE_PREFIX, dir.as_os_str().as_encoded_bytes()].concat())? {
            return Ok(Some(name));
        }
        Ok(self.marker.lock().expect("marker lock").written.chunk_store(dir).map(str::to_owned))
    }

    /// The chunk store (by name) that `group`'s records marked `stored`
    /// refer to.
    pub fn group_store(&self, group: &str) -> Result<Option<String>, StoreError> {
        self.meta_string(&[GROUP_STORE_PREFIX, group.as_bytes()].concat())
    }

    /// What `group`'s directory records were listed under, once a full
    /// scan recorded it ([`crate::scan::listing_fingerprint`]).
    pub fn listing_fingerprint(&self, group: &str) -> Result<Option<Hash>, StoreError> {
        match self.h().meta.get([LISTING_PREFIX, group.as_bytes()].concat()).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(v) => {
                Hash::from_slice(&v).map(Some).ok_or_else(|| self.corrupt("listing fingerprint", "not 32 bytes"))
            }
        }
    }

    fn meta_string(&self, key: &[u8]) -> Result<Option<String>, StoreError> {
        match self.h().meta.get(key).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(v) => String::from_utf8(v.to_vec()).map(Some).map_err(|_| self.corrupt("meta name", "not UTF-8")),
        }
    }

    /// The groups this state holds a tree for.
    pub fn groups_with_state(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for guard in self.h().meta.prefix(ROOT_PREFIX) {
            let k = guard.key().map_err(|e| self.err(e))?;
            out.push(String::from_utf8_lossy(&k[ROOT_PREFIX.len()..]).into_owned());
        }
        Ok(out)
    }

    /// The current root set of `group`, if it was ever scanned.
    pub fn root_set(&self, group: &str) -> Result<Option<RootSet>, StoreError> {
        let key = [ROOT_PREFIX, group.as_bytes()].concat();
        match self.h().meta.get(key).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(v) => postcard::from_bytes(&v).map(Some).map_err(|e| self.corrupt("root set", e.to_string())),
        }
    }

    /// A directory node by tree hash, decoded and checked.
    pub fn node(&self, hash: &Hash) -> Result<Option<Node>, StoreError> {
        match self.h().nodes.get(hash.as_bytes()).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(v) => {
                if Node::hash_encoded(&v) != *hash {
                    return Err(self.corrupt(&format!("tree node {hash}"), "hash mismatch"));
                }
                Node::decode(&v).map(Some).map_err(|e| self.corrupt(&format!("tree node {hash}"), e.to_string()))
            }
        }
    }

    /// The chunk lists of a node's entries (empty for non-files), checked
    /// against the node's content hashes.
    pub fn manifest(&self, tree: &Hash, node: &Node) -> Result<Vec<Vec<ChunkRef>>, StoreError> {
        let what = || format!("manifest of tree node {tree}");
        let v = self
            .h()
            .manifests
            .get(tree.as_bytes())
            .map_err(|e| self.err(e))?
            .ok_or_else(|| self.corrupt(&what(), "missing"))?;
        let lists: Vec<Vec<ChunkRef>> = postcard::from_bytes(&v).map_err(|e| self.corrupt(&what(), e.to_string()))?;
        if lists.len() != node.entries.len() {
            return Err(self.corrupt(&what(), "entry count differs from the node's"));
        }
        for (e, chunks) in node.entries.iter().zip(&lists) {
            if let crate::tree::Body::File { content, .. } = &e.body
                && crate::chunk::content_hash(chunks) != *content
            {
                return Err(self.corrupt(&what(), "a chunk list does not match its content hash"));
            }
        }
        Ok(lists)
    }

    /// All generations, oldest first.
    pub fn generations(&self) -> Result<Vec<Generation>, StoreError> {
        let mut out = Vec::new();
        for guard in self.h().generations.iter() {
            let (_, v) = guard.into_inner().map_err(|e| self.err(e))?;
            out.push(postcard::from_bytes(&v).map_err(|e| self.corrupt("generation", e.to_string()))?);
        }
        Ok(out)
    }

    /// One generation by id.
    pub fn generation(&self, id: u64) -> Result<Option<Generation>, StoreError> {
        match self.h().generations.get(id.to_be_bytes()).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(v) => postcard::from_bytes(&v).map(Some).map_err(|e| self.corrupt("generation", e.to_string())),
        }
    }

    /// The version digest of `group` ([`version_digest`]) as last
    /// committed; computed from the records when the state has none yet
    /// (a state written before digests were kept).
    pub fn version_digest(&self, group: &str) -> Result<Hash, StoreError> {
        let key = [VERSION_DIGEST_PREFIX, group.as_bytes()].concat();
        if let Some(v) = self.h().meta.get(key).map_err(|e| self.err(e))? {
            return Hash::from_slice(&v).ok_or_else(|| self.corrupt("version digest", "not 32 bytes"));
        }
        let mut acc = [0u8; 32];
        for item in self.all_dir_records(group) {
            let (dir, rec) = item?;
            xor_dir_digest(&mut acc, &dir, &rec);
        }
        Ok(Hash(acc))
    }

    /// Unresolved conflicts of every group, by group and path.
    pub fn conflicts(&self) -> Result<Vec<Conflict>, StoreError> {
        let mut out = Vec::new();
        for guard in self.h().meta.prefix(conflict::CONFLICT_PREFIX) {
            let (_, v) = guard.into_inner().map_err(|e| self.err(e))?;
            out.push(postcard::from_bytes(&v).map_err(|e| self.corrupt("conflict", e.to_string()))?);
        }
        Ok(out)
    }

    /// Unresolved conflicts on one path of `group`, one per peer.
    pub fn conflicts_of(&self, group: &str, path: &[u8]) -> Result<Vec<Conflict>, StoreError> {
        let mut out = Vec::new();
        for guard in self.h().meta.prefix(conflict::path_key(conflict::CONFLICT_PREFIX, group, path)) {
            let (_, v) = guard.into_inner().map_err(|e| self.err(e))?;
            out.push(postcard::from_bytes(&v).map_err(|e| self.corrupt("conflict", e.to_string()))?);
        }
        Ok(out)
    }

    /// Unresolved conflicts on the paths strictly below `path` of `group`.
    pub fn conflicts_below(&self, group: &str, path: &[u8]) -> Result<Vec<Conflict>, StoreError> {
        let mut prefix = conflict::path_key(conflict::CONFLICT_PREFIX, group, path);
        // The path key ends in a 0 byte; below it, the path goes on with '/'.
        prefix.pop();
        prefix.push(b'/');
        let mut out = Vec::new();
        for guard in self.h().meta.prefix(prefix) {
            let (_, v) = guard.into_inner().map_err(|e| self.err(e))?;
            out.push(postcard::from_bytes(&v).map_err(|e| self.corrupt("conflict", e.to_string()))?);
        }
        Ok(out)
    }

    /// The force recorded on `path` of `group`, pending or void. A mark
    /// that does not decode (one written before forces were bound to a
    /// version) counts as none: it is void.
    pub fn force(&self, group: &str, path: &[u8]) -> Result<Option<Force>, StoreError> {
        let v = self.h().meta.get(conflict::path_key(conflict::FORCE_PREFIX, group, path)).map_err(|e| self.err(e))?;
        Ok(v.and_then(|v| postcard::from_bytes(&v).ok()))
    }

    /// Every force recorded, by group and path, pending or void (see
    /// [`Force::current`]); void marks that do not decode are left out.
    pub fn forces(&self) -> Result<Vec<Force>, StoreError> {
        let mut out = Vec::new();
        for guard in self.h().meta.prefix(conflict::FORCE_PREFIX) {
            let (_, v) = guard.into_inner().map_err(|e| self.err(e))?;
            out.extend(postcard::from_bytes::<Force>(&v).ok());
        }
        Ok(out)
    }

    /// Starts a batch of writes that commits atomically; `w` is this
    /// store's writer token, held until the batch is committed.
    ///
    /// # Panics
    /// If `w` is another store's token: a programming error.
    pub fn batch<'a>(&'a self, w: &'a Writer) -> Batch<'a> {
        assert!(w.is_of(&self.writer), "a batch was started with another store's writer token");
        let h = self.h();
        Batch {
            store: self,
            inner: h.db.batch().durability(Some(PersistMode::SyncAll)),
            h,
            empty: true,
            bytes: 0,
            seq: None,
            next_generation: None,
            chunk_stores: Vec::new(),
            digests: Default::default(),
            nodes_put: 0,
            debt: None,
        }
    }
}

/// Writes to the state that become visible together on [`Batch::commit`].
pub struct Batch<'a> {
    store: &'a Store,
    /// The database the batch writes into.
    h: Arc<Handles>,
    inner: fjall::OwnedWriteBatch,
    empty: bool,
    bytes: u64,
    /// The version counter this batch stores, for the marker.
    seq: Option<u64>,
    /// The next generation id this batch stores, for the marker.
    next_generation: Option<u64>,
    /// Chunk store names this batch records, for the marker.
    chunk_stores: Vec<(PathBuf, String)>,
    /// The version digests of the groups whose directory records this
    /// batch writes, kept up to date as it writes them and stored on
    /// commit.
    digests: std::collections::HashMap<String, PendingDigest>,
    /// Tree nodes this batch writes: each may replace one that becomes
    /// garbage, so the commit adds them to the collection debt.
    nodes_put: u64,
    /// The collection debt this batch sets (a collection, or generations
    /// dropped); the nodes it writes are added to it.
    debt: Option<GcDebt>,
}

/// A group's version digest as a batch changes it.
struct PendingDigest {
    /// The digest with the batch's writes so far.
    acc: [u8; 32],
    /// The share ([`xor_dir_digest`]) of each directory record the batch
    /// wrote, as last written.
    written: std::collections::HashMap<Vec<u8>, [u8; 32]>,
}

impl Batch<'_> {
    fn insert(&mut self, ks: &Keyspace, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.empty = false;
        self.bytes += (key.len() + value.len()) as u64;
        self.inner.insert(ks, key, value);
    }

    fn remove(&mut self, ks: &Keyspace, key: impl AsRef<[u8]>) {
        let key = key.as_ref();
        self.empty = false;
        self.bytes += key.len() as u64;
        self.inner.remove(ks, key);
    }

    /// Stores a directory record; the group's version digest follows.
    pub fn put_dir_record(&mut self, group: &str, dir: &[u8], rec: &DirRecord) -> Result<(), StoreError> {
        let mut share = [0u8; 32];
        xor_dir_digest(&mut share, dir, rec);
        self.put_dir_record_encoded(group, dir, &rec.encode(), share)
    }

    /// Stores an already encoded directory record whose digest share
    /// ([`xor_dir_digest`]) is `share`; the group's version digest follows.
    pub fn put_dir_record_encoded(
        &mut self,
        group: &str,
        dir: &[u8],
        encoded: &[u8],
        share: [u8; 32],
    ) -> Result<(), StoreError> {
        self.swap_share(group, dir, share)?;
        let h = Arc::clone(&self.h);
        self.insert(&h.dirs, dir_key(group, dir), encoded);
        Ok(())
    }

    /// Drops a directory record (the directory left the included set); the
    /// group's version digest follows.
    pub fn remove_dir_record(&mut self, group: &str, dir: &[u8]) -> Result<(), StoreError> {
        self.swap_share(group, dir, [0u8; 32])?;
        let h = Arc::clone(&self.h);
        self.remove(&h.dirs, dir_key(group, dir));
        Ok(())
    }

    /// Swaps the digest share of `dir`'s record, as last written (by this
    /// batch, or as committed), for `share`.
    fn swap_share(&mut self, group: &str, dir: &[u8], share: [u8; 32]) -> Result<(), StoreError> {
        let store = self.store;
        if !self.digests.contains_key(group) {
            let acc = store.version_digest(group)?.0;
            self.digests.insert(group.to_owned(), PendingDigest { acc, written: Default::default() });
        }
        let pending = self.digests.get_mut(group).expect("inserted above");
        let before = match pending.written.get(dir) {
            Some(share) => *share,
            None => {
                let mut before = [0u8; 32];
                if let Some(old) = store.dir_record(group, dir)? {
                    xor_dir_digest(&mut before, dir, &old);
                }
                before
            }
        };
        pending.acc.iter_mut().zip(before.iter().zip(&share)).for_each(|(d, (b, n))| *d ^= b ^ n);
        pending.written.insert(dir.to_vec(), share);
        Ok(())
    }

    /// Stores an encoded node and its encoded manifest ([`encode_manifest`]).
    pub fn put_node_encoded(&mut self, hash: &Hash, encoded: &[u8], manifest: &[u8]) {
        let h = Arc::clone(&self.h);
        self.insert(&h.nodes, hash.as_bytes(), encoded);
        self.insert(&h.manifests, hash.as_bytes(), manifest);
        self.nodes_put += 1;
    }

    /// Sets the collection debt ([`GcDebt`]) as of this batch.
    pub fn put_gc_debt(&mut self, debt: GcDebt) {
        self.debt = Some(debt);
    }

    /// Sets a group's current root set.
    pub fn put_root_set(&mut self, group: &str, roots: &RootSet) {
        let h = Arc::clone(&self.h);
        let key = [ROOT_PREFIX, group.as_bytes()].concat();
        self.insert(&h.meta, key, postcard::to_stdvec(roots).expect("encoding to a Vec cannot fail"));
    }

    /// Records the name of this node's chunk store in backup directory `dir`.
    pub fn put_chunk_store_name(&mut self, dir: &Path, name: &str) {
        let h = Arc::clone(&self.h);
        self.insert(&h.meta, [CHUNK_STORE_PREFIX, dir.as_os_str().as_encoded_bytes()].concat(), name);
        self.chunk_stores.push((dir.to_path_buf(), name.to_owned()));
    }

    /// Records which chunk store `group`'s `stored` flags refer to (`None`:
    /// none, the group keeps no backups).
    pub fn put_group_store(&mut self, group: &str, name: Option<&str>) {
        let h = Arc::clone(&self.h);
        let key = [GROUP_STORE_PREFIX, group.as_bytes()].concat();
        match name {
            Some(n) => self.insert(&h.meta, key, n),
            None => self.remove(&h.meta, key),
        }
    }

    /// Records what `group`'s directory records were listed under.
    pub fn put_listing_fingerprint(&mut self, group: &str, fingerprint: &Hash) {
        let h = Arc::clone(&self.h);
        self.insert(&h.meta, [LISTING_PREFIX, group.as_bytes()].concat(), fingerprint.as_bytes());
    }

    /// Sets a group's version digest (the batch does, on commit, for the
    /// groups whose records it wrote).
    fn put_version_digest(&mut self, group: &str, digest: &Hash) {
        let h = Arc::clone(&self.h);
        self.insert(&h.meta, [VERSION_DIGEST_PREFIX, group.as_bytes()].concat(), digest.as_bytes());
        self.remove(&h.meta, [OLD_VERSION_DIGEST_PREFIX, group.as_bytes()].concat());
    }

    /// Forgets everything about a group's tree: its root set, directory
    /// records and chunk store link. Generations are left to the collector.
    pub fn forget_group(&mut self, group: &str) -> Result<(), StoreError> {
        let (store, h) = (self.store, Arc::clone(&self.h));
        self.digests.remove(group);
        self.remove(&h.meta, [VERSION_DIGEST_PREFIX, group.as_bytes()].concat());
        self.remove(&h.meta, [OLD_VERSION_DIGEST_PREFIX, group.as_bytes()].concat());
        self.remove(&h.meta, [ROOT_PREFIX, group.as_bytes()].concat());
        self.remove(&h.meta, [GROUP_STORE_PREFIX, group.as_bytes()].concat());
        self.remove(&h.meta, [LISTING_PREFIX, group.as_bytes()].concat());
        for guard in h.dirs.prefix(dir_key(group, b"")) {
            let k = guard.key().map_err(|e| store.err(e))?;
            self.remove(&h.dirs, k);
        }
        Ok(())
    }

    /// Records (or refreshes) a conflict.
    pub fn put_conflict(&mut self, c: &Conflict) {
        let h = Arc::clone(&self.h);
        let key = conflict::conflict_key(&c.group, &c.path, &c.peer);
        self.insert(&h.meta, key, postcard::to_stdvec(c).expect("encoding to a Vec cannot fail"));
    }

    /// Drops the conflict on `path` with `peer`, if one is recorded.
    pub fn remove_conflict(&mut self, group: &str, path: &[u8], peer: &str) {
        let h = Arc::clone(&self.h);
        self.remove(&h.meta, conflict::conflict_key(group, path, peer));
    }

    /// Drops every conflict of `group` with `peer`: their trees are equal.
    pub fn clear_conflicts(&mut self, group: &str, peer: &str) -> Result<(), StoreError> {
        let store = self.store;
        for c in store.conflicts()? {
            if c.group == group && c.peer == peer {
                self.remove_conflict(group, &c.path, peer);
            }
        }
        Ok(())
    }

    /// Records a force (`snapsync force`), replacing the path's earlier one.
    pub fn put_force(&mut self, f: &Force) {
        let h = Arc::clone(&self.h);
        let key = conflict::path_key(conflict::FORCE_PREFIX, &f.group, &f.path);
        self.insert(&h.meta, key, postcard::to_stdvec(f).expect("encoding to a Vec cannot fail"));
    }

    /// Drops the force on `path` of `group`, if any.
    pub fn remove_force(&mut self, group: &str, path: &[u8]) {
        let h = Arc::clone(&self.h);
        self.remove(&h.meta, conflict::path_key(conflict::FORCE_PREFIX, group, path));
    }

    /// Stores the last version counter handed out.
    pub fn put_seq(&mut self, seq: u64) {
        let h = Arc::clone(&self.h);
        self.insert(&h.meta, KEY_SEQ, seq.to_be_bytes());
        self.seq = Some(seq);
    }

    /// Records a generation and advances the generation counter past it.
    pub fn put_generation(&mut self, g: &Generation) {
        let h = Arc::clone(&self.h);
        self.insert(&h.generations, g.id.to_be_bytes(), postcard::to_stdvec(g).expect("encoding to a Vec cannot fail"));
        self.insert(&h.meta, KEY_NEXT_GENERATION, (g.id + 1).to_be_bytes());
        self.next_generation = Some(g.id + 1);
    }

    /// Drops a generation record.
    pub fn remove_generation(&mut self, id: u64) {
        let h = Arc::clone(&self.h);
        self.remove(&h.generations, id.to_be_bytes());
    }

    pub(crate) fn remove_node(&mut self, key: &[u8]) {
        let h = Arc::clone(&self.h);
        self.remove(&h.nodes, key);
        self.remove(&h.manifests, key);
    }

    /// Commits every write of the batch atomically and syncs the journal.
    /// A batch that raises the version counter or the generation id, or
    /// records a chunk store, first writes the marker (durably), so no id
    /// the database may hold is ever handed out again.
    pub fn commit(mut self) -> Result<(), StoreError> {
        for (group, pending) in std::mem::take(&mut self.digests) {
            self.put_version_digest(&group, &Hash(pending.acc));
        }
        if self.nodes_put > 0 || self.debt.is_some() {
            let mut debt = match self.debt.take() {
                Some(d) => d,
                None => self.store.gc_debt()?,
            };
            debt.nodes = debt.nodes.saturating_add(self.nodes_put);
            let h = Arc::clone(&self.h);
            self.insert(&h.meta, KEY_GC_DEBT, postcard::to_stdvec(&debt).expect("encoding to a Vec cannot fail"));
        }
        if self.empty {
            return Ok(());
        }
        let store = self.store;
        let mut m = store.marker.lock().expect("marker lock");
        let mut raised = m.written.clone();
        if let Some(seq) = self.seq {
            raised.seq = raised.seq.max(seq);
        }
        if let Some(next) = self.next_generation {
            raised.next_generation = raised.next_generation.max(next);
        }
        for (d, n) in &self.chunk_stores {
            match raised.chunk_stores.iter_mut().find(|(x, _)| x == d) {
                Some(e) => e.1 = n.clone(),
                None => raised.chunk_stores.push((d.clone(), n.clone())),
            }
        }
        if raised != m.written {
            (raised.settled_seq, raised.settled_next_generation) = m.committed;
            raised.write(&store.dir)?;
            crate::killpoint::hit("store.commit.marker");
            m.written = raised;
        }
        let (seq, next) = (self.seq, self.next_generation);
        self.inner_commit()?;
        let committed = &mut m.committed;
        committed.0 = committed.0.max(seq.unwrap_or(0));
        committed.1 = committed.1.max(next.unwrap_or(0));
        Ok(())
    }

    /// Commits without touching the marker. A failed write (a full disk)
    /// poisons the database; it is reopened at once, so the next command
    /// can write again once the cause is fixed.
    fn inner_commit(self) -> Result<(), StoreError> {
        if self.empty {
            return Ok(());
        }
        let Batch { store, h, inner, bytes, .. } = self;
        store.unflushed.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        crate::killpoint::hit("store.commit.before");
        let e = match inner.commit() {
            Ok(()) => {
                crate::killpoint::hit("store.commit.after");
                return Ok(());
            }
            Err(e) => e,
        };
        if !matches!(e, fjall::Error::Poisoned | fjall::Error::Io(_) | fjall::Error::Storage(_)) {
            return Err(store.err(e));
        }
        drop(h);
        let reopened = store.reopen();
        match &reopened {
            Ok(()) => {
                tracing::warn!("{}: writing the state failed ({e}); the database was reopened", store.dir.display())
            }
            Err(why) => tracing::error!("{}: writing the state failed ({e}); {why}", store.dir.display()),
        }
        Err(StoreError::WriteFailed {
            path: store.dir.join("db"),
            source: Box::new(e),
            poisoned_by: None,
            reopened: reopened.err(),
        })
    }
}

impl Store {
    /// Writes what the memtables hold to the database's tables when that
    /// is over 1 MiB (`FLUSH_ON_CLOSE_BYTES`), and frees them. Called when the
    /// store closes, and by an idle daemon: memtables otherwise keep every
    /// directory record a sync wrote, superseded ones too, resident until
    /// fjall flushes them on its own.
    pub fn flush_if_large(&self) {
        use std::sync::atomic::Ordering;
        if self.unflushed.load(Ordering::Relaxed) < FLUSH_ON_CLOSE_BYTES {
            return;
        }
        let Some(h) = self.h.read().ok().and_then(|h| h.clone()) else { return };
        self.unflushed.store(0, Ordering::Relaxed);
        for ks in [&h.dirs, &h.nodes, &h.manifests, &h.meta, &h.generations] {
            if let Err(e) = ks.rotate_memtable_and_wait() {
                tracing::warn!("{}: flushing the state: {e}", self.dir.display());
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.flush_if_large();
    }
}

/// The stored form of a manifest: the chunk lists of a node's entries.
pub fn encode_manifest(manifest: &[Vec<ChunkRef>]) -> Vec<u8> {
    let mut out = postcard::to_stdvec(manifest).expect("encoding to a Vec cannot fail");
    // Held until the scan commits, as records are (`DirRecord::encode`).
    out.shrink_to_fit();
    out
}

/// The state lock file's name in the state directory.
const LOCK_FILE: &str = "lock";

/// Takes the state lock, writing our pid into the lock file. The lock is an
/// advisory `flock`, so it dies with the process: a crash leaves no stale lock.
fn take_lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| StoreError::io(&path, e))?;
    match f.try_lock() {
        Ok(()) => {
            f.set_len(0).map_err(|e| StoreError::io(&path, e))?;
            f.rewind().map_err(|e| StoreError::io(&path, e))?;
            writeln!(f, "{}", std::process::id()).map_err(|e| StoreError::io(&path, e))?;
            Ok(f)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            // The holder writes its pid just after it takes the lock.
            let pid = match pid.trim() {
                "" => "unknown".to_owned(),
                p => p.to_owned(),
            };
            Err(StoreError::Locked { path: dir.to_path_buf(), pid })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::io(&path, e)),
    }
}

pub(crate) fn keyspace_keys(ks: &Keyspace) -> impl Iterator<Item = fjall::Result<fjall::UserKey>> + '_ {
    ks.iter().map(|g| g.key())
}

impl Store {
    pub(crate) fn nodes_keyspace(&self) -> Keyspace {
        self.h().nodes.clone()
    }

    /// A consistent view of the state as last committed: every read
    /// through it sees the same commit, whatever commits land meanwhile.
    /// Answers built from several reads (a `Roots` message: the include
    /// roots' records and the version digest) take it, so they never mix
    /// two commits. Drop it soon: fjall keeps what it sees until then.
    pub fn view(&self) -> StateView<'_> {
        let h = self.h();
        StateView { store: self, snapshot: h.db.snapshot(), h }
    }
}

/// A read-only view of one commit of the state ([`Store::view`]).
pub struct StateView<'a> {
    store: &'a Store,
    /// The database the snapshot is of (kept open while the view lives).
    h: Arc<Handles>,
    snapshot: fjall::Snapshot,
}

impl StateView<'_> {
    /// The record of directory `dir` of `group` in this view
    /// ([`Store::dir_record`]).
    pub fn dir_record(&self, group: &str, dir: &[u8]) -> Result<Option<DirRecord>, StoreError> {
        use fjall::Readable;
        let s = self.store;
        match self.snapshot.get(&self.h.dirs, dir_key(group, dir)).map_err(|e| s.err(e))? {
            None => Ok(None),
            Some(v) => DirRecord::decode(&v).map(Some).map_err(|why| s.corrupt("directory record", why)),
        }
    }

    /// The version digest of `group` in this view
    /// ([`Store::version_digest`]).
    pub fn version_digest(&self, group: &str) -> Result<Hash, StoreError> {
        use fjall::Readable;
        let s = self.store;
        let key = [VERSION_DIGEST_PREFIX, group.as_bytes()].concat();
        if let Some(v) = self.snapshot.get(&self.h.meta, key).map_err(|e| s.err(e))? {
            return Hash::from_slice(&v).ok_or_else(|| s.corrupt("version digest", "not 32 bytes"));
        }
        let mut acc = [0u8; 32];
        for guard in self.snapshot.prefix(&self.h.dirs, dir_key(group, b"")) {
            let (k, v) = guard.into_inner().map_err(|e| s.err(e))?;
            let (_, dir) = split_dir_key(&k).ok_or_else(|| s.corrupt("directory key", "malformed"))?;
            let rec = DirRecord::decode(&v).map_err(|why| s.corrupt("directory record", why))?;
            xor_dir_digest(&mut acc, dir, &rec);
        }
        Ok(Hash(acc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_reports_the_lock_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        match Store::open(dir.path()) {
            Err(StoreError::Locked { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("second open succeeded"),
        }
    }

    #[test]
    fn forces_round_trip_and_an_unbound_mark_counts_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let w = store.writer_blocking();
        let f = Force {
            group: "g".into(),
            path: b"/r/f".to_vec(),
            versions: vec![Version::default().bumped("a", 2)],
            reached: vec!["b".into()],
            time: crate::tree::Timestamp::now(),
        };
        let mut b = store.batch(&w);
        b.put_force(&f);
        // A mark as written before forces were bound to a version.
        let old = conflict::path_key(conflict::FORCE_PREFIX, "g", b"/r/old");
        b.insert(&store.h().meta, old, []);
        b.commit().unwrap();
        assert_eq!(store.force("g", b"/r/f").unwrap(), Some(f.clone()));
        assert_eq!(store.force("g", b"/r/old").unwrap(), None);
        assert_eq!(store.forces().unwrap(), vec![f]);
        let mut b = store.batch(&w);
        b.remove_force("g", b"/r/f");
        b.commit().unwrap();
        assert_eq!(store.forces().unwrap(), vec![]);
    }

    /// A digest kept under the earlier key may count tombstones under the
    /// empty version, which have no share now: it is not used; the digest
    /// is computed from the records, and the old key goes when the new
    /// digest is kept.
    #[test]
    fn digest_kept_under_the_old_key_is_computed_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let w = store.writer_blocking();
        let mut d = DirRecord::default();
        d.children
            .push((b"own".to_vec(), EntryRecord { version: Version::default(), ..EntryRecord::tombstone_for_test() }));
        d.children.push((b"kept".to_vec(), EntryRecord::tombstone_for_test()));
        let mut old_share = [0u8; 32];
        for (name, r) in &d.children {
            let share = blake3::derive_key(
                record::VERSION_DIGEST_CONTEXT,
                &postcard::to_stdvec(&(join_logical(b"/r", name), &r.version, r.deleted)).unwrap(),
            );
            old_share.iter_mut().zip(share).for_each(|(a, b)| *a ^= b);
        }
        let old_key = [OLD_VERSION_DIGEST_PREFIX, b"g"].concat();
        let mut b = store.batch(&w);
        // Written as a state from before the new key: no digest under it.
        b.insert(&store.h().dirs, dir_key("g", b"/r"), d.encode());
        b.insert(&store.h().meta, old_key.clone(), old_share);
        b.commit().unwrap();
        let want = version_digest([(&b"/r"[..], &d)]);
        assert_ne!(want.0, old_share);
        assert_eq!(store.version_digest("g").unwrap(), want);
        assert_eq!(store.view().version_digest("g").unwrap(), want);
        let mut b = store.batch(&w);
        b.put_version_digest("g", &want);
        b.commit().unwrap();
        assert!(store.h().meta.get(old_key).unwrap().is_none());
        assert_eq!(store.version_digest("g").unwrap(), want);
    }

    #[test]
    fn batch_writes_are_visible_after_commit_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let rec = EntryRecord::tombstone_for_test();
        let mut d = DirRecord::default();
        d.children.push((b"a".to_vec(), rec.clone()));
        {
            let store = Store::open(dir.path()).unwrap();
            let w = store.writer_blocking();
            let mut b = store.batch(&w);
            b.put_dir_record("g", b"/r", &d).unwrap();
            b.put_dir_record("g", b"/r/x", &DirRecord::default()).unwrap();
            b.put_dir_record("g", b"/rx", &DirRecord::default()).unwrap();
            b.put_seq(7);
            b.commit().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.seq().unwrap(), 7);
        assert_eq!(store.entry("g", b"/r", b"a").unwrap(), Some(rec));
        let below: Vec<Vec<u8>> = store.dir_records_below("g", b"/r").unwrap().into_iter().map(|(p, _)| p).collect();
        assert_eq!(below, [b"/r".to_vec(), b"/r/x".to_vec()], "a sibling sharing the prefix is not below");
    }

    /// The include roots' record with one entry whose version counter is
    /// `n`, and the version digest that goes with it.
    fn roots_commit(n: u64) -> (DirRecord, Hash) {
        let mut rec = EntryRecord::tombstone_for_test();
        rec.version = Version(vec![("h".to_owned(), n)]);
        let d = DirRecord { children: vec![(b"/r".to_vec(), rec)] };
        let mut acc = [0u8; 32];
        xor_dir_digest(&mut acc, b"", &d);
        (d, Hash(acc))
    }

    fn commit_roots(store: &Store, n: u64) {
        let w = store.writer_blocking();
        let (d, digest) = roots_commit(n);
        let mut b = store.batch(&w);
        b.put_dir_record("g", b"", &d).unwrap();
        b.commit().unwrap();
        assert_eq!(store.version_digest("g").unwrap(), digest, "the batch keeps the digest");
    }

    /// The batch keeps the version digest whatever it writes: a record
    /// written twice, one removed, one left as committed before.
    #[test]
    fn batch_keeps_the_version_digest_of_what_it_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let w = store.writer_blocking();
        let rec = |n: u64| DirRecord {
            children: vec![(
                b"x".to_vec(),
                EntryRecord { version: Version(vec![("h".into(), n)]), ..EntryRecord::tombstone_for_test() },
            )],
        };
        let recomputed = || {
            let all: Vec<(Vec<u8>, DirRecord)> = store.all_dir_records("g").collect::<Result<_, _>>().unwrap();
            version_digest(all.iter().map(|(d, r)| (d.as_slice(), r)))
        };
        let mut b = store.batch(&w);
        for (d, n) in [(&b"/a"[..], 1), (b"/b", 2), (b"/c", 3)] {
            b.put_dir_record("g", d, &rec(n)).unwrap();
        }
        b.commit().unwrap();
        assert_eq!(store.version_digest("g").unwrap(), recomputed());
        let mut b = store.batch(&w);
        b.put_dir_record("g", b"/a", &rec(4)).unwrap();
        b.put_dir_record("g", b"/a", &rec(5)).unwrap();
        b.remove_dir_record("g", b"/b").unwrap();
        b.put_dir_record("g", b"/d", &rec(6)).unwrap();
        b.commit().unwrap();
        assert_eq!(store.version_digest("g").unwrap(), recomputed());
        assert_ne!(recomputed(), version_digest(std::iter::empty()));
    }

    #[test]
    fn view_reads_one_commit_whatever_commits_land_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        commit_roots(&store, 1);
        let view = store.view();
        commit_roots(&store, 2);
        let (old, old_digest) = roots_commit(1);
        assert_eq!(view.dir_record("g", b"").unwrap(), Some(old));
        assert_eq!(view.version_digest("g").unwrap(), old_digest);
        // The store itself reads the newer commit.
        assert_eq!(store.dir_record("g", b"").unwrap(), Some(roots_commit(2).0));
        assert_eq!(store.version_digest("g").unwrap(), roots_commit(2).1);
        drop(view);
        assert_eq!(store.view().version_digest("g").unwrap(), roots_commit(2).1);
    }

    #[test]
    fn view_computes_a_missing_digest_from_its_own_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let w = store.writer_blocking();
        // Records written as a state from before digests were kept.
        let mut b = store.batch(&w);
        b.insert(&store.h().dirs, dir_key("g", b""), roots_commit(1).0.encode());
        b.commit().unwrap();
        let view = store.view();
        let mut b = store.batch(&w);
        b.insert(&store.h().dirs, dir_key("g", b"/r"), roots_commit(5).0.encode());
        b.commit().unwrap();
        assert_eq!(view.version_digest("g").unwrap(), roots_commit(1).1);
        assert_ne!(store.version_digest("g").unwrap(), roots_commit(1).1);
    }

    /// The race behind "Roots.hash is not the hash of the roots listed":
    /// a reader of the roots and the digest while commits land never sees
    /// the two from different commits.
    #[test]
    fn view_never_mixes_two_commits_under_concurrent_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        commit_roots(&store, 0);
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for n in 1..=200 {
                    commit_roots(&store, n);
                }
                done.store(true, std::sync::atomic::Ordering::Release);
            });
            let mut reads = 0u64;
            while !done.load(std::sync::atomic::Ordering::Acquire) || reads == 0 {
                let view = store.view();
                let rec = view.dir_record("g", b"").unwrap().unwrap();
                let digest = view.version_digest("g").unwrap();
                let mut acc = [0u8; 32];
                xor_dir_digest(&mut acc, b"", &rec);
                assert_eq!(Hash(acc), digest, "read {reads}: the roots and the digest come from two commits");
                reads += 1;
            }
        });
    }

    fn generation_for_test(store: &Store) -> Generation {
        Generation {
            id: store.next_generation_id().unwrap(),
            group: "g".into(),
            time: crate::tree::Timestamp::now(),
            cause: "test".into(),
            roots: RootSet::default(),
            root_chunks: Vec::new(),
            entries: 0,
            bytes: 0,
            added_bytes: 0,
        }
    }

    #[test]
    fn removed_database_continues_ids_from_the_marker_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let w = store.writer_blocking();
            assert!(store.damage().is_empty());
            let mut b = store.batch(&w);
            b.put_seq(41);
            b.put_generation(&generation_for_test(&store));
            b.commit().unwrap();
        }
        std::fs::remove_dir_all(dir.path().join("db")).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.seq().unwrap(), 41);
        assert_eq!(store.next_generation_id().unwrap(), 2);
        assert!(store.generations().unwrap().is_empty());
        let [msg] = store.damage() else { panic!("{:?}", store.damage()) };
        assert!(msg.contains("is missing") && msg.contains(REPAIR_COMMAND), "{msg}");
        drop(store);
        assert!(Store::open(dir.path()).unwrap().damage().is_empty(), "reported once");
    }

    /// A state whose marker announced seq 9 and generation 5, with
    /// `settled` as the marker's settled counters; the database holds
    /// seq 1 and generation 1.
    fn store_behind_its_marker(settled: (u64, u64)) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let store = Store::open(dir.path()).unwrap();
            let w = store.writer_blocking();
            assert_eq!(store.allocate_seq(&w).unwrap(), 1);
            store.store_id()
        };
        let mut m = marker::Marker::read(dir.path()).unwrap().unwrap();
        m.seq = 9;
        m.next_generation = 5;
        (m.settled_seq, m.settled_next_generation) = settled;
        m.write(dir.path()).unwrap();
        (dir, id)
    }

    #[test]
    fn interrupted_commit_raises_the_database_to_its_marker_without_an_alarm() {
        // As a process killed after writing the marker for a commit and
        // before committing it leaves the state.
        let (dir, id) = store_behind_its_marker((1, 1));
        let store = Store::open(dir.path()).unwrap();
        let w = store.writer_blocking();
        assert_eq!((store.seq().unwrap(), store.next_generation_id().unwrap()), (9, 5));
        assert_eq!(store.store_id(), id);
        assert!(store.damage().is_empty(), "{:?}", store.damage());
        assert_eq!(store.allocate_seq(&w).unwrap(), 10);
    }

    #[test]
    fn database_that_lost_acknowledged_commits_is_raised_to_its_marker_and_says_so() {
        let (dir, _) = store_behind_its_marker((3, 1));
        let store = Store::open(dir.path()).unwrap();
        let w = store.writer_blocking();
        assert_eq!((store.seq().unwrap(), store.next_generation_id().unwrap()), (9, 5));
        let [msg] = store.damage() else { panic!("{:?}", store.damage()) };
        assert!(
            msg.contains("behind its marker (version counter 1 < 9, next generation 1 < 5)")
                && msg.contains(REPAIR_COMMAND),
            "{msg}"
        );
        assert_eq!(store.allocate_seq(&w).unwrap(), 10);
        drop((w, store));
        // Only the counter that is behind is named.
        let (dir, _) = store_behind_its_marker((3, 1));
        let mut m = marker::Marker::read(dir.path()).unwrap().unwrap();
        m.next_generation = 1;
        m.write(dir.path()).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let [msg] = store.damage() else { panic!("{:?}", store.damage()) };
        assert!(msg.contains("(version counter 1 < 9)"), "{msg}");
    }

    #[test]
    fn each_marker_written_for_a_commit_settles_the_commits_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let w = store.writer_blocking();
        for _ in 0..3 {
            store.allocate_seq(&w).unwrap();
        }
        let m = marker::Marker::read(dir.path()).unwrap().unwrap();
        assert_eq!((m.seq, m.settled_seq), (3, 2));
        assert!(!m.lost_commits(2, 1) && m.lost_commits(1, 1));
    }

    #[test]
    fn table_damage_found_while_reading_moves_the_database_aside_on_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let w = store.writer_blocking();
            let mut b = store.batch(&w);
            for i in 0..2000u32 {
                let mut d = DirRecord::default();
                // Names that do not compress, so the table is large.
                let name: Vec<u8> =
                    (0..600u32).map(|j| (i.wrapping_mul(2_654_435_761) ^ j.wrapping_mul(40_503)) as u8).collect();
                d.children.push((name, EntryRecord::tombstone_for_test()));
                b.put_dir_record("g", format!("/d{i:05}").as_bytes(), &d).unwrap();
            }
            b.commit().unwrap();
            // Closing flushes more than FLUSH_ON_CLOSE_BYTES into tables.
        }
        let tables = dir.path().join("db/keyspaces/2/tables");
        let table = std::fs::read_dir(&tables).unwrap().next().unwrap().unwrap().path();
        let mut bytes = std::fs::read(&table).unwrap();
        let at = bytes.len() / 3;
        bytes[at] ^= 0x5a;
        std::fs::write(&table, bytes).unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let read: Result<Vec<_>, _> = store.all_dir_records("g").collect();
            assert!(matches!(read, Err(StoreError::Corrupt { .. })), "{:?}", read.map(|v| v.len()));
        }
        let store = Store::open(dir.path()).unwrap();
        assert!(store.damage().iter().any(|d| d.contains("moved to")), "{:?}", store.damage());
        assert_eq!(store.dir_record("g", b"/d01000").unwrap(), None, "a fresh state");
    }
}
