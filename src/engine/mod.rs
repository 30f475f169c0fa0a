//! One node's local operations: the layer the command line calls.
//!
//! Terms:
//! - The *engine* ([`Engine`]) is one opened node: its configuration
//!   resolved for the local host, its state store (lock held) and the chunk
//!   stores of the groups that keep backups.
//! - A *check* scans groups and records what changed, as one atomic commit
//!   per group; when a group's tree changed and it keeps backups, the
//!   commit also records a generation, and a garbage collection follows.
//!
//! Every operation collects per-path problems and finishes the rest of its
//! work before reporting them (STYLE: one bad file does not stop a run).

mod actions;
mod check;
mod history;
mod ls;
mod verify;

pub(crate) use actions::shell_quote;
pub use actions::{ActionQueue, run_actions};
pub use check::{CheckReport, GroupCheck};
pub use history::{DiffChange, GenerationDiff, History, HistoryVersion};
pub use ls::LsEntry;
pub use verify::{Mismatch, RepairReport, VerifyReport};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, ConfigError, ResolvedGroup, canonical_host};
use crate::key::KeyError;
use crate::progress::Quiet;
use crate::store::{
    ChunkStore, EntryRecord, Force, GcGroup, GcReport, Generation, KeepReason, Retention, Store, StoreError, Writer,
    collect_garbage, collect_if_due, join_logical, retention_plan,
};
use crate::tree::{Kind, Timestamp};

/// An error that stops an operation as a whole.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The configuration is unusable for this host.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state or a chunk store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A group key file is unsafe (others may read it, not a regular file,
    /// too large) or unusable: a configuration error.
    #[error("group {group}: {source}")]
    Key {
        /// The group whose key it is.
        group: String,
        /// What is wrong, naming the file.
        #[source]
        source: KeyError,
    },
    /// The command names something that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The command asks for something the configuration does not allow.
    #[error("{0}")]
    Usage(String),
    /// The work was refused to keep data safe (the message says why).
    #[error("{0}")]
    Refused(String),
    /// The caller asked the work to stop ([`crate::interrupt`]); nothing
    /// of the group being scanned was recorded.
    #[error("interrupted: stopped before the scan of group {0} finished")]
    Interrupted(String),
    /// A filesystem operation outside the stores failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl EngineError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        EngineError::Io { path: path.to_path_buf(), source }
    }
}

/// One opened node.
pub struct Engine {
    /// The local host name.
    pub host: String,
    /// The groups that list the local host, resolved for it.
    pub groups: Vec<ResolvedGroup>,
    /// The node's state (shared with the engine a reloaded configuration
    /// makes, [`Engine::reconfigured`]).
    pub store: Arc<Store>,
    /// Open chunk stores.
    chunk_stores: Vec<Arc<ChunkStore>>,
    /// Their names (directory names in the backup directory).
    chunk_store_names: Vec<String>,
    /// For each group (same index as `groups`), its chunk store.
    group_chunks: Vec<Option<usize>>,
    /// Damage to the state or the chunk stores found on opening, and what
    /// was done about it; each message names the repair command.
    pub damage: Vec<String>,
}

impl Engine {
    /// Opens the node `host` of `config` with its state in `state_dir`.
    /// The host name is kept in canonical form (lower case). Group key files
    /// that can be opened are checked now, so that one others may read
    /// stops every command as a configuration error; a missing or
    /// unreadable one is reported when a peer needs it.
    pub fn open(config: &Config, host: &str, state_dir: &Path) -> Result<Engine, EngineError> {
        let host = &canonical_host(host);
        let groups = config.resolve(host)?;
        check_group_keys(&groups)?;
        let store = Arc::new(Store::open(state_dir)?);
        let w = store.try_writer().expect("a store being opened has no other writer");
        // Temporaries recorded by a process that was killed (sync or
        // restore) are removed now: this process holds the state, so none
        // is in use, and a restart must not leave them in the trees until
        // some later sync happens to apply something (SPEC §7).
        if let Err(e) = crate::fs::Journal::sweep_state(state_dir) {
            tracing::warn!("sweeping temporary files left by an interrupted run: {e}");
        }
        let damage = store.damage().to_vec();
        Engine::assemble(host, groups, Arc::clone(&store), &w, &[], damage)
    }

