//! `check`: scan, then record what changed.

use std::path::PathBuf;

use serde::Serialize;

use super::{Engine, EngineError};
use crate::interrupt::Interrupt;
use crate::progress::{ProgressSink, Unit};
use crate::scan::{Adopted, Problem, ScanStats, Scanner, Scope, Severity};
use crate::store::{DirRecord, EntryRecord, Generation, Writer};
use crate::tree::Timestamp;

/// What a check did to one group.
#[derive(Debug, Serialize)]
pub struct GroupCheck {
    /// The group.
    pub group: String,
    /// Whether the group's tree changed.
    pub changed: bool,
    /// A read-only check ([`Engine::check_read_only`]): the tree on disk
    /// differs from the recorded one, and nothing was recorded.
    pub pending: bool,
    /// A read-only check: the logical paths that changed on disk since
    /// they were recorded (created, changed or deleted), the first
    /// `MAX_PENDING_LISTED` (1000); `stats.entries_changed` counts them all.
    pub pending_paths: Vec<String>,
    /// The generation recorded, if any.
    pub generation: Option<u64>,
    /// The group's root hash after the check.
    pub root: String,
    /// Counters of the scan.
    pub stats: ScanStats,
    /// Local paths whose state this check changed, for `do-local` actions
    /// (worked out only for a group that has one, and not when recording
    /// what a sync applied).
    #[serde(skip)]
    pub local_changes: Vec<PathBuf>,
}

/// Most changed paths a read-only check lists per group.
pub const MAX_PENDING_LISTED: usize = 1000;

/// What a check did.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    /// Per group.
    pub groups: Vec<GroupCheck>,
    /// Per-path problems.
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// Whether any problem fails the run.
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(|p| p.severity == Severity::Error)
    }
}

impl Engine {
    /// Scans every group (or only `paths`) and records local changes,
    /// reporting the scan to `progress`. Once `interrupt` is raised it
    /// stops ([`EngineError::Interrupted`]): the groups scanned before are
    /// recorded, nothing of the one being scanned.
    pub fn check(
        &self,
        w: &Writer,
        paths: &[PathBuf],
        progress: &dyn ProgressSink,
        interrupt: Option<&Interrupt>,
    ) -> Result<CheckReport, EngineError> {
        self.check_with_cause(w, paths, "local scan", None, true, None, progress, interrupt)
    }

