//! The content store: chunk bytes, kept only for groups with a backup
//! directory.
//!
//! A chunk store is a fjall database with one keyspace, `chunks`, mapping a
//! chunk hash to the chunk's stored form ([`crate::chunk::encode`]: a tag
//! byte, then raw or zstd bytes). It lives in
//! `BACKUP_DIRECTORY/snapsync-HOST`, so the backup volume the operator
//! chose holds the backup data, and several nodes (or several `-N` names on
//! one machine) sharing a backup directory do not share a database. Chunks
//! are written before the state that references them is committed, and
//! freed only after that state is gone (docs/design.md, "Write ordering").
//! The store holds the bytes of private files: it is readable by its owner
//! only (`private.rs`).
//!
//! A store is *damaged* when it is missing although the state recorded it,
//! cannot be opened, or is empty although generations were recorded into
//! it. It is then moved aside or made anew, and the groups using it are
//! unlinked from it, so the next check stores every live file again;
//! `verify --repair` does the same for chunks that fail their hash and
//! lists what no live file holds any more. Damage found while the store
//! is open (a table block that fails its checksum) is flagged in
//! `PATH/damaged`, and the next open moves the store aside; a damaged
//! chunk *value* (in a blob file, the index around it intact) is one
//! damaged chunk, like one that fails its hash. A write that fails (a full
//! disk) leaves fjall's database *poisoned*; the store reopens it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode};

use super::StoreError;
use crate::hash::Hash;

/// An open chunk store.
pub struct ChunkStore {
    path: PathBuf,
    /// The open database; replaced when it is reopened after a failed
    /// write (as the state's, `Store::reopen`).
    h: RwLock<Option<Arc<Handles>>>,
    /// Stored bytes of the chunks added since the last
    /// [`ChunkStore::take_added`]: what the next generation recorded into
    /// this store added, whether a scan read the content or a sync
    /// received it from a peer.
    added: AtomicU64,
    /// The error of the last write that failed on its own (not because
    /// the database was already poisoned): writes made at the same time
    /// on the handles it poisoned report it as their cause.
    last_failure: std::sync::Mutex<Option<String>>,
}

struct Handles {
    db: Database,
    chunks: Keyspace,
}

fn open_db(path: &Path) -> Result<Handles, fjall::Error> {
    // As for the state (`open_db`): a damaged journal may panic fjall.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| -> Result<Handles, fjall::Error> {
        let db = Database::builder(path).cache_size(super::DB_CACHE_BYTES).open()?;
        // Chunks are large, already compressed values: keep them out of the
        // LSM levels so compaction does not rewrite them.
        let chunks = db.keyspace("chunks", || {
            KeyspaceCreateOptions::default()
                .with_kv_separation(Some(KvSeparationOptions::default()))
                .max_memtable_size(super::DB_MEMTABLE_BYTES)
        })?;
        Ok(Handles { db, chunks })
    });
    std::panic::set_hook(hook);
    opened.unwrap_or(Err(fjall::Error::Unrecoverable))
}

/// The file, inside a chunk store, that flags it as damaged for the next
/// open (as the state's `damaged` beside its database). Inside, so that
/// moving the store aside takes the flag along; fjall ignores files it
/// does not know.
const DAMAGE_FLAG: &str = "damaged";

impl ChunkStore {
    /// Opens (creating if needed) the chunk store at `path`, and makes it
    /// and everything in it owner-only (0700 directories, 0600 files) if it
    /// is not. The backup directory above it, which other configs may
    /// share, keeps its mode.
    pub fn open(path: &Path) -> Result<ChunkStore, StoreError> {
        super::private::private_dir(path)?;
        super::private::tighten_tree(path)?;
        let h = open_db(path).map_err(|e| StoreError::db(path, e))?;
        Ok(ChunkStore {
            path: path.to_path_buf(),
            h: RwLock::new(Some(Arc::new(h))),
            added: AtomicU64::new(0),
            last_failure: Default::default(),
        })
    }

