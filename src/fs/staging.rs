//! Chunks received for files not placed yet: the *staging area*,
//! `incoming/chunks/` in the state directory.
//!
//! Terms:
//! - A *pack* is one file of the staging area, `<32 random hex>.pack`,
//!   that one batch of a transfer appends every chunk it receives to: a
//!   header ([`PACK_MAGIC`]), then records `hash (32 bytes) | length (u32,
//!   little-endian) | bytes`. One file per batch, not per chunk: creating
//!   and deleting a file per chunk cost more than the transfer (ext4's
//!   inode allocator walks the inodes of recently deleted files; 85% of a
//!   receiver's CPU in a first sync of 20k files).
//! - Records are written without a sync: a record torn by a crash, or
//!   damaged since, fails its hash when read and is fetched again. Every
//!   read is checked against the hash.
//! - A pack in use is locked (`flock`) by the run that writes or reads it.
//!   A pack no run holds is *left over* from an interrupted run: the next
//!   run that opens the staging area locks it and takes its chunks, so an
//!   interrupted transfer does not ask for them again (SPEC §7).
//! - A pack is *retired* once the files it was written for are placed:
//!   its chunks leave the index and the file is removed as soon as no
//!   batch still reads from it. A left-over pack is retired when a run
//!   ends with every file placed, or found older than
//!   [`STAGING_MAX_AGE`].
//! - Older releases kept one file per chunk, `<content>/<chunk>`; those
//!   are still read, so a transfer interrupted before an upgrade resumes
//!   after it.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{private_dir, random_hex};
use crate::hash::Hash;

/// How long chunks of a transfer nobody resumed are kept: 7 days.
pub const STAGING_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The first bytes of a pack.
const PACK_MAGIC: &[u8; 16] = b"snapsync-pack-1\n";

/// How long a pack being made may keep its temporary name: far longer
/// than making it takes (a lock and a header).
const NEW_MAX_AGE: Duration = Duration::from_secs(3600);

/// A record's header: the chunk's hash and its length.
const RECORD_HEAD: usize = 32 + 4;

/// One pack file, locked while this value lives.
#[derive(Debug)]
pub struct Pack {
    path: PathBuf,
    file: File,
    /// Where the next record goes.
    end: AtomicU64,
    /// Removed when the last reference goes.
    retired: AtomicBool,
    /// Written by this process, in this run: what it reads back is what
    /// it verified and wrote moments ago (from the page cache), not
    /// checked again. A left-over pack is checked chunk by chunk.
    fresh: bool,
}

impl Drop for Pack {
    fn drop(&mut self) {
        if self.retired.load(Ordering::Acquire) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Where one staged chunk is.
#[derive(Clone, Debug)]
pub struct Staged {
    pack: Arc<Pack>,
    offset: u64,
    len: u32,
}

impl Staged {
    /// The chunk's bytes, if they still hash to `hash`.
    pub fn read(&self, hash: &Hash) -> Option<Vec<u8>> {
        let data = super::read_at(&self.pack.file, self.offset, self.len as usize).ok()?;
        (self.pack.fresh || Hash::of(&data) == *hash).then_some(data)
    }
}

/// The staging area of one run: its packs, and the chunks they hold.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    index: Mutex<HashMap<Hash, Staged>>,
    /// Packs left over by interrupted runs, taken by this one.
    leftovers: Vec<Arc<Pack>>,
    /// Whether chunk files of an older release are here.
    legacy: bool,
}

impl Staging {
    /// The staging area in `dir` (created 0700 if missing), with the
    /// chunks of every left-over pack no other run holds. Left-over packs
    /// older than `max_age` are removed.
    pub fn open(dir: &Path, max_age: Duration) -> io::Result<Staging> {
        private_dir(dir)?;
        let mut index = HashMap::new();
        let mut leftovers = Vec::new();
        let mut legacy = false;
        for e in fs::read_dir(dir)? {
            let e = e?;
            let ty = e.file_type()?;
            if ty.is_dir() {
                legacy = true;
                continue;
            }
            let name = e.file_name();
            let name = name.to_string_lossy();
            if ty.is_file() && name.ends_with(".new") && older_than(&e.path(), NEW_MAX_AGE) {
                // A crash while a pack was being made.
                let _ = fs::remove_file(e.path());
            }
            if !ty.is_file() || !name.ends_with(".pack") {
                continue;
            }
            let path = e.path();
            let Ok(file) = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
            else {
                continue;
            };
            // Held by a run in progress: its chunks are that run's.
            if file.try_lock().is_err() {
                continue;
            }
            let old = older_than(&path, max_age);
            let pack =
                Arc::new(Pack { path, file, end: AtomicU64::new(0), retired: AtomicBool::new(true), fresh: false });
            if old {
                tracing::info!("{}: removed, chunks of a transfer not resumed for {max_age:?}", pack.path.display());
                continue;
            }
            match read_records(&pack) {
                Ok(records) => {
                    pack.retired.store(false, Ordering::Release);
                    for (hash, offset, len) in records {
                        index.entry(hash).or_insert(Staged { pack: Arc::clone(&pack), offset, len });
                    }
                    leftovers.push(pack);
                }
                Err(e) => tracing::warn!("{}: removed, not a readable pack: {e}", pack.path.display()),
            }
        }
        Ok(Staging { dir: dir.to_path_buf(), index: Mutex::new(index), leftovers, legacy })
    }

