//! `history PATH` and `generations --diff N [M]`: what the kept generations
//! hold, one path across all of them or all paths between two of them.
//!
//! Terms: a *version* of a path is what it holds in a generation when that
//! differs from what it held in the generation before: kind, metadata and
//! content (for a directory, its tree hash: anything below it); a path
//! that disappears has a *deleted* version. Both commands are read-only. "Now" is the group's
//! tree as the last check recorded it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::ls::{local_path, lossy};
use super::{Engine, EngineError};
use crate::store::{DiffScope, Side, diff_trees, entry_at};
use crate::tree::{Body, Timestamp};

/// Every kept version of one path.
#[derive(Debug, Serialize)]
pub struct History {
    /// The group tracking the path.
    pub group: String,
    /// The path on this host.
    #[serde(serialize_with = "lossy")]
    pub path: PathBuf,
    /// Oldest first.
    pub versions: Vec<HistoryVersion>,
}

/// One version of a path: the oldest kept generation holding it.
#[derive(Debug, Serialize)]
pub struct HistoryVersion {
    /// The generation (`restore --generation N PATH` brings it back).
    pub generation: u64,
    /// When that generation was recorded.
    #[serde(skip)]
    pub time: Timestamp,
    /// Why it was recorded (`local scan`, `from PEER`, a restore).
    pub cause: String,
    /// The peer the version came from, for a generation a sync recorded.
    pub peer: Option<String>,
    /// Whether the path is absent in that generation.
    pub deleted: bool,
    /// `file`, `dir` or `symlink` (none when deleted).
    pub kind: Option<&'static str>,
    /// A file's size.
    pub size: Option<u64>,
    /// A file's content hash or a directory's tree hash.
    pub hash: Option<String>,
    /// A link's target.
    pub target: Option<String>,
}

/// The paths that differ between two generations of one group, or
/// between one and the group's current tree.
#[derive(Debug, Serialize)]
pub struct GenerationDiff {
    /// The group of both.
    pub group: String,
    /// The older side's generation.
    pub from: u64,
    /// The newer side's generation (none: the current tree).
    pub to: Option<u64>,
    /// What differs, in path order.
    pub changes: Vec<DiffChange>,
}

/// One path that differs.
#[derive(Debug, Serialize)]
pub struct DiffChange {
    /// `added`, `removed` or `changed` (from `from` to `to`).
    pub change: &'static str,
    /// What the path is on the newer side (the older one if removed).
    pub kind: &'static str,
    /// The path on this host.
    #[serde(serialize_with = "lossy")]
    pub path: PathBuf,
}

impl Engine {
    /// `history PATH`: every kept version of `path`, oldest first.
    pub fn history(&self, path: &Path) -> Result<History, EngineError> {
        let abs = Engine::absolute(path)?;
        let (gi, root) = self
            .groups
            .iter()
            .enumerate()
            .find_map(|(i, g)| g.root_of_local(&abs).map(|r| (i, r)))
            .ok_or_else(|| EngineError::NotFound(format!("{} is not inside an included tree", abs.display())))?;
        let group = &self.groups[gi];
        if self.chunk_store(gi).is_none() {
            return Err(EngineError::Usage(format!(
                "group {} has no backup-directory, so it keeps no versions",
                group.name
            )));
        }
        let rest = abs.strip_prefix(&root.local).expect("root_of_local checked it");
        let names: Vec<&[u8]> = rest.iter().map(std::os::unix::ffi::OsStrExt::as_bytes).collect();
        let mut versions: Vec<HistoryVersion> = Vec::new();
        let mut last: Option<Option<Side>> = None;
        for g in self.store.generations()?.iter().filter(|g| g.group == group.name) {
            let side = entry_at(&self.store, &g.roots, &root.logical, &names)?;
            // The path's first appearance, and every change after it.
            if last.as_ref() == Some(&side) || (last.is_none() && side.is_none()) {
                continue;
            }
            last = Some(side.clone());
            let (size, hash, target) = match side.as_ref().map(|s| &s.body) {
                Some(Body::File { size, content }) => (Some(*size), Some(content.to_hex()), None),
                Some(Body::Dir { tree }) => (None, Some(tree.to_hex()), None),
                Some(Body::Symlink { target }) => (None, None, Some(String::from_utf8_lossy(target).into_owned())),
                None => (None, None, None),
            };
            versions.push(HistoryVersion {
                generation: g.id,
                time: g.time,
                cause: g.cause.clone(),
                peer: g.cause.strip_prefix("from ").map(str::to_owned),
                deleted: side.is_none(),
                kind: side.as_ref().map(|s| s.body.kind().as_str()),
                size,
                hash,
                target,
            });
        }
        Ok(History { group: group.name.clone(), path: abs, versions })
    }

    /// `generations --diff FROM [TO]`: the paths that differ between
    /// generation `from` and generation `to` (or the current tree).
    pub fn generation_diff(&self, from: u64, to: Option<u64>) -> Result<GenerationDiff, EngineError> {
        let get = |id: u64| {
            self.store.generation(id)?.ok_or_else(|| {
                EngineError::NotFound(format!("there is no generation {id}; `snapsync generations` lists them"))
            })
        };
        let old = get(from)?;
        let gi = self.group_index(&old.group).ok_or_else(|| {
            EngineError::NotFound(format!(
                "generation {from} belongs to group {:?}, which does not list host {}",
                old.group, self.host
            ))
        })?;
        let group = &self.groups[gi];
        let new = match to {
            Some(id) => {
                let g = get(id)?;
                if g.group != old.group {
                    return Err(EngineError::Usage(format!(
                        "generation {from} is of group {} and generation {id} of group {}: only generations of \
                         one group can be compared",
                        old.group, g.group
                    )));
                }
                g.roots
            }
            None => self.store.root_set(&group.name)?.unwrap_or_default(),
        };
        let mut changes = Vec::new();
        diff_trees(&self.store, &old.roots, &new, DiffScope::All, &mut |path, o, n| {
            let (change, kind) = match (o, n) {
                (None, Some(n)) => ("added", n.body.kind()),
                (Some(o), None) => ("removed", o.body.kind()),
                (_, Some(n)) => ("changed", n.body.kind()),
                (None, None) => return,
            };
            if let Some(path) = local_path(group, path) {
                changes.push(DiffChange { change, kind: kind.as_str(), path });
            }
        })?;
        Ok(GenerationDiff { group: group.name.clone(), from, to, changes })
    }
}