    /// Opens the chunk store at `path` like [`ChunkStore::open`], and says
    /// what damage it found: with `expected` (the state recorded this store
    /// before), a missing store is damage; a store that cannot be opened is
    /// moved aside (`PATH.damaged-TIME`) and a new one made. The message
    /// names the repair command.
    pub fn open_checked(path: &Path, expected: bool) -> Result<(ChunkStore, Option<String>), StoreError> {
        let rebuilt = "a new one is made, the next check stores the live files in it again, and older \
                       generations may have lost content";
        let mut damage = None;
        let flag = path.join(DAMAGE_FLAG);
        if let Ok(why) = std::fs::read_to_string(&flag) {
            let aside = super::move_aside(path)?;
            damage = Some(format!(
                "chunk store {} was found damaged while reading ({}); it was moved to {}; {rebuilt}; run `{}` to \
                 list what is lost",
                path.display(),
                why.trim(),
                aside.display(),
                super::REPAIR_COMMAND
            ));
        } else if expected && std::fs::symlink_metadata(path).is_err() {
            damage = Some(format!(
                "chunk store {} is missing; {rebuilt}; run `{}` to list what is lost",
                path.display(),
                super::REPAIR_COMMAND
            ));
        }
        match ChunkStore::open(path) {
            // Opening reads each table's index and meta blocks but no data
            // block: a first read of one finds damage there before anyone
            // uses the store; it is flagged, and opening again moves the
            // store aside.
            Ok(cs) if damage.is_none() && cs.is_empty().is_err() && cs.found_damaged() => {
                drop(cs);
                ChunkStore::open_checked(path, expected)
            }
            Ok(cs) => Ok((cs, damage)),
            Err(StoreError::Db { source, .. }) if damage.is_none() && super::is_damage(&source) => {
                let aside = super::move_aside(path)?;
                let cs = ChunkStore::open(path)?;
                let msg = format!(
                    "chunk store {} cannot be opened ({source}); it was moved to {}; {rebuilt}; run `{}` to \
                     list what is lost",
                    path.display(),
                    aside.display(),
                    super::REPAIR_COMMAND
                );
                Ok((cs, Some(msg)))
            }
            Err(e) => Err(e),
        }
    }

    /// Whether a read found the open store damaged: it is flagged for the
    /// next open to move aside (see `ChunkStore::err`).
    pub fn found_damaged(&self) -> bool {
        std::fs::symlink_metadata(self.path.join(DAMAGE_FLAG)).is_ok()
    }

    /// Whether the store holds no chunk at all.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        self.h().chunks.is_empty().map_err(|e| self.err(e))
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn h(&self) -> Arc<Handles> {
        self.h
            .read()
            .expect("chunk store handle lock")
            .clone()
            .unwrap_or_else(|| panic!("chunk store {} could not be reopened", self.path.display()))
    }

    /// The error for a failed read. Damage (a table block that fails its
    /// checksum) cannot be moved aside under the open database: it is
    /// flagged in `PATH/damaged`, and the next open moves the store aside
    /// and makes a new one ([`ChunkStore::open_checked`]). Without that,
    /// every later command that reads the store would fail the same way.
    fn err(&self, e: fjall::Error) -> StoreError {
        if !super::is_damage(&e) {
            return StoreError::db(&self.path, e);
        }
        let flag = self.path.join(DAMAGE_FLAG);
        if let Err(io) = std::fs::write(&flag, e.to_string()) {
            tracing::error!("{}: {io}", flag.display());
        }
        StoreError::Corrupt {
            path: self.path.clone(),
            what: "chunk store".into(),
            why: format!(
                "{e}; the next open of the chunk store (the next command, or a restart of the daemon that \
                 holds it) moves it aside and makes a new one"
            ),
        }
    }