    /// Like [`Engine::check`], naming the cause recorded with generations.
    /// With `only_group`, other groups are left alone; without `gc`, no
    /// generation is dropped (a restore needs its source to stay); with
    /// `adopt`, states a sync just applied are recorded under the peer's
    /// versions. The scan reports to `progress` and stops once `interrupt`
    /// is raised.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn check_with_cause(
        &self,
        w: &Writer,
        paths: &[PathBuf],
        cause: &str,
        only_group: Option<usize>,
        gc: bool,
        adopt: Option<&Adopted>,
        progress: &dyn ProgressSink,
        interrupt: Option<&Interrupt>,
    ) -> Result<CheckReport, EngineError> {
        let abs = self.absolute_inside(paths)?;
        let mut report = CheckReport { groups: Vec::new(), problems: Vec::new() };
        let mut any_changed = false;
        for (i, group) in self.groups.iter().enumerate() {
            if only_group.is_some_and(|g| g != i) {
                continue;
            }
            let Some(scope) = scope_of(group, &abs) else { continue };
            let bar = progress.start(&format!("scanning {}", group.name), None, Unit::Items);
            let chunks = self.chunk_store(i);
            let store_name = self.chunk_store_name_of(i);
            // Records marked `stored` refer to the chunk store named in the
            // state; under another one (or none before), read everything once.
            let linked = self.store.group_store(&group.name)?;
            let read_all = store_name.is_some() && linked.as_deref() != store_name;
            let (listing, trust_listings) = self.listings(group)?;
            let scope = if read_all { Scope::All } else { scope };
            let scanner = Scanner {
                group,
                store: &self.store,
                chunks,
                host: &self.host,
                progress: &*bar,
                read_all,
                adopt,
                interrupt,
                trust_listings,
            };
            let mut out = scanner.run(&scope)?;
            drop(bar);
            if out.interrupted {
                return Err(EngineError::Interrupted(group.name.clone()));
            }

            let old = self.store.root_set(&group.name)?;
            let changed = old.as_ref() != Some(&out.roots);
            let mut batch = self.store.batch(w);
            // Consumed as they go into the batch, so a first scan of a large
            // tree does not hold every record twice.
            let writes = std::mem::take(&mut out.writes);
            let wants_changes = adopt.is_none() && super::actions::wants_local_changes(group);
            let mut latest: std::collections::HashMap<Vec<u8>, Option<Vec<u8>>> = Default::default();
            for w in writes.dirs {
                if wants_changes {
                    latest.insert(w.dir.clone(), w.record.clone());
                }
                // The batch keeps the group's version digest.
                match &w.record {
                    Some(rec) => batch.put_dir_record_encoded(&group.name, &w.dir, rec, w.share)?,
                    None => batch.remove_dir_record(&group.name, &w.dir)?,
                }
            }
            let local_changes = super::actions::changed_paths(group, &self.store, &latest)?;
            drop(latest);
            for (hash, encoded, manifest) in writes.nodes {
                batch.put_node_encoded(&hash, &encoded, &manifest);
            }
            if out.seq != self.store.seq()? {
                batch.put_seq(out.seq);
            }
            if linked.as_deref() != store_name {
                batch.put_group_store(&group.name, store_name);
            }
            // Every directory was just listed under the current patterns.
            if !trust_listings && matches!(scope, Scope::All) && out.listings_current {
                batch.put_listing_fingerprint(&group.name, &listing);
            }
            if changed {
                batch.put_root_set(&group.name, &out.roots);
            }
            // A generation whenever the tree changed, and also when the
            // newest one does not hold the current tree (backups just
            // turned on, or moved to another directory).
            let newest_differs = || -> Result<bool, EngineError> {
                let gens = self.store.generations()?;
                Ok(gens
                    .iter()
                    .filter(|g| g.group == group.name)
                    .max_by_key(|g| g.id)
                    .is_none_or(|g| g.roots != out.roots))
            };
            let mut generation = None;
            if let Some(cs) = chunks {
                // Chunks must be durable before the state that says they are
                // stored, and before any generation that references them
                // (docs/design.md, "Write ordering").
                let record = changed || newest_differs()?;
                if record || out.added_bytes > 0 {
                    cs.persist()?;
                }
                if record {
                    let g = Generation {
                        id: self.store.next_generation_id()?,
                        group: group.name.clone(),
                        time: Timestamp::now(),
                        cause: cause.to_owned(),
                        roots: out.roots.clone(),
                        root_chunks: out.root_chunks.clone(),
                        entries: out.entries,
                        bytes: out.bytes,
                        // Counted by the store, so content a sync received
                        // from a peer before this check counts too.
                        added_bytes: cs.take_added(),
                    };
                    generation = Some(g.id);
                    batch.put_generation(&g);
                    crate::killpoint::hit("check.generation");
                }
            }
            batch.commit()?;
            if changed {
                any_changed = true;
                tracing::debug!(
                    "{}: {} entries changed{}",
                    group.name,
                    out.stats.entries_changed,
                    generation.map(|g| format!(", generation {g} recorded")).unwrap_or_default()
                );
            }
            report.groups.push(GroupCheck {
                group: group.name.clone(),
                changed,
                pending: false,
                pending_paths: Vec::new(),
                generation,
                root: out.roots.hash().to_hex(),
                stats: out.stats,
                local_changes,
            });
            report.problems.extend(out.problems);
        }
        // Also when no tree changed: a generation may have aged out of its
        // `backup-keep` bucket, or retention been lowered.
        if gc {
            self.gc_if_due(w, any_changed)?;
        }
        Ok(report)
    }
}

