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

use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode};

use super::StoreError;
use crate::hash::Hash;

/// An open chunk store.
pub struct ChunkStore {
    path: PathBuf,
    db: Database,
    chunks: Keyspace,
}

impl ChunkStore {
    /// Opens (creating if needed) the chunk store at `path`, and makes it
    /// and everything in it owner-only (0700 directories, 0600 files) if it
    /// is not. The backup directory above it, which other configs may
    /// share, keeps its mode.
    pub fn open(path: &Path) -> Result<ChunkStore, StoreError> {
        super::private::private_dir(path)?;
        super::private::tighten_tree(path)?;
        // As for the state (`open_db`): a damaged journal may panic fjall.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let opened = std::panic::catch_unwind(|| Database::builder(path).open());
        std::panic::set_hook(hook);
        let db = opened.unwrap_or(Err(fjall::Error::Unrecoverable)).map_err(|e| StoreError::db(path, e))?;
        // Chunks are large, already compressed values: keep them out of the
        // LSM levels so compaction does not rewrite them.
        let chunks = db
            .keyspace("chunks", || {
                KeyspaceCreateOptions::default().with_kv_separation(Some(KvSeparationOptions::default()))
            })
            .map_err(|e| StoreError::db(path, e))?;
        Ok(ChunkStore { path: path.to_path_buf(), db, chunks })
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
        if expected && std::fs::symlink_metadata(path).is_err() {
            damage = Some(format!(
                "chunk store {} is missing; {rebuilt}; run `{}` to list what is lost",
                path.display(),
                super::REPAIR_COMMAND
            ));
        }
        match ChunkStore::open(path) {
            Ok(cs) => Ok((cs, damage)),
            Err(StoreError::Db { source, .. }) if super::is_damage(&source) => {
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

    /// Whether the store holds no chunk at all.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        self.chunks.is_empty().map_err(|e| self.err(e))
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: fjall::Error) -> StoreError {
        StoreError::db(&self.path, e)
    }

    /// Whether a chunk is stored.
    pub fn has(&self, hash: &Hash) -> Result<bool, StoreError> {
        self.chunks.contains_key(hash.as_bytes()).map_err(|e| self.err(e))
    }

    /// Stores a chunk unless present; returns the stored bytes it added.
    /// `data` must hash to `hash` (the caller has just computed it).
    pub fn put(&self, hash: &Hash, data: &[u8]) -> Result<u64, StoreError> {
        if self.has(hash)? {
            return Ok(0);
        }
        let stored = crate::chunk::encode(data);
        let n = stored.len() as u64;
        self.chunks.insert(hash.as_bytes(), stored).map_err(|e| self.err(e))?;
        Ok(n)
    }

    /// Reads a chunk back, decompressed and verified against its hash.
    pub fn get(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        let stored = self.chunks.get(hash.as_bytes()).map_err(|e| self.err(e))?.ok_or_else(|| StoreError::Corrupt {
            path: self.path.clone(),
            what: format!("chunk {hash}"),
            why: "missing".into(),
        })?;
        crate::chunk::decode(hash, &stored).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            what: format!("chunk {hash}"),
            why: e.to_string(),
        })
    }

    /// Makes every chunk written so far durable.
    pub fn persist(&self) -> Result<(), StoreError> {
        self.db.persist(PersistMode::SyncAll).map_err(|e| self.err(e))
    }

    /// Every stored chunk hash with its stored size, without reading the
    /// chunks themselves.
    pub fn list(&self) -> Result<Vec<(Hash, u64)>, StoreError> {
        let mut out = Vec::new();
        for guard in self.chunks.iter() {
            let k = guard.key().map_err(|e| self.err(e))?;
            let hash = Hash::from_slice(&k).ok_or_else(|| StoreError::Corrupt {
                path: self.path.clone(),
                what: "chunk key".into(),
                why: format!("{} bytes, expected 32", k.len()),
            })?;
            let size = self.chunks.size_of(&k).map_err(|e| self.err(e))?.unwrap_or(0);
            out.push((hash, u64::from(size)));
        }
        Ok(out)
    }

    /// Drops chunks and syncs.
    pub fn remove(&self, hashes: &[Hash]) -> Result<(), StoreError> {
        if hashes.is_empty() {
            return Ok(());
        }
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        for h in hashes {
            batch.remove(&self.chunks, h.as_bytes());
        }
        batch.commit().map_err(|e| self.err(e))
    }
}