    /// The same node under another configuration (a running daemon's,
    /// edited): the state and the chunk stores open here are shared, a
    /// backup directory new to it gets its store. The host name stays.
    pub fn reconfigured(&self, config: &Config, w: &Writer) -> Result<Engine, EngineError> {
        let groups = config.resolve(&self.host)?;
        check_group_keys(&groups)?;
        let open: Vec<(PathBuf, String, Arc<ChunkStore>)> = self
            .chunk_stores
            .iter()
            .zip(&self.chunk_store_names)
            .map(|(cs, name)| (cs.path().to_path_buf(), name.clone(), Arc::clone(cs)))
            .collect();
        Engine::assemble(&self.host, groups, Arc::clone(&self.store), w, &open, Vec::new())
    }

    /// An engine of `groups` on `store`: opens the chunk stores of their
    /// backup directories (reusing those in `open`, by path) and checks
    /// the new ones for damage, adding what it finds to `damage`.
    fn assemble(
        host: &str,
        groups: Vec<ResolvedGroup>,
        store: Arc<Store>,
        w: &Writer,
        open: &[(PathBuf, String, Arc<ChunkStore>)],
        mut damage: Vec<String>,
    ) -> Result<Engine, EngineError> {
        let mut damaged: Vec<usize> = Vec::new();
        // Per chunk store: whether backups were recorded into it before
        // (`None` for one that was open already).
        let mut expected_stores: Vec<Option<bool>> = Vec::new();
        let mut chunk_stores: Vec<Arc<ChunkStore>> = Vec::new();
        let mut by_path: HashMap<PathBuf, usize> = HashMap::new();
        let mut group_chunks = Vec::new();
        let mut chunk_store_names = Vec::new();
        for g in &groups {
            let idx = match &g.backup_directory {
                None => None,
                Some(dir) => {
                    let expected = store.chunk_store_name(dir)?.is_some();
                    let name = chunk_store_name(&store, w, dir, host)?;
                    let path = dir.join(&name);
                    let i = match by_path.get(&path) {
                        Some(&i) => i,
                        None => {
                            match open.iter().find(|(p, _, _)| *p == path) {
                                Some((_, _, cs)) => {
                                    chunk_stores.push(Arc::clone(cs));
                                    expected_stores.push(None);
                                }
                                None => {
                                    let (cs, found) = ChunkStore::open_checked(&path, expected)?;
                                    if let Some(msg) = found {
                                        damage.push(msg);
                                        damaged.push(chunk_stores.len());
                                    }
                                    chunk_stores.push(Arc::new(cs));
                                    expected_stores.push(Some(expected));
                                }
                            }
                            chunk_store_names.push(name);
                            by_path.insert(path, chunk_stores.len() - 1);
                            chunk_stores.len() - 1
                        }
                    };
                    Some(i)
                }
            };
            group_chunks.push(idx);
        }
        // An empty store that backups were recorded into lost its content
        // (its journal truncated or its files removed).
        let gens = store.generations()?;
        for (c, cs) in chunk_stores.iter().enumerate() {
            if expected_stores[c] != Some(true) || damaged.contains(&c) || !cs.is_empty()? {
                continue;
            }
            let held = groups
                .iter()
                .zip(&group_chunks)
                .any(|(g, gc)| *gc == Some(c) && gens.iter().any(|x| x.group == g.name && x.bytes > 0));
            // A group no longer linked to the store (damage found and
            // reported before, by a command that did not store the live
            // files again) has nothing recorded as stored there: its empty
            // store is known, not news.
            let mut linked = false;
            for (g, gc) in groups.iter().zip(&group_chunks) {
                if *gc == Some(c) && store.group_store(&g.name)?.as_deref() == Some(chunk_store_names[c].as_str()) {
                    linked = true;
                }
            }
            if held && linked {
                damage.push(format!(
                    "chunk store {} is empty although generations were recorded into it; the next check \
                     stores the live files in it again, and older generations have lost content; run `{}` \
                     to list what is lost",
                    cs.path().display(),
                    crate::store::REPAIR_COMMAND
                ));
                damaged.push(c);
            }
        }
        if !damaged.is_empty() {
            // Records marked `stored` no longer have their chunks: unlink
            // the groups, so the next check reads and stores everything.
            let mut batch = store.batch(w);
            for (g, gc) in groups.iter().zip(&group_chunks) {
                if gc.is_some_and(|c| damaged.contains(&c)) {
                    batch.put_group_store(&g.name, None);
                }
            }
            batch.commit()?;
        }
        for msg in &damage {
            tracing::error!("{msg}");
        }
        Ok(Engine { host: host.to_owned(), groups, store, chunk_stores, chunk_store_names, group_chunks, damage })
    }

