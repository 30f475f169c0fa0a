//! `verify`: re-read tracked files and stored chunks and check them
//! against their hashes.
//!
//! A file whose size or mtime differs from its record changed since the
//! last check: that is not damage, so it is counted as skipped. A file
//! whose size and mtime match but whose bytes do not is damage (bit rot,
//! or a write that restored the mtime) and is reported by path.
//!
//! `verify --repair` rebuilds the chunk store from the live trees: it drops
//! chunks that do not decode or match their hash, then stores every live
//! file's content again (a check that reads every file), and verifies
//! again. What the generations still miss after that is *lost*: no live
//! file holds it any more, and it is listed path by path.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rayon::prelude::*;
use serde::Serialize;

use super::ls::local_path;
use super::{Engine, EngineError};
use crate::chunk::ChunkRef;
use crate::hash::Hash;
use crate::progress::{ProgressSink, Unit};
use crate::store::{EntryRecord, StoreError, Writer, join_logical};
use crate::tree::Body;

/// One thing that does not match its hash.
#[derive(Debug, Serialize)]
pub struct Mismatch {
    /// The local path, chunk or generation concerned.
    pub path: String,
    /// What is wrong.
    pub problem: String,
}

/// What `verify` found.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Files re-read and compared.
    pub files_checked: u64,
    /// Files not compared because they changed since the last check.
    pub files_changed_since_check: u64,
    /// Stored chunks decoded and compared.
    pub chunks_checked: u64,
    /// Everything that did not match (after a repair: what it could not
    /// mend, other than lost backups).
    pub mismatches: Vec<Mismatch>,
    /// With `--repair`, what the repair did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair: Option<RepairReport>,
}

/// What `verify --repair` did and could not do.
#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    /// Damaged chunks dropped from the chunk stores.
    pub chunks_dropped: u64,
    /// Files read and stored again from the live trees.
    pub files_stored: u64,
    /// Generation paths whose content no live file holds any more: lost.
    pub lost: Vec<Mismatch>,
}

impl Engine {
    /// Repairs the chunk stores from the live trees and verifies the
    /// result (`verify --repair`), reporting to `progress`.
    pub fn repair(&self, w: &Writer, progress: &dyn ProgressSink) -> Result<VerifyReport, EngineError> {
        let mut repair = RepairReport::default();
        for cs in &self.chunk_stores {
            let list = cs.list()?;
            let bar = progress.start("checking chunks", Some(list.len() as u64), Unit::Items);
            let bad: Vec<Hash> = list
                .par_iter()
                .filter_map(|(h, _)| {
                    bar.inc(1);
                    cs.get(h).is_err().then_some(*h)
                })
                .collect();
            drop(bar);
            if !bad.is_empty() {
                tracing::warn!("{}: dropping {} damaged chunks", cs.path().display(), bad.len());
            }
            cs.remove(&bad)?;
            repair.chunks_dropped += bad.len() as u64;
        }
        // Unlinked, every group with backups reads and stores every live
        // file again on the check below (chunks already present are kept).
        let mut batch = self.store.batch(w);
        for (i, g) in self.groups.iter().enumerate() {
            if self.chunk_store(i).is_some() {
                batch.put_group_store(&g.name, None);
            }
        }
        batch.commit()?;
        let check = self.check_with_cause(w, &[], "local scan", None, false, None, progress, None)?;
        repair.files_stored = check.groups.iter().map(|g| g.stats.files_read).sum();
        let mut report = self.verify(progress)?;
        let (lost, rest): (Vec<Mismatch>, Vec<Mismatch>) =
            report.mismatches.into_iter().partition(|m| m.path.starts_with("generation "));
        repair.lost = lost;
        report.mismatches = rest;
        for p in check.problems.iter().filter(|p| p.severity == crate::scan::Severity::Error) {
            report.mismatches.push(Mismatch { path: p.path.display().to_string(), problem: p.message.clone() });
        }
        report.repair = Some(repair);
        Ok(report)
    }