impl Engine {
    /// What `group`'s directories are listed under now
    /// ([`crate::scan::listing_fingerprint`]), and whether its records were
    /// listed under it ([`Scanner::trust_listings`]).
    fn listings(&self, group: &crate::config::ResolvedGroup) -> Result<(crate::hash::Hash, bool), EngineError> {
        let now = crate::scan::listing_fingerprint(group);
        Ok((now, self.store.listing_fingerprint(&group.name)? == Some(now)))
    }

    /// `paths` made absolute; each must be inside (or above) an include root.
    fn absolute_inside(&self, paths: &[PathBuf]) -> Result<Vec<PathBuf>, EngineError> {
        let abs: Vec<PathBuf> = paths.iter().map(|p| Engine::absolute(p)).collect::<Result<_, _>>()?;
        for p in &abs {
            let inside =
                self.groups.iter().flat_map(|g| &g.roots).any(|r| p.starts_with(&r.local) || r.local.starts_with(p));
            if !inside {
                return Err(EngineError::NotFound(format!("{} is not inside any included tree", p.display())));
            }
        }
        Ok(abs)
    }

    /// Refuses (a usage error) a path named on the command line that no
    /// group includes (excluded by every group whose tree holds it), or
    /// that is neither on disk nor tracked: `check`/`mark` of a mistyped
    /// path must not pass silently.
    pub fn named_paths_exist(&self, paths: &[PathBuf]) -> Result<(), EngineError> {
        for p in self.absolute_inside(paths)? {
            let holding: Vec<&crate::config::ResolvedGroup> =
                self.groups.iter().filter(|g| g.roots.iter().any(|r| p.starts_with(&r.local))).collect();
            if holding.is_empty() {
                // An ancestor of an include root: it stands for the roots
                // below it.
                continue;
            }
            let admitted = holding.iter().any(|g| g.roots.iter().any(|r| r.local == p) || g.matcher.admits(&p));
            if !admitted {
                return Err(EngineError::Usage(format!(
                    "{} is excluded by the configuration: snapsync never tracks it",
                    p.display()
                )));
            }
            if std::fs::symlink_metadata(&p).is_ok() {
                continue;
            }
            let mut tracked = false;
            for g in &holding {
                if let Some(logical) = g.to_logical(&p) {
                    tracked |= self.local_record(g, logical.as_os_str().as_encoded_bytes())?.is_some();
                }
            }
            if !tracked {
                return Err(EngineError::NotFound(format!("{} is neither present nor tracked", p.display())));
            }
        }
        Ok(())
    }

    /// Scans every group (or only `paths`) like [`Engine::check`], but
    /// records nothing (`status`, `sync --dry-run`; SPEC §3): no record,
    /// version counter, generation or chunk is written and nothing is
    /// collected. Each group's `pending` says whether its tree on disk
    /// differs from the recorded one; what differs is not itemized, and a
    /// reconcile that follows compares the recorded state.
    pub fn check_read_only(
        &self,
        paths: &[PathBuf],
        progress: &dyn ProgressSink,
        interrupt: Option<&Interrupt>,
    ) -> Result<CheckReport, EngineError> {
        let abs = self.absolute_inside(paths)?;
        let mut report = CheckReport { groups: Vec::new(), problems: Vec::new() };
        for group in &self.groups {
            let Some(scope) = scope_of(group, &abs) else { continue };
            let bar = progress.start(&format!("scanning {}", group.name), None, Unit::Items);
            // No chunk store: the scan reads and hashes, and stores nothing.
            let scanner = Scanner {
                group,
                store: &self.store,
                chunks: None,
                host: &self.host,
                progress: &*bar,
                read_all: false,
                adopt: None,
                interrupt,
                trust_listings: self.listings(group)?.1,
            };
            let out = scanner.run(&scope)?;
            drop(bar);
            if out.interrupted {
                return Err(EngineError::Interrupted(group.name.clone()));
            }
            let pending = self.store.root_set(&group.name)?.as_ref() != Some(&out.roots);
            let mut pending_paths = Vec::new();
            for w in &out.writes.dirs {
                let Some(encoded) = &w.record else { continue };
                let new = DirRecord::decode(encoded).expect("a record the scan just encoded decodes");
                let old = self.store.dir_record(&group.name, &w.dir)?.unwrap_or_default();
                for (name, rec) in &new.children {
                    if pending_paths.len() < MAX_PENDING_LISTED && differs_on_disk(old.get(name), rec) {
                        let logical = crate::store::join_logical(&w.dir, name);
                        pending_paths.push(String::from_utf8_lossy(&logical).into_owned());
                    }
                }
            }
            pending_paths.sort();
            report.groups.push(GroupCheck {
                group: group.name.clone(),
                changed: false,
                pending,
                pending_paths,
                generation: None,
                root: out.roots.hash().to_hex(),
                stats: out.stats,
                // A read-only check runs no actions: nothing was recorded.
                local_changes: Vec::new(),
            });
            report.problems.extend(out.problems);
        }
        Ok(report)
    }

