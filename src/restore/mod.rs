//! Restore: write a recorded tree back to disk, every byte verified.
//!
//! Terms:
//! - The *want* of a path is the entry a generation holds there (or
//!   nothing). Restoring a path makes the disk match its want: files are
//!   assembled from stored chunks in a temporary file in the target
//!   directory, checked against their content hash, synced, given their
//!   metadata and renamed into place; entries the generation does not hold
//!   are removed.
//! - *In place* restores write over the included trees and may only touch
//!   included paths; *`--to DIR`* restores write a copy below DIR (each
//!   path at `DIR/<its absolute local path>`) and touch nothing else.
//!
//! Directory mtimes are not restored: they are not part of the tree (see
//! [`crate::tree`]).

mod plan;
pub(crate) mod write;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::chunk::ChunkRef;
use crate::engine::{Engine, EngineError};
use crate::progress::{ProgressSink, Unit};
use crate::scan::{Problem, Severity};
use crate::store::{Generation, Writer};
use crate::tree::{Body, Meta, Timestamp};

/// What a generation holds at one path.
#[derive(Clone, Debug)]
pub(crate) struct Want {
    pub(crate) meta: Meta,
    pub(crate) body: Body,
    /// The chunk list, for a file.
    pub(crate) chunks: Vec<ChunkRef>,
}

/// One restore target: (include root, local path, what the generation
/// holds there).
type Target = (PathBuf, PathBuf, Option<Want>);

/// Where a restore writes `local` (below include root `root`): in place,
/// or below `to`. Returns (the base the configuration or the operator
/// named, the destination).
fn place(to: Option<&Path>, root: &Path, local: &Path) -> (PathBuf, PathBuf) {
    match to {
        None => (root.to_path_buf(), local.to_path_buf()),
        Some(dir) => (dir.to_path_buf(), dir.join(local.strip_prefix("/").unwrap_or(local))),
    }
}

/// What `restore --dry-run` found it would do.
#[derive(Debug, Default, Serialize)]
pub struct RestorePlan {
    /// The generation it would restore.
    pub generation: u64,
    /// What it would change, in the order it would.
    pub changes: Vec<PlannedChange>,
}

/// One entry a restore would write or remove.
#[derive(Debug, Serialize)]
pub struct PlannedChange {
    /// `write` (create or replace) or `remove`.
    pub action: &'static str,
    /// `file`, `dir` or `symlink`: what it writes, or what it removes.
    pub kind: &'static str,
    /// The path on this host.
    pub path: PathBuf,
}

/// What a restore did.
#[derive(Debug, Default, Serialize)]
pub struct RestoreReport {
    /// The generation restored.
    pub generation: u64,
    /// The generation recording the state before the restore (in place only).
    pub before: Option<u64>,
    /// The generation recording the restored state (in place only).
    pub after: Option<u64>,
    /// Files written.
    pub files_written: u64,
    /// Bytes written to those files.
    pub bytes_written: u64,
    /// Files whose content was already right and only metadata was set.
    pub files_kept: u64,
    /// Entries removed because the generation does not hold them.
    pub entries_removed: u64,
    /// Per-path problems.
    #[serde(skip)]
    pub problems: Vec<Problem>,
}

impl RestoreReport {
    /// Whether any problem fails the run.
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(|p| p.severity == Severity::Error)
    }
}

