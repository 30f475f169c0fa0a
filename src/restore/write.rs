//! Making one path on disk match its want.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, Permissions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use super::{RestoreReport, Want};
use crate::chunk::ChunkRef;
use crate::config::{Class, Matcher};
pub(crate) use crate::fs::apply_meta;
use crate::fs::{Dir, EntryType, Journal};
use crate::hash::Hash;
use crate::scan::{Problem, Severity};
use crate::store::{ChunkStore, Store};
use crate::tree::{Body, Meta};

pub(super) struct Writer<'a> {
    host: &'a str,
    store: &'a Store,
    chunks: &'a ChunkStore,
    /// In place: the group's patterns, so excluded paths are never touched.
    matcher: Option<&'a Matcher>,
    problems: Mutex<Vec<Problem>>,
    files_written: AtomicU64,
    bytes_written: AtomicU64,
    files_kept: AtomicU64,
    removed: AtomicU64,
    /// Ticks once per entry restored.
    progress: Box<dyn crate::progress::ProgressTask>,
    /// `0666` less the umask: the mode of a new file when none is recorded.
    new_file_mode: u32,
    /// Directories outside the trees being written that hold a target
    /// itself (an include root's parent, `--to DIR`): named by the
    /// configuration or the operator, so a symlink there is followed.
    /// Every other parent is opened without following its last component.
    trusted: HashSet<PathBuf>,
    /// The node's journal of temporaries: a restore killed half-way leaves
    /// its temporary files recorded, so the next run removes them (SPEC §7)
    /// instead of leaving `.snapsync-*.tmp` files in the tree for good.
    journal: Journal,
}

impl<'a> Writer<'a> {
    pub(super) fn new(
        host: &'a str,
        store: &'a Store,
        chunks: &'a ChunkStore,
        matcher: Option<&'a Matcher>,
        progress: Box<dyn crate::progress::ProgressTask>,
        trusted: HashSet<PathBuf>,
        journal: Journal,
    ) -> Self {
        Writer {
            host,
            store,
            chunks,
            matcher,
            problems: Mutex::default(),
            files_written: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            files_kept: AtomicU64::new(0),
            removed: AtomicU64::new(0),
            progress,
            new_file_mode: 0o666 & !crate::fs::tree_umask(),
            trusted,
            journal,
        }
    }

    pub(super) fn finish(self, report: &mut RestoreReport) {
        drop(self.progress);
        report.files_written = self.files_written.into_inner();
        report.bytes_written = self.bytes_written.into_inner();
        report.files_kept = self.files_kept.into_inner();
        report.entries_removed = self.removed.into_inner();
        report.problems.extend(self.problems.into_inner().expect("poisoned"));
    }

    /// Logs a change: an audit line when it changes a tracked tree (in
    /// place), a debug line when it writes a copy below `--to DIR`.
    fn applied(&self, action: &str, path: &Path) {
        if self.matcher.is_some() {
            crate::audit::applied(self.host, "restore", action, path);
        } else {
            tracing::debug!("restore: {action} {}", path.display());
        }
    }

    fn problem(&self, path: &Path, message: String) {
        let p = Problem { path: path.to_path_buf(), message, severity: Severity::Error };
        tracing::error!("{p}");
        self.problems.lock().expect("poisoned").push(p);
    }

    fn excluded(&self, path: &Path) -> bool {
        self.matcher.is_some_and(|m| m.classify(path) == Class::Excluded)
    }