    /// Stores tombstones `(dir, name, record)` of group `gi` as given, in
    /// one commit: merged versions of deletions both sides agree on, and a
    /// peer's tombstones for paths never seen here. Nothing on disk
    /// changes, and no tree does (tombstones are not in the tree), so this
    /// needs no scan; the version digest is kept up to date.
    pub(crate) fn patch_tombstones(
        &self,
        w: &Writer,
        gi: usize,
        patches: Vec<(Vec<u8>, Vec<u8>, EntryRecord)>,
    ) -> Result<(), EngineError> {
        let group = &self.groups[gi].name;
        let mut dirs: std::collections::BTreeMap<Vec<u8>, DirRecord> = Default::default();
        for (dir, name, rec) in patches {
            debug_assert!(rec.deleted, "only tombstones are patched in");
            let record = match dirs.entry(dir.clone()) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(self.store.dir_record(group, &dir)?.unwrap_or_default())
                }
            };
            match record.children.binary_search_by(|(n, _)| n.as_slice().cmp(&name)) {
                // A live entry is the scan's business, never patched over.
                Ok(i) if !record.children[i].1.deleted => continue,
                Ok(i) => record.children[i].1 = rec,
                Err(i) => record.children.insert(i, (name, rec)),
            }
        }
        // The batch keeps the version digest.
        let mut batch = self.store.batch(w);
        for (dir, rec) in &dirs {
            batch.put_dir_record(group, dir, rec)?;
        }
        batch.commit()?;
        Ok(())
    }
}

/// Whether the scanned record `new` describes another state on disk than
/// the recorded `old`: created, deleted, or changed in content, type or
/// metadata. A directory whose only change is below it is not counted
/// (its entries are).
fn differs_on_disk(old: Option<&EntryRecord>, new: &EntryRecord) -> bool {
    let Some(old) = old else { return !new.deleted };
    if old.deleted || new.deleted {
        return old.deleted != new.deleted;
    }
    let both_dirs = old.body.kind() == crate::tree::Kind::Dir && new.body.kind() == crate::tree::Kind::Dir;
    old.meta != new.meta || (!both_dirs && old.body != new.body)
}

