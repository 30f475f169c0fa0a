//! `verify`: re-read tracked files and stored chunks and check them
//! against their hashes.
//!
//! A file whose size or mtime differs from its record changed since the
//! last check: that is not damage, so it is counted as skipped. A file
//! whose size and mtime match but whose bytes do not is damage (bit rot,
//! or a write that restored the mtime) and is reported by path.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rayon::prelude::*;
use serde::Serialize;

use super::ls::local_path;
use super::{Engine, EngineError};
use crate::hash::Hash;
use crate::store::{EntryRecord, join_logical};
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
    /// Everything that did not match.
    pub mismatches: Vec<Mismatch>,
}

impl Engine {
    /// Verifies every tracked file, every stored chunk, and that every
    /// kept generation's content is present.
    pub fn verify(&self) -> Result<VerifyReport, EngineError> {
        let mut report = VerifyReport::default();
        for group in &self.groups {
            let mut files: Vec<(PathBuf, EntryRecord)> = Vec::new();
            for item in self.store.all_entries(&group.name) {
                let (parent, name, rec) = item?;
                if rec.deleted || rec.body.kind() == crate::tree::Kind::Dir {
                    continue;
                }
                if let Some(path) = local_path(group, &join_logical(&parent, &name)) {
                    files.push((path, rec));
                }
            }
            let bar = self.bar(Some(files.len() as u64), &format!("verifying {}", group.name));
            let results: Vec<Outcome> = files
                .par_iter()
                .map(|(path, rec)| {
                    let r = verify_entry(path, rec);
                    bar.inc(1);
                    r
                })
                .collect();
            bar.finish_and_clear();
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
            let bar = self.bar(Some(list.len() as u64), "verifying chunks");
            let bad: Vec<Mismatch> = list
                .par_iter()
                .filter_map(|(h, _)| {
                    bar.inc(1);
                    cs.get(h).err().map(|e| Mismatch { path: format!("chunk {h}"), problem: e.to_string() })
                })
                .collect();
            bar.finish_and_clear();
            report.chunks_checked += list.len() as u64;
            report.mismatches.extend(bad);
        }

        for generation in self.store.generations()? {
            let Some(gi) = self.group_index(&generation.group) else {
                continue;
            };
            let group = &self.groups[gi];
            let chunks = self.chunk_store(gi);
            let mut stack: Vec<(Vec<u8>, Body)> = generation
                .roots
                .roots
                .iter()
                .filter_map(|(l, e)| e.as_ref().map(|e| (l.as_bytes().to_vec(), e.body.clone())))
                .collect();
            let mut seen_trees = std::collections::HashSet::new();
            let mut seen_contents = std::collections::HashSet::new();
            while let Some((logical, body)) = stack.pop() {
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
                        match self.store.node(&tree) {
                            Ok(Some(node)) => {
                                for e in node.entries {
                                    stack.push((join_logical(&logical, &e.name), e.body));
                                }
                            }
                            Ok(None) => report.mismatches.push(bad(format!("directory node {tree} is missing"))),
                            Err(e) => report.mismatches.push(bad(e.to_string())),
                        }
                    }
                    Body::File { content, .. } => {
                        if !seen_contents.insert(content) {
                            continue;
                        }
                        match self.store.content(&content) {
                            Ok(Some(list)) => {
                                if let Some(cs) = chunks {
                                    for c in list {
                                        if !cs.has(&c.hash)? {
                                            report.mismatches.push(bad(format!("chunk {} is missing", c.hash)));
                                        }
                                    }
                                }
                            }
                            Ok(None) => report.mismatches.push(bad(format!("chunk list {content} is missing"))),
                            Err(e) => report.mismatches.push(bad(e.to_string())),
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