    /// Verifies every tracked file, every stored chunk, and that every
    /// kept generation's content is present, reporting to `progress`.
    pub fn verify(&self, progress: &dyn ProgressSink) -> Result<VerifyReport, EngineError> {
        let mut report = VerifyReport::default();
        for group in &self.groups {
            let mut files: Vec<(PathBuf, EntryRecord)> = Vec::new();
            for item in self.store.all_dir_records(&group.name) {
                let (dir, record) = item?;
                for (name, rec) in record.children {
                    if rec.deleted || rec.body.kind() == crate::tree::Kind::Dir {
                        continue;
                    }
                    if let Some(path) = local_path(group, &join_logical(&dir, &name)) {
                        files.push((path, rec));
                    }
                }
            }
            let bar = progress.start(&format!("verifying {}", group.name), Some(files.len() as u64), Unit::Items);
            let results: Vec<Outcome> = files
                .par_iter()
                .map(|(path, rec)| {
                    let r = verify_entry(path, rec);
                    bar.inc(1);
                    r
                })
                .collect();
            drop(bar);
            for ((path, _), r) in files.iter().zip(results) {
                match r {
                    Outcome::Ok => report.files_checked += 1,
                    Outcome::Changed => report.files_changed_since_check += 1,
                    Outcome::Bad(problem) => {
                        report.files_checked += 1;
                        report.mismatches.push(Mismatch { path: path.display().to_string(), problem });
                    }
                }
            }
        }

        for cs in &self.chunk_stores {
            let list = cs.list()?;
            let bar = progress.start("verifying chunks", Some(list.len() as u64), Unit::Items);
            let bad: Vec<Mismatch> = list
                .par_iter()
                .filter_map(|(h, _)| {
                    bar.inc(1);
                    cs.get(h).err().map(|e| Mismatch { path: format!("chunk {h}"), problem: e.to_string() })
                })
                .collect();
            drop(bar);
            report.chunks_checked += list.len() as u64;
            report.mismatches.extend(bad);
        }

        for generation in self.store.generations()? {
            let Some(gi) = self.group_index(&generation.group) else { continue };
            let group = &self.groups[gi];
            let Some(chunks) = self.chunk_store(gi) else { continue };
            let mut stack: Vec<(Vec<u8>, Body, Vec<ChunkRef>)> = generation
                .roots
                .roots
                .iter()
                .zip(generation.root_chunks.iter().chain(std::iter::repeat(&Vec::new())))
                .filter_map(|((l, e), c)| e.as_ref().map(|e| (l.as_bytes().to_vec(), e.body.clone(), c.clone())))
                .collect();
            let mut seen_trees = std::collections::HashSet::new();
            let mut seen_chunks = std::collections::HashSet::new();
            while let Some((logical, body, list)) = stack.pop() {
                let shown = local_path(group, &logical)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| String::from_utf8_lossy(&logical).into_owned());
                let bad =
                    |problem: String| Mismatch { path: format!("generation {}: {shown}", generation.id), problem };
                match body {
                    Body::Dir { tree } => {
                        if !seen_trees.insert(tree) {
                            continue;
                        }
                        let node = self.store.node(&tree).and_then(|n| {
                            let n = n.ok_or_else(|| StoreError::Corrupt {
                                path: self.store.dir().to_path_buf(),
                                what: format!("tree node {tree}"),
                                why: "missing".into(),
                            })?;
                            let m = self.store.manifest(&tree, &n)?;
                            Ok((n, m))
                        });
                        match node {
                            Ok((node, manifest)) => {
                                for (e, c) in node.entries.into_iter().zip(manifest) {
                                    stack.push((join_logical(&logical, &e.name), e.body, c));
                                }
                            }
                            Err(e) => report.mismatches.push(bad(e.to_string())),
                        }
                    }
                    Body::File { .. } => {
                        for c in list {
                            if seen_chunks.insert(c.hash) && !chunks.has(&c.hash)? {
                                report.mismatches.push(bad(format!("chunk {} is missing", c.hash)));
                            }
                        }
                    }
                    Body::Symlink { .. } => {}
                }
            }
        }
        Ok(report)
    }
}

enum Outcome {
    Ok,
    Changed,
    Bad(String),
}

fn verify_entry(path: &std::path::Path, rec: &EntryRecord) -> Outcome {
    let md = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        // Deleted since the last check: a change, not damage.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Outcome::Changed,
        Err(e) => return Outcome::Bad(format!("cannot stat: {e}")),
    };
    let now = crate::scan::stat_of(&md);
    if now.size != rec.stat.size
        || now.mtime != rec.stat.mtime
        || (now.mode & libc::S_IFMT) != (rec.stat.mode & libc::S_IFMT)
    {
        return Outcome::Changed;
    }
    match &rec.body {
        Body::File { content, .. } => {
            let mut f = match std::fs::File::open(path) {
                Ok(f) => f,
                Err(e) => return Outcome::Bad(format!("cannot open: {e}")),
            };
            match crate::chunk::chunk_file(&mut f, now.size, |_, _| Ok(())) {
                Ok(chunks) => {
                    let found: Hash = crate::chunk::content_hash(&chunks);
                    if found == *content {
                        Outcome::Ok
                    } else {
                        Outcome::Bad(format!(
                            "content does not match the recorded hash (recorded {}, found {})",
                            content.short(),
                            found.short()
                        ))
                    }
                }
                Err(e) => Outcome::Bad(format!("cannot read: {e}")),
            }
        }
        Body::Symlink { target } => match std::fs::read_link(path) {
            Ok(t) if t.as_os_str().as_bytes() == target.as_slice() => Outcome::Ok,
            Ok(_) => Outcome::Bad("link target does not match the recorded one".into()),
            Err(e) => Outcome::Bad(format!("cannot read link: {e}")),
        },
        Body::Dir { .. } => Outcome::Ok,
    }
}