    /// The error of a failed write; a poisoned database (a full disk) is
    /// reopened first, so later writes work once space is freed.
    fn write_err(&self, e: fjall::Error) -> StoreError {
        if !matches!(e, fjall::Error::Poisoned | fjall::Error::Io(_) | fjall::Error::Storage(_)) {
            return self.err(e);
        }
        let reopened = super::reopen(&self.h, &self.path, open_db);
        match &reopened {
            Ok(()) => tracing::warn!("{}: writing failed ({e}); the chunk store was reopened", self.path.display()),
            Err(why) => tracing::error!("{}: writing failed ({e}); {why}", self.path.display()),
        }
        let mut last = self.last_failure.lock().expect("chunk store failure lock");
        let poisoned_by = match e {
            fjall::Error::Poisoned => last.clone(),
            _ => {
                *last = Some(e.to_string());
                None
            }
        };
        StoreError::WriteFailed { path: self.path.clone(), source: Box::new(e), poisoned_by, reopened: reopened.err() }
    }

    /// Whether a chunk is stored.
    pub fn has(&self, hash: &Hash) -> Result<bool, StoreError> {
        self.h().chunks.contains_key(hash.as_bytes()).map_err(|e| self.err(e))
    }

    /// Stores a chunk unless present; returns the stored bytes it added.
    /// `data` must hash to `hash` (the caller has just computed it).
    pub fn put(&self, hash: &Hash, data: &[u8]) -> Result<u64, StoreError> {
        if self.has(hash)? {
            return Ok(0);
        }
        self.insert(hash, &crate::chunk::encode(data))
    }

    /// Stores a chunk received from a peer unless present: its stored form
    /// `stored` as it is when compressed, else as [`ChunkStore::put`]
    /// does. `stored` must decode to `data`, which must hash to `hash`
    /// (the caller has just checked both).
    pub fn put_received(&self, hash: &Hash, stored: &[u8], data: &[u8]) -> Result<u64, StoreError> {
        if stored.first() != Some(&crate::chunk::TAG_ZSTD) {
            return self.put(hash, data);
        }
        if self.has(hash)? {
            return Ok(0);
        }
        self.insert(hash, stored)
    }

    fn insert(&self, hash: &Hash, stored: &[u8]) -> Result<u64, StoreError> {
        self.write(|h| h.chunks.insert(hash.as_bytes(), stored))?;
        let n = stored.len() as u64;
        self.added.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }

    /// The stored bytes added since the last call (or since the store was
    /// opened), and starts counting again. A generation takes them when it
    /// is recorded; groups sharing a store are recorded one after another,
    /// so each takes what its own run added.
    pub fn take_added(&self) -> u64 {
        self.added.swap(0, Ordering::Relaxed)
    }

    /// Reads a chunk back, decompressed and verified against its hash.
    pub fn get(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        let stored = self.get_unchecked(hash)?;
        crate::chunk::decode(hash, &stored).map_err(|e| self.corrupt(hash, e.to_string()))
    }

    /// Reads a chunk back in its stored form, to send as it is; it is
    /// decoded and verified against its hash first, so that a damaged
    /// chunk is found here, not by the peer.
    pub fn get_stored(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        let stored = self.get_unchecked(hash)?;
        crate::chunk::decode_borrowed(hash, &stored).map_err(|e| self.corrupt(hash, e.to_string()))?;
        Ok(stored.to_vec())
    }

    fn corrupt(&self, hash: &Hash, why: String) -> StoreError {
        StoreError::Corrupt { path: self.path.clone(), what: format!("chunk {hash}"), why }
    }

    /// A chunk's stored form, not checked.
    fn get_unchecked(&self, hash: &Hash) -> Result<fjall::Slice, StoreError> {
        match self.h().chunks.get(hash.as_bytes()) {
            Ok(v) => v.ok_or_else(|| self.corrupt(hash, "missing".into())),
            // The index still finds the key: only this chunk's value (in a
            // blob file) is damaged. That is one damaged chunk, as one that
            // fails its hash (`verify --repair` drops it), not a reason to
            // give up the whole store.
            Err(e) if super::is_damage(&e) && self.h().chunks.contains_key(hash.as_bytes()).is_ok() => {
                Err(self.corrupt(hash, e.to_string()))
            }
            Err(e) => Err(self.err(e)),
        }
    }

    /// Makes every chunk written so far durable. A database poisoned
    /// meanwhile is reopened first and the sync tried again: reopening
    /// replays its journal and syncs what it recovers, and chunks it did
    /// not recover read as absent, so they are stored again when needed.
    pub fn persist(&self) -> Result<(), StoreError> {
        self.write(|h| h.db.persist(PersistMode::SyncAll))
    }