/// What of `group` a check of the absolute paths `abs` scans (all of it
/// when none are given); `None` when none is in the group. A path above
/// a root means the whole root.
fn scope_of(group: &crate::config::ResolvedGroup, abs: &[PathBuf]) -> Option<Scope> {
    if abs.is_empty() {
        return Some(Scope::All);
    }
    let mut mine = Vec::new();
    for p in abs {
        for r in &group.roots {
            if r.local.starts_with(p) {
                mine.push(r.local.clone());
            } else if p.starts_with(&r.local) {
                mine.push(p.clone());
            }
        }
    }
    (!mine.is_empty()).then_some(Scope::Paths(mine))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::store::version_digest;

    /// An engine for group `g`, including `DIR/tree`, with its state in
    /// `DIR/state`; `DIR` goes when the first value is dropped.
    fn engine_on_tree() -> (tempfile::TempDir, std::path::PathBuf, Engine) {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        let src = format!("group g {{ host h; key {}/key; include {}; }}", dir.path().display(), tree.display());
        let config = crate::config::parse_str(&src, Path::new("t.cfg")).unwrap();
        let engine = Engine::open(&config, "h", &dir.path().join("state")).unwrap();
        (dir, tree, engine)
    }

    fn recomputed(engine: &Engine) -> crate::hash::Hash {
        let records: Vec<(Vec<u8>, DirRecord)> =
            engine.store.all_dir_records("g").collect::<Result<_, _>>().expect("records read");
        version_digest(records.iter().map(|(d, r)| (d.as_slice(), r)))
    }

    /// The digest kept up to date commit by commit equals the digest of
    /// all records, through creations, changes, deletions of whole
    /// directories, tombstone patches and re-creations.
    #[test]
    fn kept_version_digest_matches_the_records() {
        let (_dir, tree, engine) = engine_on_tree();
        let write = |p: &str, b: &[u8]| {
            let p = tree.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b).unwrap();
        };
        write("a/1", b"one");
        write("a/b/2", b"two");
        write("c", b"three");
        let steps: Vec<Box<dyn Fn()>> = vec![
            Box::new(|| {}),
            Box::new(|| write("a/1", b"one, changed")),
            Box::new(|| std::fs::remove_dir_all(tree.join("a")).unwrap()),
            Box::new(|| write("a/b/2", b"back")),
            Box::new(|| std::fs::remove_file(tree.join("c")).unwrap()),
        ];
        for step in steps {
            step();
            engine.check(&engine.store.writer_blocking(), &[], &crate::progress::Quiet, None).unwrap();
            assert_eq!(engine.store.version_digest("g").unwrap(), recomputed(&engine));
        }
        let tomb = EntryRecord { deleted: true, ..EntryRecord::tombstone_for_test() };
        engine
            .patch_tombstones(&engine.store.writer_blocking(), 0, vec![(b"x".to_vec(), b"never-seen".to_vec(), tomb)])
            .unwrap();
        assert_eq!(engine.store.version_digest("g").unwrap(), recomputed(&engine));
    }

    /// A check stopped by its caller records nothing of the group it was
    /// scanning; the next one records everything.
    #[test]
    fn an_interrupted_check_records_nothing_of_its_group() {
        let (_dir, tree, engine) = engine_on_tree();
        std::fs::create_dir_all(tree.join("d")).unwrap();
        std::fs::write(tree.join("d/a"), b"one").unwrap();
        let interrupt = Interrupt::new();
        interrupt.raise();
        let w = engine.store.writer_blocking();
        let e = engine.check(&w, &[], &crate::progress::Quiet, Some(&interrupt)).unwrap_err();
        assert!(matches!(&e, EngineError::Interrupted(g) if g == "g"), "{e}");
        assert!(engine.store.root_set("g").unwrap().is_none());
        assert_eq!(engine.store.seq().unwrap(), 0);
        let e = engine.check_read_only(&[], &crate::progress::Quiet, Some(&interrupt)).unwrap_err();
        assert!(matches!(e, EngineError::Interrupted(_)), "{e}");
        let report = engine.check(&w, &[], &crate::progress::Quiet, None).unwrap();
        assert_eq!(report.groups[0].stats.entries_seen, 3);
        assert!(engine.store.root_set("g").unwrap().is_some());
    }

    /// A read-only check sees local changes and records nothing: no
    /// record, counter, root, generation or chunk.
    #[test]
    fn read_only_check_reports_changes_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        let backups = dir.path().join("backups");
        let src = format!(
            "group g {{ host h; key {}/key; include {}; backup-directory {}; backup-generations 5; }}",
            dir.path().display(),
            tree.display(),
            backups.display()
        );
        let config = crate::config::parse_str(&src, Path::new("t.cfg")).unwrap();
        let engine = Engine::open(&config, "h", &dir.path().join("state")).unwrap();
        std::fs::create_dir_all(tree.join("d")).unwrap();
        std::fs::write(tree.join("d/a"), b"one").unwrap();
        engine.check(&engine.store.writer_blocking(), &[], &crate::progress::Quiet, None).unwrap();
        let state = |e: &Engine| {
            let records: Vec<(Vec<u8>, DirRecord)> = e.store.all_dir_records("g").collect::<Result<_, _>>().unwrap();
            let gens: Vec<u64> = e.store.generations().unwrap().iter().map(|g| g.id).collect();
            (
                records,
                gens,
                e.store.seq().unwrap(),
                e.store.root_set("g").unwrap(),
                e.store.version_digest("g").unwrap(),
            )
        };
        let stored = |dir: &Path| walkdir_count(dir);
        let before = (state(&engine), stored(&backups));
        let quiet = engine.check_read_only(&[], &crate::progress::Quiet, None).unwrap();
        assert!(quiet.groups.iter().all(|g| !g.pending && !g.changed && g.generation.is_none()));
        std::fs::write(tree.join("d/a"), b"one, changed with new bytes").unwrap();
        std::fs::write(tree.join("d/b"), b"two").unwrap();
        let seen = engine.check_read_only(&[], &crate::progress::Quiet, None).unwrap();
        assert!(seen.groups.iter().all(|g| g.pending && !g.changed && g.generation.is_none()), "{seen:?}");
        assert_eq!(
            seen.groups[0].pending_paths,
            [format!("{}/d/a", tree.display()), format!("{}/d/b", tree.display())]
        );
        let paths = engine.check_read_only(&[tree.join("d/b")], &crate::progress::Quiet, None).unwrap();
        assert!(paths.groups[0].pending);
        assert_eq!((state(&engine), stored(&backups)), before, "a read-only check wrote state or chunks");
        // A check records what the read-only one saw.
        let recorded = engine.check(&engine.store.writer_blocking(), &[], &crate::progress::Quiet, None).unwrap();
        assert!(recorded.groups[0].changed && recorded.groups[0].generation.is_some());
    }

    /// A check that changes a file does not collect each time: the nodes it
    /// replaced stay until what changed since the last collection reaches
    /// a quarter of what was live then; that collection frees them all.
    #[test]
    fn a_collection_waits_until_its_debt_is_due() {
        let (_dir, tree, engine) = engine_on_tree();
        for d in 0..100 {
            std::fs::create_dir_all(tree.join(format!("d{d}"))).unwrap();
            // Distinct contents: equal directories share one node.
            std::fs::write(tree.join(format!("d{d}/f")), format!("{d}")).unwrap();
        }
        let check = || engine.check(&engine.store.writer_blocking(), &[], &crate::progress::Quiet, None).unwrap();
        let nodes = || crate::store::keyspace_keys(&engine.store.nodes_keyspace()).count() as u64;
        check();
        let first = engine.store.gc_debt().unwrap();
        assert_eq!((first.nodes, first.live_nodes), (0, 101), "the first check collects: 100 directories and the root");
        assert_eq!(nodes(), 101);
        let mut collected_at = None;
        for k in 1..=20 {
            std::fs::write(tree.join(format!("d{k}/f")), format!("changed {k}")).unwrap();
            check();
            let debt = engine.store.gc_debt().unwrap();
            if debt.nodes == 0 {
                collected_at = Some(k);
                assert_eq!(nodes(), 101, "the collection freed every replaced node");
                break;
            }
            // Each change replaced the file's directory and the root.
            assert_eq!(debt.nodes, 2 * k);
            assert_eq!(nodes(), 101 + 2 * k, "replaced nodes wait for the collection");
        }
        // 2 nodes a change: due at 26 nodes (a quarter of 101, rounded up).
        assert_eq!(collected_at, Some(13));
    }

    /// Waits out the window in which the last change of `tree`'s
    /// directories counts as recent (two whole seconds by the clock), so
    /// that the next check's listings stand for the directories.
    fn settle() {
        std::thread::sleep(std::time::Duration::from_millis(2100));
    }

    fn full_check(engine: &Engine) -> GroupCheck {
        let w = engine.store.writer_blocking();
        let mut report = engine.check(&w, &[], &crate::progress::Quiet, None).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        report.groups.remove(0)
    }

    /// The live names recorded in `dir` (below the tree).
    fn tracked(engine: &Engine, tree: &Path, dir: &str) -> Vec<String> {
        let logical = format!("{}/{dir}", tree.display());
        let rec = engine.store.dir_record("g", logical.as_bytes()).unwrap().unwrap_or_default();
        rec.children.iter().filter(|(_, r)| !r.deleted).map(|(n, _)| String::from_utf8_lossy(n).into_owned()).collect()
    }

    /// A directory whose stat still matches its record is not listed
    /// again; any name created, removed or renamed in it moves its change
    /// time, and the next check lists it (and only it).
    #[test]
    fn a_directory_unchanged_since_its_listing_is_not_listed_again() {
        let (_dir, tree, engine) = engine_on_tree();
        std::fs::create_dir_all(tree.join("d/e")).unwrap();
        std::fs::write(tree.join("d/a"), b"one").unwrap();
        std::fs::write(tree.join("d/e/b"), b"two").unwrap();
        assert_eq!(full_check(&engine).stats.dirs_listed, 3);
        // Changed within the racy window: listed again.
        assert_eq!(full_check(&engine).stats.dirs_listed, 3);
        settle();
        assert_eq!(full_check(&engine).stats.dirs_listed, 3, "the first listing past the window");
        let quiet = full_check(&engine);
        assert_eq!((quiet.stats.dirs_listed, quiet.stats.entries_seen, quiet.changed), (0, 5, false));
        let status = engine.check_read_only(&[], &crate::progress::Quiet, None).unwrap();
        assert_eq!(status.groups[0].stats.dirs_listed, 0);

        std::fs::write(tree.join("d/new"), b"three").unwrap();
        let found = full_check(&engine);
        assert!(found.changed);
        assert_eq!(found.stats.dirs_listed, 1, "only d changed");
        assert_eq!(tracked(&engine, &tree, "d"), ["a", "e", "new"]);
        settle();
        full_check(&engine);
        std::fs::rename(tree.join("d/e/b"), tree.join("d/e/c")).unwrap();
        std::fs::remove_file(tree.join("d/a")).unwrap();
        let moved = full_check(&engine);
        assert_eq!(moved.stats.dirs_listed, 2);
        assert_eq!(
            (tracked(&engine, &tree, "d"), tracked(&engine, &tree, "d/e")),
            (vec!["e".into(), "new".into()], vec!["c".into()])
        );
    }

    /// A tombstone in a directory taken as recorded stays a tombstone; the
    /// name made again is found.
    #[test]
    fn a_tombstone_in_a_directory_taken_as_recorded_stays_until_its_name_is_back() {
        let (_dir, tree, engine) = engine_on_tree();
        std::fs::create_dir_all(tree.join("d")).unwrap();
        std::fs::write(tree.join("d/a"), b"one").unwrap();
        std::fs::write(tree.join("d/gone"), b"two").unwrap();
        full_check(&engine);
        std::fs::remove_file(tree.join("d/gone")).unwrap();
        assert!(full_check(&engine).changed);
        settle();
        full_check(&engine);
        let quiet = full_check(&engine);
        assert_eq!((quiet.stats.dirs_listed, quiet.changed), (0, false));
        let logical = format!("{}/d", tree.display());
        let rec = engine.store.dir_record("g", logical.as_bytes()).unwrap().unwrap();
        assert!(rec.get(b"gone").is_some_and(|r| r.deleted), "{rec:?}");
        std::fs::write(tree.join("d/gone"), b"back").unwrap();
        assert!(full_check(&engine).changed);
        assert_eq!(tracked(&engine, &tree, "d"), ["a", "gone"]);
    }

    /// A name a listing found but could not record (here a FIFO, which is
    /// skipped with a warning) keeps its directory listed by every check,
    /// so the name is looked at again each time.
    #[test]
    fn a_name_left_unrecorded_keeps_its_directory_listed() {
        let (_dir, tree, engine) = engine_on_tree();
        std::fs::create_dir_all(tree.join("d")).unwrap();
        std::fs::write(tree.join("d/a"), b"one").unwrap();
        let fifo = std::ffi::CString::new(tree.join("d/fifo").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        settle();
        let w = engine.store.writer_blocking();
        for listed in [2, 1, 1] {
            let report = engine.check(&w, &[], &crate::progress::Quiet, None).unwrap();
            assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
            assert!(report.problems[0].message.contains("not a regular file"), "{:?}", report.problems);
            assert_eq!(report.groups[0].stats.dirs_listed, listed, "the root is listed once, d every time");
        }
    }

    /// Listings are taken under the group's patterns: after a change of
    /// configuration, every directory is listed again once, so a name
    /// excluded before is found.
    #[test]
    fn a_changed_configuration_lists_every_directory_again() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        let open = |exclude: &str| {
            let src = format!(
                "group g {{ host h; key {}/key; include {}; {exclude} }}",
                dir.path().display(),
                tree.display()
            );
            let config = crate::config::parse_str(&src, Path::new("t.cfg")).unwrap();
            Engine::open(&config, "h", &dir.path().join("state")).unwrap()
        };
        std::fs::create_dir_all(tree.join("d")).unwrap();
        std::fs::write(tree.join("d/a"), b"one").unwrap();
        std::fs::write(tree.join("d/x.tmp"), b"scratch").unwrap();
        settle();
        let engine = open("exclude *.tmp;");
        full_check(&engine);
        assert_eq!(full_check(&engine).stats.dirs_listed, 0);
        assert_eq!(tracked(&engine, &tree, "d"), ["a"]);
        drop(engine);
        let engine = open("");
        assert_eq!(full_check(&engine).stats.dirs_listed, 2);
        assert_eq!(tracked(&engine, &tree, "d"), ["a", "x.tmp"]);
        assert_eq!(full_check(&engine).stats.dirs_listed, 0, "listed under the new patterns");
    }

    /// A check of some paths records them without listing their
    /// directory: another name created there meanwhile is still found by
    /// the next full check.
    #[test]
    fn a_check_of_one_path_leaves_its_directory_to_the_next_full_check() {
        let (_dir, tree, engine) = engine_on_tree();
        std::fs::create_dir_all(tree.join("d")).unwrap();
        std::fs::write(tree.join("d/a"), b"one").unwrap();
        settle();
        full_check(&engine);
        assert_eq!(full_check(&engine).stats.dirs_listed, 0);
        std::fs::write(tree.join("d/x"), b"named").unwrap();
        std::fs::write(tree.join("d/y"), b"not named").unwrap();
        let w = engine.store.writer_blocking();
        engine.check(&w, &[tree.join("d/x")], &crate::progress::Quiet, None).unwrap();
        drop(w);
        assert_eq!(tracked(&engine, &tree, "d"), ["a", "x"]);
        let full = full_check(&engine);
        assert_eq!(full.stats.dirs_listed, 1);
        assert_eq!(tracked(&engine, &tree, "d"), ["a", "x", "y"]);
    }

    /// How many files are under `dir`.
    fn walkdir_count(dir: &Path) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
        entries
            .map(|e| {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() { walkdir_count(&e.path()) } else { 1 }
            })
            .sum()
    }

    /// The same entry created on two hosts gets the same version; another
    /// state gets another.
    #[test]
    fn creation_versions_depend_on_the_state_only() {
        use crate::store::Version;
        use crate::tree::{Body, Meta};
        let meta = Meta { mode: Some(0o644), uid: Some(1), gid: Some(1), mtime: None };
        let body = Body::Symlink { target: b"t".to_vec() };
        let v = Version::created(&meta, &body);
        assert_eq!(v, Version::created(&meta.clone(), &body.clone()));
        assert_ne!(v, Version::created(&meta, &Body::Symlink { target: b"u".to_vec() }));
        assert!(v.0[0].0.starts_with('~') && v.0[0].1 == 1);
        // A directory's version ignores its children.
        let d1 = Version::created(&meta, &Body::Dir { tree: crate::hash::Hash::of(b"1") });
        let d2 = Version::created(&meta, &Body::Dir { tree: crate::hash::Hash::of(b"2") });
        assert_eq!(d1, d2);
    }
}