    /// A new pack for the chunks of one batch.
    pub fn pack(&self) -> io::Result<Arc<Pack>> {
        // Made under a name `open` passes over, and named a pack once it
        // is locked: another run never takes it for a left-over.
        let name = random_hex()?;
        let new = self.dir.join(format!("{name}.new"));
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&new)?;
        let made = (|| -> io::Result<PathBuf> {
            file.lock()?;
            file.write_all_at(PACK_MAGIC, 0)?;
            let path = self.dir.join(format!("{name}.pack"));
            fs::rename(&new, &path)?;
            Ok(path)
        })();
        let path = made.inspect_err(|_| {
            let _ = fs::remove_file(&new);
        })?;
        let end = AtomicU64::new(PACK_MAGIC.len() as u64);
        Ok(Arc::new(Pack { path, file, end, retired: AtomicBool::new(false), fresh: true }))
    }

    /// Appends chunk `hash` to `pack`; `data` must hash to `hash`. Several
    /// threads may add to one pack at once.
    pub fn put(&self, pack: &Arc<Pack>, hash: &Hash, data: &[u8]) -> io::Result<()> {
        debug_assert_eq!(Hash::of(data), *hash);
        let len = u32::try_from(data.len()).map_err(|_| io::Error::other("chunk too large to stage"))?;
        let offset = pack.end.fetch_add((RECORD_HEAD + data.len()) as u64, Ordering::Relaxed);
        let mut head = [0u8; RECORD_HEAD];
        head[..32].copy_from_slice(hash.as_bytes());
        head[32..].copy_from_slice(&len.to_le_bytes());
        pack.file.write_all_at(&head, offset)?;
        pack.file.write_all_at(data, offset + RECORD_HEAD as u64)?;
        let staged = Staged { pack: Arc::clone(pack), offset: offset + RECORD_HEAD as u64, len };
        self.index.lock().expect("staging index poisoned").entry(*hash).or_insert(staged);
        Ok(())
    }

    /// Chunk `hash` if staged in a pack and intact, with where it is (a
    /// reference that keeps its pack readable after the pack is retired).
    /// A damaged copy is forgotten.
    pub fn read(&self, hash: &Hash) -> Option<(Staged, Vec<u8>)> {
        let s = self.index.lock().expect("staging index poisoned").get(hash).cloned()?;
        if let Some(data) = s.read(hash) {
            return Some((s, data));
        }
        let mut index = self.index.lock().expect("staging index poisoned");
        if index.get(hash).is_some_and(|i| Arc::ptr_eq(&i.pack, &s.pack) && i.offset == s.offset) {
            index.remove(hash);
        }
        None
    }

    /// Chunk `hash` of a file with content `content`, if an older release
    /// kept it and it is intact. A damaged copy is removed.
    pub fn legacy(&self, content: &Hash, hash: &Hash) -> Option<Vec<u8>> {
        if !self.legacy {
            return None;
        }
        let path = self.legacy_path(content, hash);
        let data = fs::read(&path).ok()?;
        if Hash::of(&data) == *hash {
            return Some(data);
        }
        let _ = fs::remove_file(&path);
        None
    }

