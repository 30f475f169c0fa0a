//! `restore --dry-run`: the walk of [`super::write`] without the writes.
//!
//! It compares each target's want with the disk as the restore would: a
//! file whose content already matches is left alone (metadata the restore
//! would set is not listed), an entry the generation does not hold is
//! removed (with everything below it that is not excluded), and an entry
//! of another kind is removed before the want is written. Nothing is
//! followed through a symlink: a link is an entry like any other.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{PlannedChange, Want};
use crate::config::{Class, Matcher};
use crate::engine::EngineError;
use crate::store::Store;
use crate::tree::Body;

pub(super) struct Planner<'a> {
    pub(super) store: &'a Store,
    /// In place: the group's patterns, so excluded paths are never listed.
    pub(super) matcher: Option<&'a Matcher>,
    pub(super) changes: Vec<PlannedChange>,
}

impl Planner<'_> {
    fn excluded(&self, path: &Path) -> bool {
        self.matcher.is_some_and(|m| m.classify(path) == Class::Excluded)
    }

    fn push(&mut self, action: &'static str, kind: &'static str, path: &Path) {
        self.changes.push(PlannedChange { action, kind, path: path.to_path_buf() });
    }

    /// What making `path` hold `want` (or nothing) would change.
    pub(super) fn path(&mut self, path: &Path, want: Option<&Want>) -> Result<(), EngineError> {
        let on_disk = fs::symlink_metadata(path).ok();
        let Some(want) = want else {
            self.remove(path);
            return Ok(());
        };
        match &want.body {
            Body::File { size, content } => {
                let same = on_disk.as_ref().is_some_and(|md| md.is_file() && md.len() == *size)
                    && crate::fs::open_nofollow(path)
                        .ok()
                        .and_then(|mut f| crate::chunk::chunk_file(&mut f, *size, |_, _| Ok(())).ok())
                        .is_some_and(|c| crate::chunk::content_hash(&c) == *content);
                if !same {
                    if on_disk.as_ref().is_some_and(|md| md.is_dir()) {
                        self.remove(path);
                    }
                    self.push("write", "file", path);
                }
            }
            Body::Symlink { target } => {
                if !fs::read_link(path).is_ok_and(|t| t.as_os_str().as_bytes() == target.as_slice()) {
                    if on_disk.as_ref().is_some_and(|md| md.is_dir()) {
                        self.remove(path);
                    }
                    self.push("write", "symlink", path);
                }
            }
            Body::Dir { tree } => {
                let node = self.store.node(tree)?.ok_or_else(|| crate::store::StoreError::Corrupt {
                    path: self.store.dir().to_path_buf(),
                    what: format!("tree node {tree}"),
                    why: "missing".into(),
                })?;
                match &on_disk {
                    Some(md) if md.is_dir() => {
                        for name in names(path) {
                            let child = path.join(&name);
                            if node.get(name.as_bytes()).is_none() && !self.excluded(&child) {
                                self.remove(&child);
                            }
                        }
                    }
                    Some(_) => {
                        self.remove(path);
                        self.push("write", "dir", path);
                    }
                    None => self.push("write", "dir", path),
                }
                let manifest = self.store.manifest(tree, &node)?;
                for (e, chunks) in node.entries.into_iter().zip(manifest) {
                    let child = path.join(OsStr::from_bytes(&e.name));
                    if !self.excluded(&child) {
                        self.path(&child, Some(&Want { meta: e.meta, body: e.body, chunks }))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Removing what is at `path`: the entries below a directory first,
    /// excluded ones left alone (and with them the directories holding them).
    fn remove(&mut self, path: &Path) {
        let Ok(md) = fs::symlink_metadata(path) else { return };
        if md.is_dir() {
            let mut kept = false;
            for name in names(path) {
                let child = path.join(&name);
                if self.excluded(&child) {
                    kept = true;
                } else {
                    self.remove(&child);
                }
            }
            if !kept {
                self.push("remove", "dir", path);
            }
        } else {
            let kind = if md.file_type().is_symlink() { "symlink" } else { "file" };
            self.push("remove", kind, path);
        }
    }
}

/// The names in directory `path`, sorted (none if it cannot be read).
fn names(path: &Path) -> Vec<std::ffi::OsString> {
    let mut out: Vec<_> =
        fs::read_dir(path).map(|d| d.filter_map(|e| e.ok().map(|e| e.file_name())).collect()).unwrap_or_default();
    out.sort();
    out
}