    /// The state database or chunk store that a read found damaged since
    /// it was opened, if any: it is moved aside when next opened.
    pub fn found_damaged(&self) -> Option<PathBuf> {
        if self.store.found_damaged() {
            return Some(self.store.dir().join("db"));
        }
        self.chunk_stores.iter().find(|cs| cs.found_damaged()).map(|cs| cs.path().to_path_buf())
    }

    /// The chunk store of group `i`, if it keeps backups.
    pub fn chunk_store(&self, i: usize) -> Option<&ChunkStore> {
        self.group_chunks[i].map(|c| &*self.chunk_stores[c])
    }

    /// The name of group `i`'s chunk store, if it keeps backups.
    pub(crate) fn chunk_store_name_of(&self, i: usize) -> Option<&str> {
        self.group_chunks[i].map(|c| self.chunk_store_names[c].as_str())
    }

    /// The index of the group named `name`.
    pub fn group_index(&self, name: &str) -> Option<usize> {
        self.groups.iter().position(|g| g.name == name)
    }

    /// Generations of all groups (or of `only`), oldest first.
    pub fn generations(&self, only: &[String]) -> Result<Vec<Generation>, EngineError> {
        for name in only {
            if self.group_index(name).is_none() {
                return Err(EngineError::NotFound(format!("no group {name:?} lists host {}", self.host)));
            }
        }
        Ok(self.store.generations()?.into_iter().filter(|g| only.is_empty() || only.contains(&g.group)).collect())
    }

    /// Why each generation of all groups (or of `only`) is kept; one
    /// with no reason goes at the next collection. Read-only.
    pub fn retention(&self, only: &[String]) -> Result<HashMap<u64, Vec<KeepReason>>, EngineError> {
        let all = self.generations(only)?;
        let mut out = HashMap::new();
        for g in &self.groups {
            let mine: Vec<&Generation> = all.iter().filter(|x| x.group == g.name).collect();
            if mine.is_empty() {
                continue;
            }
            let current = self.store.root_set(&g.name)?;
            out.extend(retention_plan(&self.store, &mine, current.as_ref(), &retention(g), &[], Timestamp::now())?);
        }
        Ok(out)
    }

    /// Drops the generations no group's retention keeps any more and frees
    /// what nothing kept references.
    pub fn gc(&self, w: &Writer) -> Result<GcReport, EngineError> {
        self.gc_protecting(w, &[])
    }

    /// Collects after a check ([`crate::store::collect_if_due`]):
    /// generations no rule keeps are dropped at once, everything else
    /// once enough changed since the last collection.
    pub(crate) fn gc_if_due(&self, w: &Writer, changed: bool) -> Result<(), EngineError> {
        let groups = self.gc_groups();
        let stores: Vec<&ChunkStore> = self.chunk_stores.iter().map(|c| &**c).collect();
        if let Some(report) = collect_if_due(&self.store, w, &groups, &stores, changed)? {
            log_collection(&report);
        }
        Ok(())
    }

    /// The groups as the collector sees them.
    fn gc_groups(&self) -> Vec<GcGroup<'_>> {
        self.groups
            .iter()
            .enumerate()
            .map(|(i, g)| GcGroup { name: &g.name, retention: retention(g), chunk_store: self.group_chunks[i] })
            .collect()
    }

    /// Like [`Engine::gc`], keeping the generations in `protected` (a
    /// restore's source) whatever the retention says.
    pub(crate) fn gc_protecting(&self, w: &Writer, protected: &[u64]) -> Result<GcReport, EngineError> {
        let groups = self.gc_groups();
        let stores: Vec<&ChunkStore> = self.chunk_stores.iter().map(|c| &**c).collect();
        let report = collect_garbage(&self.store, w, &groups, &stores, protected)?;
        log_collection(&report);
        Ok(report)
    }

    /// Makes a command-line path absolute and normal.
    pub(crate) fn absolute(path: &Path) -> Result<PathBuf, EngineError> {
        let abs = std::path::absolute(path).map_err(|e| EngineError::io(path, e))?;
        Ok(normalize(&abs))
    }

    /// Like `absolute`, falling back to the path as given.
    pub fn absolute_path(path: &Path) -> PathBuf {
        Engine::absolute(path).unwrap_or_else(|_| path.to_path_buf())
    }
}