    /// The files `pack` was written for are placed: its chunks go, and
    /// the file goes once no batch reads from it.
    pub fn retire(&self, pack: &Arc<Pack>) {
        pack.retired.store(true, Ordering::Release);
        self.index.lock().expect("staging index poisoned").retain(|_, s| !Arc::ptr_eq(&s.pack, pack));
    }

    /// The run is over with every file placed: what interrupted runs left
    /// is not needed any more.
    pub fn retire_leftovers(&self) {
        for pack in &self.leftovers {
            self.retire(pack);
        }
    }

    /// Drops the chunk files an older release kept for `content` (its
    /// file is placed).
    pub fn remove(&self, content: &Hash) {
        if self.legacy {
            let _ = fs::remove_dir_all(self.dir.join(content.to_hex()));
        }
    }

    /// Drops an older release's chunk files last added to more than
    /// `max_age` ago (left-over packs are handled by [`Staging::open`]).
    pub fn sweep(&self, max_age: Duration) -> io::Result<()> {
        if !self.legacy {
            return Ok(());
        }
        let now = std::time::SystemTime::now();
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            let md = e.metadata()?;
            if !md.is_dir() {
                continue;
            }
            if md.modified().ok().and_then(|m| now.duration_since(m).ok()).is_some_and(|age| age >= max_age) {
                tracing::info!("{}: removed, chunks of a transfer not resumed for {max_age:?}", e.path().display());
                let _ = fs::remove_dir_all(e.path());
            }
        }
        Ok(())
    }

    fn legacy_path(&self, content: &Hash, hash: &Hash) -> PathBuf {
        self.dir.join(content.to_hex()).join(hash.to_hex())
    }
}

/// Whether the file at `path` was last modified at least `age` ago.
fn older_than(path: &Path, age: Duration) -> bool {
    fs::symlink_metadata(path)
        .ok()
        .and_then(|m| m.modified().ok())
        .and_then(|m| m.elapsed().ok())
        .is_some_and(|a| a >= age)
}