impl Engine {
    /// The generation `id`, its group's index and the restore's targets:
    /// (include root, local path, want) for each of `paths` (every
    /// include root when none).
    fn targets(&self, id: u64, paths: &[PathBuf]) -> Result<(Generation, usize, Vec<Target>), EngineError> {
        let generation = self.store.generation(id)?.ok_or_else(|| {
            EngineError::NotFound(format!("there is no generation {id}; `snapsync generations` lists them"))
        })?;
        let gi = self.group_index(&generation.group).ok_or_else(|| {
            EngineError::NotFound(format!(
                "generation {id} belongs to group {:?}, which does not list host {}",
                generation.group, self.host
            ))
        })?;
        let group = &self.groups[gi];
        if self.chunk_store(gi).is_none() {
            return Err(EngineError::Usage(format!(
                "group {} has no backup-directory, so it keeps no content to restore",
                group.name
            )));
        }

        let mut targets: Vec<Target> = Vec::new();
        if paths.is_empty() {
            for r in &group.roots {
                if !generation.roots.roots.iter().any(|(l, _)| *l == r.logical) {
                    // Included since that generation: it has nothing to say
                    // about this root, which is not the same as "absent".
                    tracing::warn!(
                        "{}: not an include of group {} when generation {id} was recorded; left alone",
                        r.local.display(),
                        group.name
                    );
                    continue;
                }
                targets.push((r.local.clone(), r.local.clone(), self.want_at(&generation, &r.logical, Path::new(""))?));
            }
        } else {
            for p in paths {
                let abs = Engine::absolute(p)?;
                let root = group.root_of_local(&abs).ok_or_else(|| {
                    EngineError::NotFound(format!(
                        "{} is not inside an included tree of group {}",
                        abs.display(),
                        group.name
                    ))
                })?;
                if abs != root.local && !group.matcher.admits(&abs) {
                    return Err(EngineError::Usage(format!("{} is excluded from group {}", abs.display(), group.name)));
                }
                let rest = abs.strip_prefix(&root.local).expect("checked above");
                targets.push((root.local.clone(), abs.clone(), self.want_at(&generation, &root.logical, rest)?));
            }
        }
        Ok((generation, gi, targets))
    }

    /// `restore --dry-run`: what restoring `paths` (or the whole group) as
    /// generation `id` had them, in place or below `to`, would write and
    /// remove. Reads the disk, changes nothing.
    pub fn restore_plan(&self, id: u64, paths: &[PathBuf], to: Option<&Path>) -> Result<RestorePlan, EngineError> {
        let (_, gi, targets) = self.targets(id, paths)?;
        let matcher = to.is_none().then_some(&self.groups[gi].matcher);
        let mut planner = plan::Planner { store: &self.store, matcher, changes: Vec::new() };
        for (root, local, want) in &targets {
            let (base, dest) = place(to, root, local);
            // What the restore would refuse, the dry run refuses too (and
            // reads nothing through the link).
            crate::fs::no_links_between(&base, &dest)
                .map_err(|e| EngineError::Refused(format!("would not restore {}: {e}", dest.display())))?;
            planner.path(&dest, want.as_ref())?;
        }
        Ok(RestorePlan { generation: id, changes: planner.changes })
    }