/// Logs what a collection did, if anything.
fn log_collection(report: &GcReport) {
    if !report.generations_dropped.is_empty() || report.chunks_freed > 0 || report.nodes_freed > 0 {
        tracing::debug!(
            "gc: dropped generations {:?}, freed {} chunks ({} bytes) and {} nodes",
            report.generations_dropped,
            report.chunks_freed,
            report.bytes_freed,
            report.nodes_freed
        );
    }
}

/// The name of this node's chunk store in backup directory `dir`, made up
/// and recorded the first time. Each state directory (config and host
/// name) gets its own store, so two configurations sharing a backup
/// directory never free each other's chunks. A store named
/// `snapsync-HOST`, from before stores had their own names, is adopted.
fn chunk_store_name(store: &Store, w: &Writer, dir: &Path, host: &str) -> Result<String, EngineError> {
    if let Some(name) = store.chunk_store_name(dir)? {
        return Ok(name);
    }
    let host = host.replace('/', "_");
    let legacy = format!("snapsync-{host}");
    let name = if dir.join(&legacy).exists() {
        legacy
    } else {
        let mut tag = [0u8; 6];
        getrandom::fill(&mut tag).map_err(|e| EngineError::Refused(format!("cannot get random bytes: {e}")))?;
        format!("snapsync-{host}-{}", tag.iter().map(|b| format!("{b:02x}")).collect::<String>())
    };
    let mut batch = store.batch(w);
    batch.put_chunk_store_name(dir, &name);
    batch.commit()?;
    Ok(name)
}

/// Reads every group's key file that can be opened, with the checks of
/// [`crate::key::read`].
fn check_group_keys(groups: &[ResolvedGroup]) -> Result<(), EngineError> {
    for g in groups {
        let Some(path) = &g.key else { continue };
        match crate::key::read(path) {
            Ok(_) => {}
            // Missing or unreadable: reported when a peer needs it.
            Err(KeyError::Io { .. }) => {}
            Err(source) => return Err(EngineError::Key { group: g.name.clone(), source }),
        }
    }
    Ok(())
}

/// How a group keeps generations: `backup-generations` and `backup-keep`
/// with a backup directory, none without.
pub(crate) fn retention(g: &ResolvedGroup) -> Retention {
    if g.backup_directory.is_none() {
        return Retention::default();
    }
    Retention { versions: g.backup_generations, keep: g.backup_keep.clone() }
}