    /// Every stored chunk hash with its stored size, without reading the
    /// chunks themselves.
    pub fn list(&self) -> Result<Vec<(Hash, u64)>, StoreError> {
        let h = self.h();
        let mut out = Vec::new();
        for guard in h.chunks.iter() {
            let k = guard.key().map_err(|e| self.err(e))?;
            let hash = Hash::from_slice(&k).ok_or_else(|| StoreError::Corrupt {
                path: self.path.clone(),
                what: "chunk key".into(),
                why: format!("{} bytes, expected 32", k.len()),
            })?;
            let size = h.chunks.size_of(&k).map_err(|e| self.err(e))?.unwrap_or(0);
            out.push((hash, u64::from(size)));
        }
        Ok(out)
    }

    /// Drops chunks and syncs.
    pub fn remove(&self, hashes: &[Hash]) -> Result<(), StoreError> {
        if hashes.is_empty() {
            return Ok(());
        }
        self.write(|h| {
            let mut batch = h.db.batch().durability(Some(PersistMode::SyncAll));
            for hash in hashes {
                batch.remove(&h.chunks, hash.as_bytes());
            }
            batch.commit()
        })
    }

    /// Runs the write `op`. A database found poisoned was poisoned by an
    /// earlier failure, not by this write: another thread's write, or a
    /// flush fjall ran on its own while the disk was full. It is reopened
    /// and `op` runs once more, so the write succeeds if the cause is gone
    /// (space freed since) and otherwise fails for itself.
    fn write(&self, op: impl Fn(&Handles) -> Result<(), fjall::Error>) -> Result<(), StoreError> {
        let first = op(&self.h());
        let done = match first {
            Err(fjall::Error::Poisoned) => {
                let _ = self.write_err(fjall::Error::Poisoned);
                op(&self.h())
            }
            done => done,
        };
        done.map_err(|e| self.write_err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_reads_back_decoded_or_as_stored_and_checked_either_way() {
        let d = tempfile::tempdir().unwrap();
        let cs = ChunkStore::open(&d.path().join("chunks")).unwrap();
        let text = b"stored as it is, then sent as it is; ".repeat(400);
        let hash = Hash::of(&text);
        cs.put(&hash, &text).unwrap();
        assert_eq!(cs.get(&hash).unwrap(), text);
        let stored = cs.get_stored(&hash).unwrap();
        assert_eq!(stored, crate::chunk::encode(&text));
        assert_eq!(stored[0], crate::chunk::TAG_ZSTD, "text is kept compressed");
        // A value that does not decode to its name is found on either read.
        let other = Hash::of(b"other");
        cs.write(|h| h.chunks.insert(other.as_bytes(), &stored[..])).unwrap();
        for e in [cs.get(&other).unwrap_err(), cs.get_stored(&other).unwrap_err()] {
            assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
            assert!(e.to_string().contains(&other.to_string()), "{e}");
        }
        // A chunk received compressed is kept as received; one received
        // raw is compressed where that helps.
        let text2 = b"received compressed, kept as it came; ".repeat(400);
        let zstd = crate::chunk::encode(&text2);
        assert_eq!(cs.put_received(&Hash::of(&text2), &zstd, &text2).unwrap(), zstd.len() as u64);
        assert_eq!(cs.get_stored(&Hash::of(&text2)).unwrap(), zstd);
        let text3 = b"received raw, compressed to keep; ".repeat(400);
        let mut raw = vec![crate::chunk::TAG_RAW];
        raw.extend_from_slice(&text3);
        cs.put_received(&Hash::of(&text3), &raw, &text3).unwrap();
        assert_eq!(cs.get_stored(&Hash::of(&text3)).unwrap(), crate::chunk::encode(&text3));
        assert_eq!(cs.put_received(&Hash::of(&text3), &raw, &text3).unwrap(), 0, "already kept");
        let absent = Hash::of(b"absent");
        assert!(cs.get_stored(&absent).unwrap_err().to_string().contains("missing"));
    }
}