/// The records of a left-over pack: hash, offset of the bytes, length.
/// A torn last record (a crash while appending) ends the list.
fn read_records(pack: &Pack) -> io::Result<Vec<(Hash, u64, u32)>> {
    let size = pack.file.metadata()?.len();
    let mut r = io::BufReader::with_capacity(1 << 16, &pack.file);
    let mut magic = [0u8; PACK_MAGIC.len()];
    r.read_exact(&mut magic)?;
    if &magic != PACK_MAGIC {
        return Err(io::Error::other("unknown header"));
    }
    let mut records = Vec::new();
    let mut at = PACK_MAGIC.len() as u64;
    let mut head = [0u8; RECORD_HEAD];
    while at + RECORD_HEAD as u64 <= size {
        r.read_exact(&mut head)?;
        let hash = Hash(head[..32].try_into().expect("32 bytes"));
        let len = u32::from_le_bytes(head[32..].try_into().expect("4 bytes"));
        let start = at + RECORD_HEAD as u64;
        if len == 0 || len > crate::chunk::MAX_SIZE || start + u64::from(len) > size {
            break;
        }
        records.push((hash, start, len));
        r.seek_relative(i64::from(len))?;
        at = start + u64::from(len);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn chunk(i: u8) -> (Hash, Vec<u8>) {
        let data = vec![i; 1000 + usize::from(i)];
        (Hash::of(&data), data)
    }

    fn packs(dir: &Path) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "pack"))
            .count()
    }

    #[test]
    fn chunks_are_kept_in_one_pack_and_checked_when_read() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("incoming");
        let s = Staging::open(&dir, DAY).unwrap();
        let pack = s.pack().unwrap();
        let (h1, d1) = chunk(1);
        let (h2, d2) = chunk(2);
        assert!(s.read(&h1).is_none());
        s.put(&pack, &h1, &d1).unwrap();
        s.put(&pack, &h2, &d2).unwrap();
        assert_eq!(s.read(&h1).unwrap().1, d1);
        let (staged, data) = s.read(&h2).unwrap();
        assert_eq!(data, d2);
        assert_eq!(packs(&dir), 1, "one file for the batch");
        // Taken over by the next run, a damaged record is not used, and
        // forgotten.
        pack.file.write_all_at(b"X", staged.offset).unwrap();
        drop((staged, pack, s));
        let s = Staging::open(&dir, DAY).unwrap();
        assert_eq!(s.read(&h1).unwrap().1, d1);
        assert!(s.read(&h2).is_none());
        assert!(s.read(&h2).is_none());
        assert_eq!(
            fs::metadata(&dir).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions())).unwrap() & 0o777,
            0o700
        );
    }

    #[test]
    fn a_retired_pack_goes_once_nobody_reads_it() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("incoming");
        let s = Staging::open(&dir, DAY).unwrap();
        let pack = s.pack().unwrap();
        let (h, data) = chunk(3);
        s.put(&pack, &h, &data).unwrap();
        let (held, _) = s.read(&h).unwrap();
        s.retire(&pack);
        drop(pack);
        assert!(s.read(&h).is_none(), "a retired pack's chunks leave the index");
        assert_eq!(held.read(&h).unwrap(), data, "a batch that found it still reads it");
        assert_eq!(packs(&dir), 1);
        drop(held);
        assert_eq!(packs(&dir), 0);
    }

    #[test]
    fn an_interrupted_runs_pack_is_taken_by_the_next_run() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("incoming");
        let (h1, d1) = chunk(4);
        let (h2, d2) = chunk(5);
        let path = {
            let s = Staging::open(&dir, DAY).unwrap();
            let pack = s.pack().unwrap();
            s.put(&pack, &h1, &d1).unwrap();
            s.put(&pack, &h2, &d2).unwrap();
            // Another run opening now leaves the pack alone: it is held.
            let other = Staging::open(&dir, DAY).unwrap();
            assert!(other.read(&h1).is_none());
            pack.path.clone()
            // The run is interrupted: the pack is neither retired nor removed.
        };
        // Torn in the middle of the last record.
        let len = fs::metadata(&path).unwrap().len();
        fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 10).unwrap();
        let s = Staging::open(&dir, DAY).unwrap();
        assert_eq!(s.read(&h1).unwrap().1, d1);
        assert!(s.read(&h2).is_none(), "the torn record is not used");
        s.retire_leftovers();
        drop(s);
        assert!(!path.exists(), "a run that placed everything removes what it took over");
    }

    #[test]
    fn stale_and_foreign_files_in_the_staging_area_are_handled() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("incoming");
        let (h, data) = chunk(6);
        let path = {
            let s = Staging::open(&dir, DAY).unwrap();
            let pack = s.pack().unwrap();
            s.put(&pack, &h, &data).unwrap();
            pack.path.clone()
        };
        fs::write(dir.join("junk.pack"), b"not a pack at all").unwrap();
        // Kept while younger than the limit; the junk goes.
        let s = Staging::open(&dir, DAY).unwrap();
        assert!(s.read(&h).is_some());
        assert!(!dir.join("junk.pack").exists());
        drop(s);
        let s = Staging::open(&dir, Duration::ZERO).unwrap();
        assert!(s.read(&h).is_none());
        assert!(!path.exists(), "a pack nobody resumed in time is removed");
    }

    #[test]
    fn an_older_releases_chunk_files_are_read_and_swept() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("incoming");
        let content = Hash::of(b"file");
        let (h, data) = chunk(7);
        fs::create_dir_all(dir.join(content.to_hex())).unwrap();
        fs::write(dir.join(content.to_hex()).join(h.to_hex()), &data).unwrap();
        let s = Staging::open(&dir, DAY).unwrap();
        assert_eq!(s.legacy(&content, &h).unwrap(), data);
        s.sweep(DAY).unwrap();
        assert!(s.legacy(&content, &h).is_some(), "fresh chunks are kept");
        s.remove(&content);
        assert!(s.legacy(&content, &h).is_none());
        fs::create_dir_all(dir.join(content.to_hex())).unwrap();
        fs::write(dir.join(content.to_hex()).join(h.to_hex()), b"damaged").unwrap();
        assert!(s.legacy(&content, &h).is_none(), "a damaged chunk file is not used");
        s.sweep(Duration::ZERO).unwrap();
        assert!(!dir.join(content.to_hex()).exists(), "stale chunk files are removed");
    }
}