/// Removes `.` and resolves `..` lexically: the walk never follows links,
/// so neither does the naming of paths.
fn normalize(abs: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

impl Engine {
    /// `snapsync force`: binds a force to the local version of each of
    /// `paths` (and, with `recursive`, of every entry tracked below it) as
    /// it is now: the paths are checked first, so an edit not recorded yet
    /// is what wins. Returns the forces made.
    ///
    /// A path that is neither present nor tracked is a usage error
    /// ([`EngineError::NotFound`]); so is a path only in groups where this
    /// host is receive-only, where its version never wins anything.
    pub fn force(&self, w: &Writer, paths: &[PathBuf], recursive: bool) -> Result<Vec<Force>, EngineError> {
        if paths.is_empty() {
            return Err(EngineError::Usage("force needs at least one PATH".into()));
        }
        self.check(w, paths, &Quiet, None)?;
        let time = Timestamp::now();
        let mut made = Vec::new();
        for p in paths {
            let abs = Engine::absolute(p)?;
            let mut found = false;
            let mut receive_only = false;
            for g in &self.groups {
                let Some(logical) = g.to_logical(&abs) else { continue };
                let logical = logical.as_os_str().as_encoded_bytes().to_vec();
                let Some(rec) = self.local_record(g, &logical)? else { continue };
                if g.local.receive_only {
                    receive_only = true;
                    continue;
                }
                found = true;
                let mut entries = vec![(logical.clone(), rec.clone())];
                // A deleted directory's entries are covered too: their
                // deletions are what wins.
                if recursive && rec.body.kind() == Kind::Dir {
                    for (dir, d) in self.store.dir_records_below(&g.name, &logical)? {
                        entries.extend(d.children.iter().map(|(name, r)| (join_logical(&dir, name), r.clone())));
                    }
                }
                for (path, r) in entries {
                    made.push(Force {
                        group: g.name.clone(),
                        path,
                        versions: vec![r.version],
                        reached: Vec::new(),
                        time,
                    });
                }
            }
            if !found {
                return Err(if receive_only {
                    EngineError::Usage(format!(
                        "{}: this host is receive-only in every group that holds it, so its version never wins; \
                         force it on a host that sends",
                        abs.display()
                    ))
                } else {
                    EngineError::NotFound(format!(
                        "{} is neither present nor tracked in any group (run `snapsync check` if it was just created)",
                        abs.display()
                    ))
                });
            }
        }
        let mut batch = self.store.batch(w);
        for f in &made {
            batch.put_force(f);
        }
        batch.commit()?;
        Ok(made)
    }

    /// The forces still pending: made and not used up, and the local entry
    /// unchanged since (read-only: void ones are left for the next
    /// reconcile or `force --cancel` to drop).
    pub fn pending_forces(&self) -> Result<Vec<Force>, EngineError> {
        let mut out = Vec::new();
        for f in self.store.forces()? {
            let Some(g) = self.group_index(&f.group).map(|i| &self.groups[i]) else { continue };
            if f.current(self.local_record(g, &f.path)?.as_ref()) {
                out.push(f);
            }
        }
        Ok(out)
    }

    /// `snapsync force --cancel`: drops the forces on `paths` (and, with
    /// `recursive`, below them), pending or void. A path with none is a
    /// usage error ([`EngineError::NotFound`]). Returns the forces dropped.
    pub fn cancel_forces(&self, w: &Writer, paths: &[PathBuf], recursive: bool) -> Result<Vec<Force>, EngineError> {
        if paths.is_empty() {
            return Err(EngineError::Usage("force --cancel needs at least one PATH".into()));
        }
        let all = self.store.forces()?;
        let mut dropped: Vec<Force> = Vec::new();
        for p in paths {
            let abs = Engine::absolute(p)?;
            let mut found = false;
            for g in &self.groups {
                let Some(logical) = g.to_logical(&abs) else { continue };
                let logical = logical.as_os_str().as_encoded_bytes();
                let below = |path: &[u8]| {
                    path == logical
                        || (recursive
                            && path.len() > logical.len()
                            && path.starts_with(logical)
                            && (logical.ends_with(b"/") || path[logical.len()] == b'/'))
                };
                for f in all.iter().filter(|f| f.group == g.name && below(&f.path)) {
                    found = true;
                    if !dropped.contains(f) {
                        dropped.push(f.clone());
                    }
                }
            }
            if !found {
                return Err(EngineError::NotFound(format!("no force is recorded on {}", abs.display())));
            }
        }
        let mut batch = self.store.batch(w);
        for f in &dropped {
            batch.remove_force(&f.group, &f.path);
        }
        batch.commit()?;
        Ok(dropped)
    }

    /// The local record of logical `path` in group `g` (a tombstone for a
    /// deleted entry), if it is tracked.
    pub fn local_record(&self, g: &ResolvedGroup, path: &[u8]) -> Result<Option<EntryRecord>, EngineError> {
        let (parent, name) = if g.roots.iter().any(|r| r.logical.as_bytes() == path) {
            (&b""[..], path)
        } else {
            match path.iter().rposition(|&b| b == b'/') {
                Some(0) => (&path[..1], &path[1..]),
                Some(i) => (&path[..i], &path[i + 1..]),
                None => (&b""[..], path),
            }
        };
        Ok(self.store.entry(&g.name, parent, name)?)
    }
}