    /// The directory holding `path`, opened as [`Writer::trusted`] says.
    fn parent_of<'p>(&self, path: &'p Path) -> io::Result<(Dir, &'p OsStr)> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::other("no parent directory"));
        };
        let dir = if self.trusted.contains(parent) { Dir::open_trusted(parent)? } else { Dir::open(parent)? };
        Ok((dir, name))
    }

    /// Makes `path` hold `want` (or nothing).
    pub(super) fn restore(&self, path: &Path, want: Option<&Want>) {
        self.progress.inc(1);
        let result = match want {
            None => self.remove(path),
            Some(w) => match &w.body {
                Body::File { size, content } => self.file(path, &w.meta, *size, content, &w.chunks),
                Body::Symlink { target } => self.symlink(path, &w.meta, target),
                Body::Dir { tree } => self.dir(path, &w.meta, tree),
            },
        };
        if let Err(e) = result {
            self.problem(path, e.to_string());
        }
    }

    /// Removes what is at `path`, leaving excluded paths (and so the
    /// directories holding them) alone.
    fn remove(&self, path: &Path) -> io::Result<()> {
        match self.parent_of(path) {
            Ok((dir, name)) => self.remove_in(&dir, name),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes `name` from `dir` as [`Self::remove`] says, relative to the
    /// directory's descriptor: a directory swapped for a symlink meanwhile
    /// is refused (never followed), a symlink is unlinked itself.
    fn remove_in(&self, dir: &Dir, name: &OsStr) -> io::Result<()> {
        let path = dir.path().join(name);
        match dir.entry_type(name)? {
            None => return Ok(()),
            Some(EntryType::Dir) => {
                let sub = dir.open_dir(name)?;
                let mut kept = false;
                for child in sub.names()? {
                    if self.excluded(&path.join(&child)) {
                        kept = true;
                    } else {
                        self.remove_in(&sub, &child)?;
                    }
                }
                if kept {
                    tracing::warn!("{}: kept, it holds excluded entries", path.display());
                    return Ok(());
                }
                dir.remove(name)?;
            }
            Some(_) => {
                dir.remove(name)?;
            }
        }
        self.applied("remove", &path);
        self.removed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Removes a directory in the way of a file or link.
    fn clear_dir(&self, path: &Path) -> io::Result<()> {
        match fs::symlink_metadata(path) {
            Ok(md) if md.is_dir() => {
                self.remove(path)?;
                if path.exists() {
                    return Err(io::Error::other("a directory holding excluded entries is in the way"));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn file(&self, path: &Path, meta: &Meta, size: u64, content: &Hash, chunks: &[ChunkRef]) -> io::Result<()> {
        self.clear_dir(path)?;
        // Already right? Then only the metadata may need setting.
        if let Ok(md) = fs::symlink_metadata(path)
            && md.is_file()
            && md.len() == size
            && let Ok(mut f) = crate::fs::open_nofollow(path)
            && f.metadata().is_ok_and(|m| (m.dev(), m.ino()) == (md.dev(), md.ino()))
            && let Ok(chunks) = crate::chunk::chunk_file(&mut f, size, |_, _| Ok(()))
            && crate::chunk::content_hash(&chunks) == *content
        {
            apply_meta(&f, meta)?;
            self.files_kept.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if crate::chunk::content_hash(chunks) != *content {
            return Err(io::Error::other(format!("the stored chunk list does not match content {content}")));
        }
        // A fresh temporary: never a name found in the tree (see
        // crate::fs).
        let (dir, name) = self.parent_of(path)?;
        let tmp = dir.create_temp(Some(&self.journal))?;
        let mut w = io::BufWriter::with_capacity(1 << 20, tmp.file());
        let mut written = 0u64;
        for c in chunks {
            // `get` checks every chunk against its hash before it is used.
            let data = self.chunks.get(&c.hash).map_err(io::Error::other)?;
            w.write_all(&data)?;
            written += data.len() as u64;
        }
        w.flush()?;
        drop(w);
        if written != size {
            return Err(io::Error::other(format!("assembled {written} bytes, expected {size}")));
        }
        // `ignore mod`: keep the replaced file's mode, or give a new file
        // the mode it would get from creating it (not the temporary's 0600).
        let mode = fs::symlink_metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(self.new_file_mode);
        tmp.set_meta(meta, mode)?;
        tmp.place(name).map_err(io::Error::other)?;
        dir.sync()?;
        self.applied("write", path);
        self.files_written.fetch_add(1, Ordering::Relaxed);
        self.bytes_written.fetch_add(size, Ordering::Relaxed);
        crate::killpoint::hit("restore.file");
        Ok(())
    }

    fn symlink(&self, path: &Path, meta: &Meta, target: &[u8]) -> io::Result<()> {
        self.clear_dir(path)?;
        let owned =
            |md: &fs::Metadata| meta.uid.is_none_or(|u| u == md.uid()) && meta.gid.is_none_or(|g| g == md.gid());
        if fs::read_link(path).is_ok_and(|t| t.as_os_str().as_bytes() == target)
            && fs::symlink_metadata(path).is_ok_and(|md| owned(&md))
        {
            return Ok(());
        }
        // A link with the wrong owner is replaced rather than chowned by
        // name: the name could lead to someone else's file by then.
        place_symlink(path, meta, target)?;
        self.applied("link", path);
        self.files_written.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn dir(&self, path: &Path, meta: &Meta, tree: &Hash) -> io::Result<()> {
        // Everything relative to the parent's descriptor, no name followed.
        let (up, name) = self.parent_of(path)?;
        let created = match up.entry_type(name)? {
            Some(EntryType::Dir) => false,
            Some(_) => {
                up.remove(name)?;
                up.make_dir(name)?;
                true
            }
            None => {
                up.make_dir(name)?;
                true
            }
        };
        // Opened without following a symlink put in its place: its
        // metadata is set through this descriptor only.
        let here = up.open_dir(name)?;
        let f = here.as_file()?;
        if meta.mode.is_some() {
            // Owner-writable while filling it; the recorded mode comes last.
            f.set_permissions(Permissions::from_mode(0o700))?;
        } else if created {
            // `ignore mod`: a new directory gets the mode `mkdir` would give
            // under the umask snapsync was started with; an existing one
            // keeps its own.
            f.set_permissions(Permissions::from_mode(0o777 & !crate::fs::tree_umask()))?;
        }
        let node = self
            .store
            .node(tree)
            .map_err(io::Error::other)?
            .ok_or_else(|| io::Error::other(format!("directory node {tree} is not in the store")))?;
        for name in here.names()? {
            if node.get(name.as_bytes()).is_none() && !self.excluded(&path.join(&name)) {
                self.remove_in(&here, &name)?;
            }
        }
        let manifest = self.store.manifest(tree, &node).map_err(io::Error::other)?;
        node.entries.into_par_iter().zip(manifest).for_each(|(e, chunks)| {
            let child = path.join(OsStr::from_bytes(&e.name));
            // Excluded now: never written, whatever the generation holds.
            if !self.excluded(&child) {
                self.restore(&child, Some(&Want { meta: e.meta, body: e.body, chunks }));
            }
        });
        apply_meta(&f, meta)?;
        Ok(())
    }
}

/// Makes `path` a symlink to `target` owned as `meta` says, atomically
/// replacing a file or link there (an empty directory must be removed
/// first); see [`Dir::place_symlink`].
pub(crate) fn place_symlink(path: &Path, meta: &Meta, target: &[u8]) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::other("no parent directory"));
    };
    let dir = Dir::open(parent)?;
    dir.place_symlink(name, target, meta).map_err(io::Error::other)?;
    dir.sync()
}