    /// Restores `paths` (or the whole group) as generation `id` had them,
    /// in place or below `to`, reporting to `progress`.
    pub fn restore(
        &self,
        w: &Writer,
        id: u64,
        paths: &[PathBuf],
        to: Option<&Path>,
        progress: &dyn ProgressSink,
    ) -> Result<RestoreReport, EngineError> {
        let (_, gi, targets) = self.targets(id, paths)?;
        let group = &self.groups[gi];
        let chunks = self.chunk_store(gi).expect("checked by targets");

        let mut report = RestoreReport { generation: id, ..Default::default() };
        if to.is_none() {
            // Record what is there now, so the restore can be undone. A path
            // that could not be read is in no generation: overwriting it
            // could not be undone, so the restore stops here.
            let before = self.check_with_cause(
                w,
                &[],
                &format!("before restore of generation {id}"),
                Some(gi),
                false,
                None,
                progress,
                None,
            )?;
            let unreadable: Vec<String> = before
                .problems
                .iter()
                .filter(|p| p.severity == crate::scan::Severity::Error)
                .map(|p| p.path.display().to_string())
                .collect();
            if !unreadable.is_empty() {
                return Err(EngineError::Refused(format!(
                    "not restoring: the current state of {} could not be recorded first, so the restore could not be undone",
                    unreadable.join(", ")
                )));
            }
            report.before = self.record_current(w, gi, &format!("before restore of generation {id}"))?;
        }

        let task = progress.start(&format!("restoring generation {id}"), None, Unit::Items);
        let place = |root: &PathBuf, local: &PathBuf| place(to, root, local);
        // A target that is its base itself (an include root, or what
        // `--to DIR` holds of one) sits in a directory the configuration
        // or the operator named: that one may be reached through a link.
        let trusted = targets
            .iter()
            .map(|(root, local, _)| place(root, local))
            .filter(|(base, dest)| dest == base || dest.parent() == Some(base.as_path()))
            .filter_map(|(_, dest)| dest.parent().map(Path::to_path_buf))
            .collect();
        let matcher = to.is_none().then_some(&group.matcher);
        let journal =
            crate::fs::Journal::of_state(self.store.dir()).map_err(|e| EngineError::io(self.store.dir(), e))?;
        let writer = write::Writer::new(&self.host, &self.store, chunks, matcher, task, trusted, journal);
        for (root, local, want) in &targets {
            let (base, dest) = place(root, local);
            // Never write or delete through a symlink: every directory
            // between the base and the target must be a real one.
            crate::fs::no_links_between(&base, &dest)
                .map_err(|e| EngineError::Refused(format!("not restoring {}: {e}", dest.display())))?;
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| EngineError::io(parent, e))?;
            }
            writer.restore(&dest, want.as_ref());
        }
        writer.finish(&mut report);
        crate::killpoint::hit("restore.written");

        if to.is_none() {
            let scope: Vec<PathBuf> = targets.iter().map(|(_, p, _)| p.clone()).collect();
            let after = self.check_with_cause(
                w,
                &scope,
                &format!("restore of generation {id}"),
                Some(gi),
                false,
                None,
                progress,
                None,
            )?;
            report.after = after.groups.iter().find_map(|g| g.generation);
            report.problems.extend(after.problems);
            // The generation restored stays, whatever the retention says of
            // it now that the state before the restore is recorded too: a
            // restore never pushes out its own source (issue 10).
            self.gc_protecting(w, &[id])?;
        }
        Ok(report)
    }

    /// The entry generation `g` holds at `rest` below root `logical`
    /// (`None`: it held nothing there).
    fn want_at(&self, g: &Generation, logical: &str, rest: &Path) -> Result<Option<Want>, EngineError> {
        let Some(i) = g.roots.roots.iter().position(|(l, _)| l == logical) else {
            return Ok(None);
        };
        let Some(root) = g.roots.roots[i].1.clone() else {
            return Ok(None);
        };
        let chunks = g.root_chunks.get(i).cloned().unwrap_or_default();
        let mut want = Want { meta: root.meta, body: root.body, chunks };
        for comp in rest.iter() {
            let Body::Dir { tree } = want.body else {
                return Ok(None);
            };
            let node = self.store.node(&tree)?.ok_or_else(|| crate::store::StoreError::Corrupt {
                path: self.store.dir().to_path_buf(),
                what: format!("tree node {tree}"),
                why: "missing".into(),
            })?;
            let manifest = self.store.manifest(&tree, &node)?;
            let Some(at) = node.entries.iter().position(|e| e.name == comp.as_bytes()) else {
                return Ok(None);
            };
            let e = &node.entries[at];
            want = Want { meta: e.meta.clone(), body: e.body.clone(), chunks: manifest[at].clone() };
        }
        Ok(Some(want))
    }

    /// Records the group's current tree as a generation unless the newest
    /// generation already holds exactly it. Returns the generation that
    /// holds it.
    fn record_current(&self, w: &Writer, gi: usize, cause: &str) -> Result<Option<u64>, EngineError> {
        let group = &self.groups[gi];
        let Some(current) = self.store.root_set(&group.name)? else {
            return Ok(None);
        };
        let newest = self.store.generations()?.into_iter().filter(|g| g.group == group.name).max_by_key(|g| g.id);
        let roots = self.store.dir_record(&group.name, b"")?.unwrap_or_default();
        if let Some(n) = newest.filter(|n| n.roots == current) {
            return Ok(Some(n.id));
        }
        let (mut entries, mut bytes) = (0, 0);
        for (_, rec) in roots.children.iter().filter(|(_, r)| !r.deleted) {
            entries += rec.count;
            bytes += rec.bytes;
        }
        let root_chunks = current
            .roots
            .iter()
            .map(|(l, _)| roots.get(l.as_bytes()).map(|r| r.chunks.clone()).unwrap_or_default())
            .collect();
        let g = Generation {
            id: self.store.next_generation_id()?,
            group: group.name.clone(),
            time: Timestamp::now(),
            cause: cause.to_owned(),
            roots: current,
            root_chunks,
            entries,
            bytes,
            added_bytes: 0,
        };
        let mut batch = self.store.batch(w);
        batch.put_generation(&g);
        batch.commit()?;
        Ok(Some(g.id))
    }
}
