//! Applying what a reconcile decided to take, in two phases per batch of
//! files, so that no network round trip happens while this node's writer
//! lock is held (SPEC §6) and nothing is written into a file found in the
//! tree (see [`crate::fs`]).
//!
//! 1. Without the writer lock: each file's chunk list (inline, or fetched
//!    page by page, refused when its count cannot fit the declared size);
//!    which chunks are here (the chunk store, the staging area, the file's
//!    old version, the files the apply replaces or deletes, for a large
//!    apply any other tracked file, each local copy read and checked
//!    against its hash); the rest fetched from the peer, verified
//!    and kept in the chunk store, or, without one, in the staging area in
//!    the state directory (`STATE/incoming/chunks`), where only the daemon
//!    can write. An interrupted transfer takes its chunks from there, so
//!    chunks received once are not asked for again.
//! 2. With the writer lock, local work only: every planned path is checked
//!    again (its record in the store still the one the decision was made
//!    on, its `lstat` still what that record says, ctime included); then
//!    directories and links (parents before children), files (each built
//!    in a fresh temporary from local chunks, given its metadata through
//!    its descriptor, renamed into place and checked to be the file
//!    built), deletions (children before parents), then the files and
//!    links that replace a directory (a type change: built before the
//!    deletions, so they can take chunks from the files deleted; placed
//!    once the emptied directory is removed), and one scan of the touched
//!    paths that records it all under the peer's versions, as one commit
//!    with a generation (cause `from PEER`). Every change to the tree goes
//!    through [`crate::fs`], relative to a directory descriptor opened
//!    from the include root without following a symlink. A directory the
//!    deletions could not empty stays: with entries the group keeps (newer
//!    than the peer's change) that is the outcome, not a problem, for a
//!    deletion, and a type-change conflict for a replacement.
//!
//! Files are taken in batches of at most [`BATCH_CHUNKS`] chunk references,
//! so the chunk lists held at once stay bounded however many files a peer
//! sends; directories and links go with the first batch, deletions and
//! version-only changes with the last (or with the first batch holding a
//! file that replaces a directory; such files come last). Nothing is replaced or deleted
//! unless the path still is what the local record says: a local change not
//! recorded yet is never overwritten; the path is reported and left for the
//! next run, whose check records the local change (and then sees the
//! conflict, if there is one).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::walk::{GroupReport, Plan};
use super::{Peer, SyncError, request};
use crate::chunk::ChunkRef;
use crate::chunk::offset_of;
use crate::config::ResolvedGroup;
use crate::engine::EngineError;
use crate::fs::{Dir, EntryType, Journal, Pack, STAGING_MAX_AGE, Staged, Staging, apply_meta};
use crate::hash::Hash;
use crate::node::{Node, Stats};
use crate::progress::{ProgressTask, Unit};
use crate::proto::{self, ChangeAction, FileChunks, Message, PendingChunks};
use crate::scan::Adopted;
use crate::store::{DirRecord, EntryRecord, Version, Writer, join_logical};
use crate::tree::{Body, Kind, Meta, Timestamp};

/// Taking the peer's state of one path.
pub(super) struct Take {
    /// The logical path.
    pub logical: Vec<u8>,
    /// The local path.
    pub local: PathBuf,
    /// The local record the decision was made on. Boxed: a first sync's
    /// plans have none, and a plan is held for every file of the run.
    pub old: Option<Box<EntryRecord>>,
    /// The state to take, with the version to record it under.
    pub new: EntryRecord,
    /// What it does, for the audit trail.
    pub action: ChangeAction,
}

/// How many `GetChunks` requests run at once.
const PARALLEL_REQUESTS: usize = 4;

/// Files built before their temporaries are synced together and placed:
/// bounds the descriptors held open at once.
const PLACE_GROUP: usize = 128;

/// Threads that build one group's temporaries: creating, writing and
/// closing files is mostly system calls, which overlap well.
const BUILD_THREADS: usize = 4;

/// Threads that sync one group's temporaries. Syncing files one after
/// another costs one journal commit each (2.5-3.7 s for 1,000 files of
/// 35 KB on ext4 here); started with `sync_file_range` and synced from 8
/// threads, they share commits (0.16-0.25 s).
const SYNC_THREADS: usize = 8;

/// Bytes an apply takes, at least, before it looks for chunks in every
/// tracked file: indexing them reads every directory record of the group
/// (38 ms at 20,000 files here), which costs more than fetching a few
/// files. Renamed and moved files find their chunks without it, in the
/// files the same apply deletes.
const TREE_INDEX_MIN_BYTES: u64 = 16 << 20;

/// Bytes taken per directory record the state holds, at least, for the
/// same: the index costs what the tree holds, fetching what the apply
/// takes (64 KiB per directory is 67 MiB at 20,000 files, 3.4 GiB at a
/// million).
const TREE_INDEX_BYTES_PER_DIR: u64 = 64 << 10;

/// Most chunk references held for one batch of files: 2^20 (about 40 MiB,
/// files of 64 GiB at the average chunk size). A single file with a longer
/// list is a batch of its own.
pub(super) const BATCH_CHUNKS: usize = 1 << 20;

/// Most bytes of files in one batch. Batches are pipelined: the next
/// batch's chunks arrive while this one is placed, so the network and the
/// disk work at once, and at most two batches' chunks are staged.
const BATCH_BYTES: u64 = 64 << 20;

/// Most bytes of files in the first batch, which nothing overlaps: the
/// limit doubles from this one batch to the next, up to [`BATCH_BYTES`],
/// so placing starts early.
const FIRST_BATCH_BYTES: u64 = 4 << 20;

/// The most chunks a file of `size` bytes can have: every chunk but the
/// last is at least [`crate::chunk::MIN_SIZE`].
pub(crate) fn max_chunks(size: u64) -> u64 {
    size.div_ceil(u64::from(crate::chunk::MIN_SIZE))
}

use crate::fs::{open_nofollow, read_checked};

/// One file being received.
struct FileJob {
    take: Take,
    content: Hash,
    chunks: Vec<ChunkRef>,
}

/// A batch of files whose chunks are being fetched.
struct Batch {
    jobs: Vec<FileJob>,
    /// Chunks found staged when the batch was planned (by an earlier
    /// batch, or an interrupted run): kept readable until it is placed,
    /// whatever happens to the packs they are in.
    held: HashMap<Hash, Staged>,
    /// The pack its fetched chunks go to (without a chunk store).
    pack: Option<Arc<Pack>>,
    /// The requests in flight; dropping the batch cancels them.
    fetch: tokio::task::JoinSet<Result<LaneResult, SyncError>>,
}

/// What only the last batch applies (or the first batch holding a file
/// that replaces a directory: the directory's contents go first).
#[derive(Default)]
struct Rest {
    deletions: Vec<Take>,
    /// Symlinks that replace a directory: placed once its contents are
    /// deleted.
    replacing: Vec<Take>,
    reversions: Vec<(Vec<u8>, PathBuf, EntryRecord)>,
    patches: Vec<(Vec<u8>, Vec<u8>, PathBuf, EntryRecord)>,
}

pub(super) struct Apply<'a> {
    node: &'a Arc<Node>,
    peer: &'a Arc<Peer>,
    gi: usize,
    g: &'a ResolvedGroup,
    adopt: Adopted,
    scope: Vec<PathBuf>,
    /// Local paths changed, for the group's actions (handed to the run's
    /// queue after each local phase).
    changed: Vec<PathBuf>,
    problems: Vec<String>,
    /// Logical paths that could not be applied.
    failed: HashSet<Vec<u8>>,
    /// Directories whose deletion by the peer this apply left in place
    /// because everything they hold conflicts with the peer.
    kept_in_conflict: HashSet<Vec<u8>>,
    /// Directory records read from the store, by logical directory, so
    /// that checking each of a directory's entries decodes its record
    /// once, not once per entry (a renamed directory of 1,000 files made
    /// that 4,000 decodes of a 1,000-entry record). Emptied whenever the
    /// writer lock is taken or its phase commits: under the lock no other
    /// writer changes a record; outside it a record read may be
    /// outdated, which only delays a refusal to the checks made under
    /// the lock (a record only moves on).
    records: Mutex<HashMap<Vec<u8>, Option<Arc<DirRecord>>>>,
    /// Where chunks of files already here are.
    local: LocalChunks,
    /// Whether every file taken was placed: then the staged chunks of
    /// interrupted runs are not needed any more.
    all_placed: bool,
}

impl<'a> Apply<'a> {
    pub(super) fn new(node: &'a Arc<Node>, peer: &'a Arc<Peer>, gi: usize) -> Self {
        Apply {
            node,
            peer,
            gi,
            g: &node.engine.groups[gi],
            adopt: Adopted::new(),
            scope: Vec::new(),
            changed: Vec::new(),
            problems: Vec::new(),
            failed: Default::default(),
            kept_in_conflict: Default::default(),
            records: Default::default(),
            local: LocalChunks::default(),
            all_placed: true,
        }
    }

    fn problem(&mut self, path: &Path, why: impl std::fmt::Display) {
        if let Some(logical) = self.g.to_logical(path) {
            self.failed.insert(logical.into_os_string().into_vec());
        }
        let p = format!("{}: {why}", path.display());
        tracing::warn!("from {}: {p}", self.peer.host);
        self.problems.push(p);
    }

    /// Whether `logical` is one of the group's include roots.
    fn is_include_root(&self, logical: &[u8]) -> bool {
        self.g.roots.iter().any(|r| r.logical.as_bytes() == logical)
    }

    fn audit(&mut self, action: ChangeAction, path: &Path) {
        crate::audit::applied(&self.node.engine.host, &self.peer.host, action.as_str(), path);
        self.changed.push(path.to_path_buf());
    }

    fn adopt(&mut self, logical: Vec<u8>, local: PathBuf, record: EntryRecord) {
        self.adopt.insert(logical, record);
        self.scope.push(local);
    }

    /// The staging area and the journal of temporaries, in the state
    /// directory.
    fn incoming(&self) -> Result<(Arc<Staging>, Journal), SyncError> {
        let dir = self.node.state_dir().join("incoming");
        let io = |e| SyncError::Engine(EngineError::io(&dir, e));
        let staging = Staging::open(&dir.join("chunks"), STAGING_MAX_AGE).map_err(io)?;
        Ok((Arc::new(staging), Journal::of_state(self.node.state_dir()).map_err(io)?))
    }

    /// Applies `plans`; returns the generation recorded, if any. Called
    /// without the writer lock, which it takes for each local phase.
    /// `later`: plans the walk applies later, whose deletions are places
    /// to find chunks too (a file moved by the peer).
    pub(super) async fn run(
        mut self,
        plans: Vec<Plan>,
        later: &[Plan],
        report: &mut GroupReport,
    ) -> Result<Option<u64>, SyncError> {
        let (staging, journal) = self.incoming()?;
        let mut others = Vec::new();
        let is_file = |p: &Plan| matches!(p, Plan::Take(t) if !t.new.deleted && t.new.body.kind() == Kind::File);
        let mut files = Vec::with_capacity(plans.iter().filter(|p| is_file(p)).count());
        let mut rest = Rest::default();
        for plan in plans {
            match plan {
                Plan::Patch { dir, name, local, record } => rest.patches.push((dir, name, local, record)),
                Plan::Reversion { logical, local, record } => rest.reversions.push((logical, local, record)),
                Plan::Take(t) if t.new.deleted => rest.deletions.push(t),
                // SPEC §4.18: an include root is a directory on every host;
                // a peer's symlink or file there is never taken.
                Plan::Take(t) if self.is_include_root(&t.logical) && t.new.body.kind() != Kind::Dir => {
                    let what = if t.new.body.kind() == Kind::Symlink { "a symlink" } else { "a file" };
                    self.problem(
                        &t.local,
                        format!(
                            "refused: the peer has {what} at this include root; an include root is always a \
                             directory (the peer's operator must make the configured path the tree itself)"
                        ),
                    );
                }
                Plan::Take(t) => match t.new.body.kind() {
                    Kind::File => files.push(t),
                    Kind::Symlink if replaces_dir(&t) => rest.replacing.push(t),
                    Kind::Dir | Kind::Symlink => others.push(t),
                },
            }
        }
        // Files that replace a directory come last: the batch that holds
        // the first of them also deletes what the directories held.
        files.sort_by_key(replaces_dir);
        // Counts the bytes of the files taken as they become available
        // here: found locally or received.
        let total: u64 = files.iter().map(|t| if let Body::File { size, .. } = t.new.body { size } else { 0 }).sum();
        let whole_tree = total
            >= TREE_INDEX_MIN_BYTES.max(self.node.engine.store.approximate_dirs() as u64 * TREE_INDEX_BYTES_PER_DIR);
        let later = later.iter().filter_map(|p| if let Plan::Take(t) = p { Some(t) } else { None });
        self.local = LocalChunks::of(files.iter().chain(&rest.deletions).chain(later), whole_tree);
        let receiving: Arc<dyn ProgressTask> = if total > 0 {
            let what = format!("receiving from {} ({})", self.peer.host, self.g.name);
            Arc::from(self.peer.progress.start(&what, Some(total), Unit::Bytes))
        } else {
            Arc::new(crate::progress::Quiet)
        };
        let mut files = files.into_iter();
        let mut others = Some(others);
        let mut rest = Some(rest);
        let mut generation = None;
        // One batch is placed while the next one's chunks arrive.
        let mut fetching: Option<Batch> = None;
        let mut limit = FIRST_BATCH_BYTES;
        loop {
            let jobs = self.next_batch(&mut files, limit).await;
            limit = (limit * 2).min(BATCH_BYTES);
            let last = files.len() == 0;
            let batch = self.start_fetch(jobs, &staging, &receiving, report)?;
            if let Some(previous) = fetching.replace(batch) {
                let this =
                    self.place_batch(previous, &mut others, &mut rest, false, &staging, &journal, report).await?;
                generation = this.or(generation);
            }
            if last {
                let batch = fetching.take().expect("a batch was just started");
                let this = self.place_batch(batch, &mut others, &mut rest, true, &staging, &journal, report).await?;
                if self.all_placed && self.failed.is_empty() {
                    staging.retire_leftovers();
                }
                return Ok(this.or(generation));
            }
        }
    }

    /// The next files to take, with their chunk lists: at most
    /// [`BATCH_CHUNKS`] chunk references and `limit` bytes, or one file.
    async fn next_batch(&mut self, files: &mut std::vec::IntoIter<Take>, limit: u64) -> Vec<FileJob> {
        let mut batch = Vec::new();
        let (mut entries, mut bytes) = (0, 0);
        for mut t in files.by_ref() {
            self.rebase(&mut t);
            // Not worth fetching for: it would be refused below. A read of
            // a directory record decoded once per directory (`records`),
            // like the walk's: handing the worker thread off around each
            // one (`block_in_place`) cost a thread switch per file and
            // left the runtime with hundreds of threads.
            if let Err(why) = self.record_unchanged(&t) {
                self.refuse(&t.local, &t.logical, &t.new.version, why);
                continue;
            }
            match self.chunk_list(&t).await {
                Ok(chunks) => {
                    entries += chunks.len();
                    let Body::File { content, size } = t.new.body else { unreachable!("only files here") };
                    bytes += size;
                    batch.push(FileJob { take: t, content, chunks });
                    if entries >= BATCH_CHUNKS || bytes >= limit {
                        break;
                    }
                }
                Err(e) => self.problem(&t.local, e),
            }
        }
        batch
    }

    /// Waits for `batch`'s chunks and places it; `last` when no batch
    /// follows. The first batch placed also applies `others`; the last
    /// one (or the first holding a file that replaces a directory)
    /// applies `rest`.
    #[allow(clippy::too_many_arguments)]
    async fn place_batch(
        &mut self,
        mut batch: Batch,
        others: &mut Option<Vec<Take>>,
        rest: &mut Option<Rest>,
        last: bool,
        staging: &Staging,
        journal: &Journal,
        report: &mut GroupReport,
    ) -> Result<Option<u64>, SyncError> {
        let fetched = !batch.fetch.is_empty();
        let waited = std::time::Instant::now();
        while let Some(r) = batch.fetch.join_next().await {
            let r = r.expect("fetch task panicked")?;
            report.chunks_fetched += r.chunks;
            report.bytes_fetched += r.bytes;
        }
        if fetched {
            crate::killpoint::hit("apply.fetched");
        }
        let (files, waited) = (batch.jobs.len(), waited.elapsed());
        let placing = std::time::Instant::now();
        let now = last || batch.jobs.iter().any(|j| replaces_dir(&j.take));
        let generation = self
            .local_phase(others.take(), batch, if now { rest.take() } else { None }, staging, journal, report)
            .await;
        tracing::debug!(
            "from {}: batch of {files} files placed in {:?} after waiting {waited:?} for its chunks",
            self.peer.host,
            placing.elapsed()
        );
        generation
    }

    /// The local phase of one batch, under the writer lock; then what
    /// changed goes to the run's action queue.
    async fn local_phase(
        &mut self,
        mut others: Option<Vec<Take>>,
        mut batch: Batch,
        mut rest: Option<Rest>,
        staging: &Staging,
        journal: &Journal,
        report: &mut GroupReport,
    ) -> Result<Option<u64>, SyncError> {
        let node: &Arc<Node> = self.node;
        let writer = node.engine.store.writer().await;
        let w = &writer;
        // Records read before the lock may be outdated now.
        self.forget_records();
        let first = others.is_some();
        let generation = tokio::task::block_in_place(|| -> Result<Option<u64>, SyncError> {
            // Records only move on while the lock is held elsewhere: each
            // plan is rebased once here, on the record it meets.
            let takes = others.iter_mut().flatten().chain(batch.jobs.iter_mut().map(|j| &mut j.take));
            let rest_takes = rest.iter_mut().flat_map(|r| r.deletions.iter_mut().chain(r.replacing.iter_mut()));
            for t in takes.chain(rest_takes) {
                self.rebase(t);
            }
            // No temporary of this node is in use while the lock is free.
            if let Err(e) = journal.sweep() {
                tracing::warn!("sweeping temporary files left by an interrupted run: {e}");
            }
            if first && let Err(e) = staging.sweep(STAGING_MAX_AGE) {
                tracing::warn!("sweeping stale received chunks: {e}");
            }
            for t in others.into_iter().flatten() {
                self.apply_other(w, t);
            }
            let mut reversions = Vec::new();
            let mut patches_planned = Vec::new();
            // Files are placed, then what was deleted goes (renamed files
            // take their chunks from the old copies first), then files and
            // symlinks that replace a directory, built before the
            // deletions, take the emptied directory's place.
            self.place_files(w, batch, staging, journal, |this| {
                if let Some(rest) = rest {
                    for t in rest.deletions.into_iter().rev() {
                        this.delete(w, t);
                    }
                    for t in rest.replacing {
                        this.apply_other(w, t);
                    }
                    reversions = rest.reversions;
                    patches_planned = rest.patches;
                }
            });
            let mut patches = Vec::new();
            for (logical, local, mut record) in reversions {
                match self.still_planned(w, &logical, &mut record) {
                    Ok(()) => self.adopt(logical, local, record),
                    Err(why) => self.refuse(&local, &logical, &record.version, why),
                }
            }
            for (dir, name, local, mut record) in patches_planned {
                let logical = join_logical(&dir, &name);
                // Something on disk where the tombstone goes was made after
                // the last check: it is a change to decide next run, never
                // one to record as if it came after the deletion.
                let planned = self.still_planned(w, &logical, &mut record).and_then(|()| nothing_at(&local));
                match planned {
                    Ok(()) => patches.push((dir, name, record)),
                    Err(why) => self.refuse(&local, &logical, &record.version, why),
                }
            }
            report.problems.append(&mut self.problems);
            report.forget_changes(&self.failed);
            let mut generation = None;
            if !self.scope.is_empty() {
                let scope = minimal(std::mem::take(&mut self.scope));
                let cause = format!("from {}", self.peer.host);
                let adopt = std::mem::take(&mut self.adopt);
                let checked = self.node.engine.check_with_cause(
                    w,
                    &scope,
                    &cause,
                    Some(self.gi),
                    true,
                    Some(&adopt),
                    &*self.peer.progress,
                    None,
                )?;
                report.problems.extend(checked.problems.iter().map(|p| p.to_string()));
                generation = checked.groups.first().and_then(|g| g.generation);
            }
            if !patches.is_empty() {
                self.node.engine.patch_tombstones(w, self.gi, patches)?;
            }
            Ok(generation)
        });
        // The commit above changed records, and once the lock is free
        // other writers may.
        self.forget_records();
        let generation = generation?;
        drop(writer);
        // The actions run once the run ends (all its peers and pulls);
        // a pull that outlived its session runs them for its own paths.
        let changed = std::mem::take(&mut self.changed);
        if !changed.is_empty() && !self.peer.actions.add(self.gi, false, changed.iter().cloned()) {
            tokio::task::block_in_place(|| crate::engine::run_actions(self.g, &[], &changed));
        }
        Ok(generation)
    }

    /// A plan that no longer fits: a problem, unless the record now holds
    /// a version that has seen the one planned (another reconcile of this
    /// node took it, or something newer, meanwhile): then there is nothing
    /// left to do and nothing to report.
    fn refuse(&mut self, local: &Path, logical: &[u8], planned: &crate::store::Version, why: String) {
        // The empty version (a receive-only host removing an entry the
        // group never had) is dominated by every record, the unchanged one
        // included: it proves nothing.
        if !planned.0.is_empty()
            && self.current(logical).ok().flatten().is_some_and(|now| now.version.dominates(planned))
        {
            self.failed.insert(logical.to_vec());
            return;
        }
        self.problem(local, why);
    }

    /// Rebases a plan on the record the store holds now, when another
    /// reconcile of this node (a session with another peer, or another
    /// run) moved that record on after the plan was made and the version
    /// planned has seen the record's version: taking it is still what the
    /// walk would decide against the record now. Refusing it instead made
    /// the reconcile walk again, and a path that several peers' sessions
    /// keep moving could use up every pass (`MAX_PASSES`) and fail the run
    /// with "changed while syncing" although nothing conflicted. The record
    /// must keep the planned one's shape (live or deleted, and kind), so
    /// that a plan for a file never meets a directory, say; a record the
    /// plan has not seen (a conflict now) or one that already holds the
    /// version planned is left to [`Apply::refuse`].
    fn rebase(&self, t: &mut Take) {
        let Ok(Some(now)) = self.current(&t.logical) else { return };
        let shape = |r: &EntryRecord| (r.deleted, (!r.deleted).then(|| r.body.kind()));
        let same_shape = match &t.old {
            Some(old) => old.version != now.version && shape(old) == shape(&now),
            None => now.deleted || now.body.kind() == t.new.body.kind(),
        };
        if !same_shape || now.version == t.new.version || !t.new.version.dominates(&now.version) {
            return;
        }
        if t.action != ChangeAction::Merge {
            t.action = super::walk::action_for(Some(&now), &t.new);
        }
        t.old = Some(Box::new(now));
    }

    /// The record the store holds now for `logical`.
    fn current(&self, logical: &[u8]) -> Result<Option<EntryRecord>, String> {
        let (dir, name) = match logical.iter().rposition(|&b| b == b'/') {
            Some(i) => (&logical[..i], &logical[i + 1..]),
            None => (&[][..], logical),
        };
        let rec = self.dir_record(dir)?;
        Ok(rec.and_then(|r| r.get(name).cloned()))
    }

    /// The record of directory `dir`, read once until the cache is
    /// emptied (see [`Apply::records`]).
    fn dir_record(&self, dir: &[u8]) -> Result<Option<Arc<DirRecord>>, String> {
        if let Some(r) = self.records.lock().expect("records lock").get(dir) {
            return Ok(r.clone());
        }
        let rec = self.node.engine.store.dir_record(&self.g.name, dir).map_err(|e| e.to_string())?.map(Arc::new);
        self.records.lock().expect("records lock").insert(dir.to_vec(), rec.clone());
        Ok(rec)
    }

    /// Forgets the directory records read so far.
    fn forget_records(&self) {
        self.records.lock().expect("records lock").clear();
    }

    /// Checks that a store-only plan (a new version for the local state)
    /// still fits the record: the same state (or both deleted). When
    /// another reconcile of this node recorded that same state under a
    /// version the plan has not seen meanwhile (each of one run's sessions
    /// settling the same conflict with its own peer bumps the version, or
    /// merges another peer's), the state has seen both: the plan's version
    /// becomes the merge of the two. Refusing instead left the path to a
    /// new pass, whose plan the other sessions moved on again, until a run
    /// whose hosts all settle one path at once used up its passes and
    /// failed with "changed while syncing". A force that holds for both
    /// versions holds for the merge ([`Apply::force_follows`]).
    fn still_planned(&self, w: &Writer, logical: &[u8], record: &mut EntryRecord) -> Result<(), String> {
        let fits = match self.current(logical)? {
            None => record.deleted,
            Some(n) if n.deleted == record.deleted && (n.deleted || same_state(&n, record)) => {
                if !record.version.dominates(&n.version) {
                    let merged = super::decide::merged_version(&record.version, &n.version);
                    self.force_follows(w, logical, [&record.version, &n.version], &merged)?;
                    record.version = merged;
                }
                true
            }
            Some(_) => false,
        };
        if fits { Ok(()) } else { Err(CHANGED_WHILE_SYNCING.into()) }
    }

    /// A force on `logical` that holds for both versions `from` (each
    /// session that settled the path with its peer added its own) holds
    /// for their `merged` version too; otherwise the merge would void it
    /// and leave the forced path in conflict with the peers not reached
    /// yet.
    fn force_follows(&self, w: &Writer, logical: &[u8], from: [&Version; 2], merged: &Version) -> Result<(), String> {
        let store = &self.node.engine.store;
        let Some(mut f) = store.force(&self.g.name, logical).map_err(|e| e.to_string())? else { return Ok(()) };
        if !from.iter().all(|v| f.versions.contains(v)) {
            return Ok(());
        }
        f.also_under(merged.clone());
        let mut batch = store.batch(w);
        batch.put_force(&f);
        batch.commit().map_err(|e| e.to_string())
    }

    /// Checks that the record of `t.local` is still the one the decision
    /// was made on; returns it. Final even without the writer lock (a
    /// record only moves on), unlike a look at the disk, which another
    /// apply may be changing until it commits.
    fn record_unchanged(&self, t: &Take) -> Result<Option<EntryRecord>, String> {
        let now = self.current(&t.logical)?;
        let same_record = match (&now, t.old.as_deref()) {
            (None, None) => true,
            (Some(n), Some(o)) => n.version == o.version && n.deleted == o.deleted && (n.deleted || same_state(n, o)),
            _ => false,
        };
        if same_record { Ok(now) } else { Err(CHANGED_WHILE_SYNCING.into()) }
    }

    /// Checks that `t.local` is still what the decision was made on: its
    /// record unchanged since planned, its `lstat` what that record says
    /// (as the scanner compares it, ctime included), and no symlink on the
    /// way to it.
    fn unchanged(&self, t: &Take) -> Result<(), String> {
        let root = self.g.root_of_local(&t.local).ok_or("outside the include roots")?;
        crate::fs::no_links_between(&root.local, &t.local).map_err(|e| e.to_string())?;
        let md = match fs::symlink_metadata(&t.local) {
            Ok(md) => Some(md),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.to_string()),
        };
        self.as_recorded(t, md.map(|md| crate::scan::stat_of(&md)))
    }

    /// [`Apply::unchanged`] for a path in `dir`, a descriptor of its
    /// parent opened without following links (so no link between the
    /// root and the path can matter); returns what is there.
    fn unchanged_in(&self, dir: &Dir, t: &Take) -> Result<Option<crate::store::Stat>, String> {
        let name = t.local.file_name().ok_or("no file name")?;
        let st = match dir.lstat(name.as_bytes()) {
            Ok(st) => Some(crate::scan::stat_of_raw(&st)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.to_string()),
        };
        self.as_recorded(t, st.clone())?;
        Ok(st)
    }

    /// Whether `found`, what `t`'s path holds, is what the store records
    /// for it.
    fn as_recorded(&self, t: &Take, found: Option<crate::store::Stat>) -> Result<(), String> {
        let now = self.record_unchanged(t)?;
        let old = now.as_ref().filter(|o| !o.deleted);
        let is_dir = |st: &crate::store::Stat| st.mode & libc::S_IFMT == libc::S_IFDIR;
        match (old, found) {
            (None, None) => Ok(()),
            (None, Some(st)) if is_dir(&st) && t.new.body.kind() == Kind::Dir => Ok(()),
            (None, Some(_)) => Err("exists here but is not recorded yet: left for the next run".into()),
            (Some(_), None) if t.new.deleted => Ok(()),
            (Some(_), None) => Err("deleted here since the last check: left for the next run".into()),
            (Some(o), Some(st)) => {
                let same = match o.body.kind() {
                    Kind::Dir => is_dir(&st),
                    _ => st == o.stat,
                };
                if same { Ok(()) } else { Err("changed here since the last check: left for the next run".into()) }
            }
        }
    }

    /// Creates or updates a directory or symlink; a symlink that replaces
    /// a directory is made once the directory's contents are deleted.
    fn apply_other(&mut self, w: &Writer, t: Take) {
        if let Err(why) = self.unchanged(&t) {
            return self.refuse(&t.local, &t.logical, &t.new.version, why);
        }
        let result = (|| -> Result<bool, String> {
            let dir = open_parent(self.g, &t.local).map_err(|e| format!("opening its directory: {e}"))?;
            let name = t.local.file_name().ok_or("no file name")?;
            match &t.new.body {
                Body::Dir { .. } => make_dir(&dir, name, &t.new.meta).map_err(|e| e.to_string())?,
                Body::Symlink { target } => {
                    if replaces_dir(&t) && !self.clear_replaced_dir(w, &t, &dir)? {
                        return Ok(false);
                    }
                    make_symlink(&dir, name, &t.new.meta, target).map_err(|e| e.to_string())?
                }
                Body::File { .. } => unreachable!("files are assembled"),
            }
            Ok(true)
        })();
        match result {
            Ok(true) => {
                self.audit(t.action, &t.local);
                self.adopt(t.logical, t.local, t.new);
            }
            Ok(false) => {}
            Err(e) => self.problem(&t.local, e),
        }
    }

    fn delete(&mut self, w: &Writer, t: Take) {
        if let Err(why) = self.unchanged(&t) {
            return self.refuse(&t.local, &t.logical, &t.new.version, why);
        }
        let result = (|| -> io::Result<Result<bool, Held>> {
            let dir = open_parent(self.g, &t.local)?;
            let name = t.local.file_name().ok_or_else(|| io::Error::other("no file name"))?;
            match dir.remove(name) {
                Ok(removed) => Ok(Ok(removed)),
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                    Ok(Err(self.held_entries(&dir, name, &t.logical)))
                }
                Err(e) => Err(e),
            }
        })();
        match result {
            Ok(Ok(removed)) => {
                if removed {
                    self.audit(ChangeAction::Delete, &t.local);
                }
                self.adopt(t.logical, t.local, t.new);
            }
            Ok(Err(held)) if held.failed > 0 => {
                // Some of its entries were not removed (their own problem
                // is reported, or a later version superseded the plan):
                // the directory stays as it is, under the version it has,
                // and the next run decides it again. Any new version here
                // would either undo the deletion everywhere or make it a
                // conflict on a guess.
                tracing::info!(
                    "from {}: {}: kept for now, not all its entries could be removed",
                    self.peer.host,
                    t.local.display()
                );
                self.failed.insert(t.logical);
            }
            Ok(Err(held)) if held.untracked.is_empty() && held.conflicted == held.tracked.len() => {
                // Everything it holds is one side of a conflict with the
                // peer's deletion (edited here, deleted there). The
                // directory joins that conflict: it is recorded under its
                // version raised to the host counters of what it holds,
                // which the deletion has not seen, so the peer keeps its
                // deletion and both hosts list the directory until `force`
                // settles it. A version that dominated the deletion would
                // bring the directory back, empty, on the host that
                // deleted it; and a later deletion by a host that saw
                // these entries dominates this version, as it should.
                tracing::info!(
                    "from {}: {}: kept, in conflict with the deletion: it holds {} changed here",
                    self.peer.host,
                    t.local.display(),
                    held.describe()
                );
                self.kept_in_conflict.insert(t.logical.clone());
                if let Some(old) = t.old.filter(|o| !o.deleted) {
                    let mut version = old.version.with_counters_of(&held.conflicted_versions);
                    if t.new.version.dominates(&version) {
                        // What it holds carries no host counter the
                        // deletion lacks (entries first recorded here
                        // have only a creation component): a fresh local
                        // counter makes the two concurrent.
                        match self.node.engine.store.allocate_seq(w) {
                            Ok(seq) => version = version.bumped(&self.node.engine.host, seq),
                            Err(e) => return self.problem(&t.local, e),
                        }
                    }
                    self.adopt(t.logical, t.local, EntryRecord { version, ..*old });
                }
            }
            Ok(Err(held)) => {
                // The directory stays, recorded under a version that
                // dominates the deletion, so every host ends up with it
                // instead of asking for the deletion forever. Entries the
                // group keeps in it (newer than the deletion: a file added
                // here meanwhile) are the normal outcome; entries the group
                // never touches are a problem to report.
                if held.untracked.is_empty() {
                    tracing::info!(
                        "from {}: {}: kept, it holds {} newer than the deletion",
                        self.peer.host,
                        t.local.display(),
                        held.describe()
                    );
                } else {
                    self.problem(
                        &t.local,
                        format!(
                            "not removed: it holds {} this group does not track (excluded or new)",
                            held.describe_untracked()
                        ),
                    );
                }
                if let Some(old) = t.old.filter(|o| !o.deleted)
                    && let Ok(seq) = self.node.engine.store.allocate_seq(w)
                {
                    let version =
                        crate::sync::settled_version(&old.version, &t.new.version, &self.node.engine.host, seq);
                    self.adopt(t.logical, t.local, EntryRecord { version, ..*old });
                }
            }
            Err(e) => self.problem(&t.local, e),
        }
    }

    /// Which chunks of `jobs` are here (read and checked), and starts
    /// fetching the rest from the peer into the chunk store or, without
    /// one, a new pack of the staging area.
    fn start_fetch(
        &mut self,
        jobs: Vec<FileJob>,
        staging: &Arc<Staging>,
        receiving: &Arc<dyn ProgressTask>,
        report: &mut GroupReport,
    ) -> Result<Batch, SyncError> {
        let cs = self.node.engine.chunk_store(self.gi);
        let mut batch = Batch { jobs, held: HashMap::new(), pack: None, fetch: tokio::task::JoinSet::new() };
        // Each missing chunk, with the content of the first file that
        // needs it (the request names that file).
        let mut wanted: HashMap<Hash, Hash> = HashMap::new();
        let from = Origins { cs, staging, node: self.node, g: self.g, local: &self.local };
        tokio::task::block_in_place(|| {
            for job in &batch.jobs {
                let mut sources = Sources::new(job, from);
                for c in &job.chunks {
                    if sources.has(c, &mut batch.held) {
                        report.chunks_local += 1;
                        receiving.inc(u64::from(c.len));
                    } else {
                        wanted.entry(c.hash).or_insert(job.content);
                    }
                }
            }
        });
        if wanted.is_empty() {
            return Ok(batch);
        }
        if cs.is_none() {
            let dir = self.node.state_dir().join("incoming");
            let pack = staging.pack().map_err(|e| SyncError::Engine(EngineError::io(&dir, e)))?;
            batch.pack = Some(pack);
        }
        // Requests of at most MAX_CHUNKS_PER_REQUEST chunks, each named
        // with a file that holds it.
        let mut requests: Vec<Vec<FileChunks>> = Vec::new();
        let mut current: Vec<FileChunks> = Vec::new();
        let mut count = 0;
        let mut assigned: HashSet<Hash> = HashSet::new();
        for job in &batch.jobs {
            let mut hashes = Vec::new();
            for c in &job.chunks {
                if wanted.get(&c.hash) == Some(&job.content) && assigned.insert(c.hash) {
                    hashes.push(c.hash);
                }
            }
            for part in hashes.chunks(proto::limits::MAX_CHUNKS_PER_REQUEST) {
                if count + part.len() > proto::limits::MAX_CHUNKS_PER_REQUEST {
                    requests.push(std::mem::take(&mut current));
                    count = 0;
                }
                count += part.len();
                current.push(FileChunks {
                    path: job.take.logical.clone(),
                    content: job.content,
                    hashes: part.to_vec(),
                });
            }
        }
        if !current.is_empty() {
            requests.push(current);
        }
        let mut lanes: Vec<Vec<Vec<FileChunks>>> = (0..PARALLEL_REQUESTS).map(|_| Vec::new()).collect();
        for (i, r) in requests.into_iter().enumerate() {
            lanes[i % PARALLEL_REQUESTS].push(r);
        }
        for lane in lanes.into_iter().filter(|l| !l.is_empty()) {
            let (node, peer, staging, gi) =
                (Arc::clone(self.node), Arc::clone(self.peer), Arc::clone(staging), self.gi);
            let (pack, receiving) = (batch.pack.clone(), Arc::clone(receiving));
            let group = self.g.name.clone();
            batch.fetch.spawn(async move {
                let mut out = LaneResult::default();
                let into = Destination { node: &node, gi, staging: &staging, pack: pack.as_ref() };
                for files in lane {
                    fetch_one(&peer, &group, files, &into, &*receiving, &mut out).await?;
                }
                Ok::<LaneResult, SyncError>(out)
            });
        }
        Ok(batch)
    }

    /// Builds each file of `batch` from local chunks in a fresh temporary
    /// and puts it in place; under the writer lock, no network. `between`
    /// runs once the others are placed and before the files that replace
    /// a directory are (it deletes the directories' contents).
    fn place_files(
        &mut self,
        w: &Writer,
        batch: Batch,
        staging: &Staging,
        journal: &Journal,
        between: impl FnOnce(&mut Self),
    ) {
        let Batch { jobs, held, pack, .. } = batch;
        let cs = self.node.engine.chunk_store(self.gi);
        let umask = crate::fs::tree_umask();
        let mut unplaced: HashSet<Hash> = HashSet::new();
        // Every directory is opened first: the temporaries built before
        // `between` stay open in them until placed.
        let mut dirs: HashMap<PathBuf, Dir> = HashMap::new();
        let mut ready = Vec::new();
        for job in jobs {
            let t = &job.take;
            if let Err(why) = self.unchanged(t) {
                unplaced.insert(job.content);
                self.refuse(&t.local, &t.logical, &t.new.version, why);
                continue;
            }
            let Some(parent) = t.local.parent() else {
                self.problem(&t.local, "no parent directory");
                continue;
            };
            if !dirs.contains_key(parent) {
                match open_parent(self.g, &t.local) {
                    Ok(d) => {
                        dirs.insert(parent.to_path_buf(), d);
                    }
                    Err(e) => {
                        unplaced.insert(job.content);
                        self.problem(&t.local, format!("opening its directory: {e}"));
                        continue;
                    }
                }
            }
            ready.push(job);
        }
        let mut placed = Vec::new();
        let mut waiting = Vec::new();
        let mut ready = ready.into_iter().peekable();
        // Built a group at a time and synced together (see `sync_temps`),
        // a group bounding the temporaries held open. One group is synced
        // while the next is built: the syncs wait on the disk, the builds
        // mostly on the CPU.
        std::thread::scope(|scope| {
            let mut syncing: Option<std::thread::ScopedJoinHandle<'_, Synced<'_>>> = None;
            loop {
                let group: Vec<FileJob> = ready.by_ref().take(PLACE_GROUP).collect();
                let mut built = Vec::new();
                if !group.is_empty() {
                    let from = Origins { cs, staging, node: self.node, g: self.g, local: &self.local };
                    for (job, result) in build_temps(group, &dirs, journal, umask, from, &held) {
                        match result {
                            Ok(temp) => built.push((job, temp)),
                            Err(e) => {
                                unplaced.insert(job.content);
                                self.problem(&job.take.local, e);
                            }
                        }
                    }
                }
                if let Some(previous) = syncing.take() {
                    let (synced, results) = previous.join().expect("a sync thread panicked");
                    for ((job, temp), result) in synced.into_iter().zip(results) {
                        let t = &job.take;
                        if let Err(e) = result {
                            unplaced.insert(job.content);
                            self.problem(&t.local, format!("syncing the file: {e}"));
                            continue;
                        }
                        if replaces_dir(t) {
                            waiting.push((job, temp));
                            continue;
                        }
                        let name = t.local.file_name().expect("a path with a parent has a name");
                        let dir = &dirs[t.local.parent().expect("checked above")];
                        // Checked again right before the rename: the old
                        // version may have been changed while the new one
                        // was built.
                        match self.unchanged_in(dir, t).and_then(|_| temp.place(name).map_err(|e| e.to_string())) {
                            Ok(md) => placed.push((job, md)),
                            Err(e) => {
                                unplaced.insert(job.content);
                                self.problem(&job.take.local, e);
                            }
                        }
                    }
                }
                if built.is_empty() && ready.peek().is_none() {
                    break;
                }
                syncing = Some(scope.spawn(move || {
                    let results = sync_temps(&mut built);
                    (built, results)
                }));
            }
        });
        between(self);
        for (job, temp) in waiting {
            let t = &job.take;
            let dir = &dirs[t.local.parent().expect("checked above")];
            let name = t.local.file_name().expect("a path with a parent has a name");
            let result = match self.clear_replaced_dir(w, t, dir) {
                Ok(true) => temp.place(name).map(Some).map_err(|e| e.to_string()),
                Ok(false) => Ok(None),
                Err(e) => Err(e),
            };
            match result {
                Ok(Some(md)) => placed.push((job, md)),
                Ok(None) => {
                    unplaced.insert(job.content);
                }
                Err(e) => {
                    unplaced.insert(job.content);
                    self.problem(&job.take.local, e);
                }
            }
        }
        // Chunks kept for a content go once no file of it waits for them.
        for (job, _) in &placed {
            if !unplaced.contains(&job.content) {
                staging.remove(&job.content);
            }
        }
        if unplaced.is_empty() {
            if let Some(pack) = &pack {
                staging.retire(pack);
            }
        } else {
            self.all_placed = false;
        }
        // One directory sync per directory makes the renames durable
        // before the state records them; a batch spread over many
        // directories syncs them from several threads.
        let mut synced: Vec<(&PathBuf, &Dir)> = dirs.iter().collect();
        let results = synced_from_threads(&mut synced, |(_, dir)| dir.sync());
        if let Some(((path, _), Err(e))) = synced.iter().zip(results).find(|(_, r)| r.is_err()) {
            self.problem(path, format!("syncing the directory: {e}"));
            return;
        }
        if !placed.is_empty() {
            crate::killpoint::hit("apply.placed");
        }
        for (job, md) in placed {
            let t = job.take;
            let stat = crate::scan::stat_of(&md);
            let racy = t.new.meta.mtime.is_some_and(|m| (Timestamp::now().secs - m.secs).abs() <= 2);
            let record = EntryRecord { stat, racy, stored: cs.is_some(), chunks: job.chunks, ..t.new.clone() };
            self.audit(t.action, &t.local);
            self.adopt(t.logical, t.local, record);
        }
    }

    /// Removes the directory a file or symlink of the peer replaces, once
    /// the deletions have emptied it: true when its place is free. A
    /// directory that still holds entries stays (false): the entries the
    /// group keeps in it are newer than the peer's replacement, or
    /// untracked, and nothing is lost on a guess. It is recorded under a
    /// fresh local version, concurrent with the peer's, so both hosts see
    /// a type-change conflict that `force` settles.
    fn clear_replaced_dir(&mut self, w: &Writer, t: &Take, dir: &Dir) -> Result<bool, String> {
        self.record_unchanged(t)?;
        let name = t.local.file_name().ok_or("no file name")?;
        match dir.entry_type(name).map_err(|e| e.to_string())? {
            None => return Ok(true),
            Some(EntryType::Dir) => {}
            Some(_) => return Err("changed here since the last check: left for the next run".into()),
        }
        match dir.remove(name) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                let held = self.held_entries(dir, name, &t.logical);
                let what = if t.new.body.kind() == Kind::Symlink { "symlink" } else { "file" };
                let why = if held.untracked.is_empty() {
                    format!("{} the peer has not seen", held.describe())
                } else {
                    format!("{} this group does not track (excluded or new)", held.describe_untracked())
                };
                self.problem(
                    &t.local,
                    format!(
                        "not replaced by the peer's {what}: the directory holds {why}; it is kept as a type-change \
                         conflict (settle it with `snapsync force`)"
                    ),
                );
                if let Some(old) = t.old.as_ref().filter(|o| !o.deleted) {
                    match self.node.engine.store.allocate_seq(w) {
                        Ok(seq) => {
                            let version = old.version.bumped(&self.node.engine.host, seq);
                            self.adopt(t.logical.clone(), t.local.clone(), EntryRecord { version, ..(**old).clone() });
                        }
                        Err(e) => self.problem(&t.local, e),
                    }
                }
                Ok(false)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Whether `logical` stays here as one side of a conflict: recorded
    /// as one before this apply (with any peer), or a directory this apply
    /// kept for holding only such entries. A conflict with another peer
    /// counts too: the deletion being applied may descend from that peer's
    /// deletion of the entry (it reached this peer through a third host),
    /// so the entry is not surely newer than it.
    fn conflicted(&self, logical: &[u8]) -> bool {
        self.kept_in_conflict.contains(logical)
            || self.node.engine.store.conflicts_of(&self.g.name, logical).is_ok_and(|cs| !cs.is_empty())
    }

    /// What directory `name` in `dir` (logical path `logical`) still
    /// holds: entries the group tracks (a live record, or placed by this
    /// apply) and entries it does not.
    fn held_entries(&self, dir: &Dir, name: &OsStr, logical: &[u8]) -> Held {
        let mut held = Held::default();
        let names = match dir.open_dir(name).and_then(|d| d.names()) {
            Ok(n) => n,
            Err(_) => return held,
        };
        let record = self.node.engine.store.dir_record(&self.g.name, logical).ok().flatten().unwrap_or_default();
        for n in names {
            let child = join_logical(logical, n.as_bytes());
            let tracked = record.get(n.as_bytes()).is_some_and(|r| !r.deleted)
                || self.adopt.get(&child).is_some_and(|r| !r.deleted);
            let shown = PathBuf::from(OsStr::from_bytes(&child));
            if !tracked {
                held.untracked.push(shown);
                continue;
            }
            if self.failed.contains(&child) {
                held.failed += 1;
            } else if self.conflicted(&child) {
                held.conflicted += 1;
                let version = self.adopt.get(&child).or_else(|| record.get(n.as_bytes())).map(|r| &r.version);
                if let Some(v) = version {
                    held.conflicted_versions = held.conflicted_versions.with_counters_of(v);
                }
            }
            held.tracked.push(shown);
        }
        held
    }

    /// The peer's chunk list of a file, inline or fetched page by page.
    async fn chunk_list(&self, t: &Take) -> Result<Vec<ChunkRef>, String> {
        let (size, content) = match &t.new.body {
            Body::File { size, content } => (*size, *content),
            _ => unreachable!("only files here"),
        };
        if size == 0 || !t.new.chunks.is_empty() {
            let mut acc = ChunkListPages::new(size);
            acc.check_total(t.new.chunks.len() as u64).map_err(|e| format!("{}: {e}", self.peer.host))?;
            return Ok(t.new.chunks.clone());
        }
        let mut opener = self.peer.opener.clone();
        let mut acc = ChunkListPages::new(size);
        loop {
            let msg = Message::GetChunkList {
                group: self.g.name.clone(),
                path: t.logical.clone(),
                content,
                start: acc.list.len() as u64,
            };
            let (_, reply) = request(&self.peer.host, &mut opener, &msg).await.map_err(|e| e.to_string())?;
            let Message::ChunkList { total, chunks, .. } = reply else {
                unreachable!("check_reply allows only ChunkList")
            };
            if acc.add(total, chunks).map_err(|e| format!("{}: {e}", self.peer.host))? {
                break;
            }
        }
        let list = acc.list;
        proto::check_chunk_list(&t.logical, size, &content, &list).map_err(|e| e.to_string())?;
        Ok(list)
    }
}

/// A chunk list arriving in pages, held only as far as the file's declared
/// size allows.
struct ChunkListPages {
    size: u64,
    declared: Option<u64>,
    list: Vec<ChunkRef>,
}

impl ChunkListPages {
    fn new(size: u64) -> Self {
        ChunkListPages { size, declared: None, list: Vec::new() }
    }

    /// Refuses a chunk count a file of the declared size cannot have.
    fn check_total(&mut self, total: u64) -> Result<(), String> {
        let max = max_chunks(self.size);
        if total > max {
            return Err(format!(
                "declares {total} chunks for a file of {} bytes, which can have at most {max}: refused",
                self.size
            ));
        }
        if *self.declared.get_or_insert(total) != total {
            return Err("sent a chunk list whose total changed between pages".into());
        }
        Ok(())
    }

    /// Adds one page; true once the list is complete.
    fn add(&mut self, total: u64, chunks: Vec<ChunkRef>) -> Result<bool, String> {
        // Checked before anything of that count is held.
        self.check_total(total)?;
        if chunks.is_empty() || self.list.len() as u64 + chunks.len() as u64 > total {
            return Err("sent a chunk list that does not add up".into());
        }
        self.list.extend(chunks);
        Ok(self.list.len() as u64 == total)
    }
}

const CHANGED_WHILE_SYNCING: &str = "changed while syncing: retried next run";

/// Checks that nothing is at `local`, where a tombstone is recorded.
fn nothing_at(local: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(local) {
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => Ok(()),
        _ => Err("changed here since the last check: left for the next run".to_owned()),
    }
}

/// Whether two live records hold the same state: body (a directory's tree
/// left out: its children are checked on their own) and metadata.
fn same_state(a: &EntryRecord, b: &EntryRecord) -> bool {
    let body = match (&a.body, &b.body) {
        (Body::Dir { .. }, Body::Dir { .. }) => true,
        (x, y) => x == y,
    };
    body && a.meta == b.meta
}

/// Where chunks can be found on this node.
#[derive(Clone, Copy)]
struct Origins<'j> {
    cs: Option<&'j crate::store::ChunkStore>,
    staging: &'j Staging,
    node: &'j Node,
    g: &'j ResolvedGroup,
    local: &'j LocalChunks,
}

/// Where the chunks of one file can be found on this node, each copy
/// checked against its hash before it is used.
struct Sources<'j> {
    job: &'j FileJob,
    cs: Option<&'j crate::store::ChunkStore>,
    staging: &'j Staging,
    node: &'j Node,
    g: &'j ResolvedGroup,
    local: &'j LocalChunks,
    old: Option<Option<File>>,
}

impl<'j> Sources<'j> {
    fn new(job: &'j FileJob, from: Origins<'j>) -> Self {
        let Origins { cs, staging, node, g, local } = from;
        Sources { job, cs, staging, node, g, local, old: None }
    }

    /// Whether chunk `c` is here. A copy in the chunk store is trusted (it
    /// checks what it holds when read); a staged one is read and checked
    /// (a crash may have torn it), and kept readable in `held`; so is one
    /// in a tracked file, since anyone may have changed it.
    fn has(&mut self, c: &ChunkRef, held: &mut HashMap<Hash, Staged>) -> bool {
        if self.cs.is_some_and(|cs| cs.has(&c.hash).unwrap_or(false)) || held.contains_key(&c.hash) {
            return true;
        }
        if let Some((staged, _)) = self.staging.read(&c.hash) {
            held.insert(c.hash, staged);
            return true;
        }
        self.staging.legacy(&self.job.content, &c.hash).is_some() || self.in_tree(c).is_some()
    }

    /// The bytes of chunk `c`, checked; else why the file is left for the
    /// next run. `held`: the chunks found staged when the batch was
    /// planned.
    fn get(&mut self, c: &ChunkRef, held: &HashMap<Hash, Staged>) -> Result<Vec<u8>, String> {
        let mut damaged = None;
        if let Some(cs) = self.cs
            && cs.has(&c.hash).unwrap_or(false)
        {
            match cs.get(&c.hash) {
                Ok(d) => return Ok(d),
                // The store lists the chunk but cannot give it back (its
                // value is damaged). `has` trusts the store, so as long as
                // the chunk stays listed no pass would fetch it again and
                // the file would never be placed: drop it, and the next
                // pass (of this sync, or the next run) fetches it.
                Err(e @ crate::store::StoreError::Corrupt { .. }) => {
                    let dropped = match cs.remove(&[c.hash]) {
                        Ok(()) => "dropped from the chunk store, to be fetched again".to_owned(),
                        Err(r) => format!("dropping it failed: {r}"),
                    };
                    damaged = Some(format!("{e}; {dropped}"));
                }
                Err(_) => {}
            }
        }
        let staged = held
            .get(&c.hash)
            .and_then(|s| s.read(&c.hash))
            .or_else(|| self.staging.read(&c.hash).map(|(_, d)| d))
            .or_else(|| self.staging.legacy(&self.job.content, &c.hash));
        let found = match staged {
            Some(d) => Some((d, false)),
            None => self.in_tree(c).map(|d| (d, true)),
        };
        let Some((d, from_tree)) = found else {
            return Err(damaged.unwrap_or_else(|| {
                format!(
                    "chunk {} is no longer here (a local copy changed meanwhile): left for the next run",
                    c.hash.short()
                )
            }));
        };
        if let Some(damaged) = damaged {
            tracing::warn!("{}: {damaged}; read from a local copy instead", self.job.take.local.display());
        }
        if from_tree && let Some(cs) = self.cs {
            let _ = cs.put(&c.hash, &d);
        }
        Ok(d)
    }

    /// Chunk `c` from the file's old version or another local file.
    fn in_tree(&mut self, c: &ChunkRef) -> Option<Vec<u8>> {
        let take = &self.job.take;
        if let Some(o) = take.old.as_ref().filter(|o| !o.deleted && o.body.kind() == Kind::File)
            && let Some((off, _)) = offset_of(&o.chunks, &c.hash)
        {
            let f = self.old.get_or_insert_with(|| open_nofollow(&take.local).ok());
            if let Some(d) = f.as_ref().and_then(|f| read_checked(f, off, c)) {
                return Some(d);
            }
        }
        let (path, off, _) = self.local.find(&c.hash, || chunk_index(self.node, self.g))?;
        open_nofollow(path).ok().and_then(|f| read_checked(&f, *off, c))
    }
}

#[derive(Default)]
struct LaneResult {
    chunks: u64,
    bytes: u64,
}

/// Where fetched chunks go: the group's chunk store, or else `pack`.
struct Destination<'a> {
    node: &'a Arc<Node>,
    gi: usize,
    staging: &'a Staging,
    pack: Option<&'a Arc<Pack>>,
}

/// One `GetChunks` exchange: every chunk received is verified and kept in
/// the chunk store, or else in the batch's pack. A chunk the peer no
/// longer has is simply not kept: its file is left for the next run.
async fn fetch_one(
    peer: &Arc<Peer>,
    group: &str,
    files: Vec<FileChunks>,
    into: &Destination<'_>,
    receiving: &dyn ProgressTask,
    out: &mut LaneResult,
) -> Result<(), SyncError> {
    let msg = Message::GetChunks { group: group.to_owned(), files };
    let Message::GetChunks { files, .. } = &msg else { unreachable!() };
    let mut pending = PendingChunks::new(files);
    let mut opener = peer.opener.clone();
    let proto_err = |source| SyncError::Proto { peer: peer.host.clone(), source };
    let (mut stream, mut reply) = request(&peer.host, &mut opener, &msg).await?;
    loop {
        if pending.accept(&reply).map_err(proto_err)? {
            return Ok(());
        }
        if let Message::Chunk { hash, stored } = &reply {
            let data = crate::chunk::decode_borrowed(hash, stored).map_err(|e| SyncError::Proto {
                peer: peer.host.clone(),
                source: proto::ProtoError::Mismatch { why: format!("chunk {}: {e}", hash.short()) },
            })?;
            out.chunks += 1;
            out.bytes += stored.len() as u64;
            let stats = &into.node.stats;
            Stats::add(&stats.chunks_received, 1);
            Stats::add(&stats.bytes_received, stored.len() as u64);
            receiving.inc(data.len() as u64);
            if let Some(cs) = into.node.engine.chunk_store(into.gi) {
                // Written, and compressed if it came raw: worth handing
                // the worker off.
                tokio::task::block_in_place(|| cs.put_received(hash, stored, &data))?;
            } else if let Some(pack) = into.pack
                && let Err(e) = into.staging.put(pack, hash, &data)
            {
                // Two writes into the page cache: done here, as a thread
                // switch per chunk would cost more. Disk full, say: the
                // file is not complete, so it is left for the next run
                // like a chunk never sent.
                tracing::warn!("keeping chunk {} received from {}: {e}", hash.short(), peer.host);
            }
            crate::killpoint::hit("receive.chunk");
        }
        reply = proto::read_frame(&mut stream).await.map_err(proto_err)?;
        reply.validate().map_err(proto_err)?;
    }
}

/// Builds each file of `jobs` in a fresh temporary in its directory (in
/// `dirs`) from local chunks, on up to [`BUILD_THREADS`] threads; the
/// temporaries have their data written out and their metadata set, and
/// their writeback started.
fn build_temps<'d>(
    jobs: Vec<FileJob>,
    dirs: &'d HashMap<PathBuf, Dir>,
    journal: &'d Journal,
    umask: u32,
    from: Origins<'_>,
    held: &HashMap<Hash, Staged>,
) -> Vec<(FileJob, Result<crate::fs::TempFile<'d>, String>)> {
    let build = |job: &FileJob| -> Result<crate::fs::TempFile<'d>, String> {
        let t = &job.take;
        let dir = &dirs[t.local.parent().expect("checked by the caller")];
        let name = t.local.file_name().expect("a path with a parent has a name");
        // `ignore mod`: keep the replaced file's mode, or the mode a new
        // file would get (a directory replaced gives none).
        let mode = dir
            .lstat(name.as_bytes())
            .ok()
            .filter(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
            .map(|st| st.st_mode & 0o7777)
            .unwrap_or(0o666 & !umask);
        let temp = dir.create_temp(Some(journal)).map_err(|e| format!("creating a temporary file: {e}"))?;
        let mut sources = Sources::new(job, from);
        let mut w = io::BufWriter::with_capacity(1 << 20, temp.file());
        for c in &job.chunks {
            let data = sources.get(c, held)?;
            w.write_all(&data).map_err(|e| e.to_string())?;
        }
        w.flush().map_err(|e| e.to_string())?;
        drop(w);
        temp.set_meta(&t.new.meta, mode).map_err(|e| e.to_string())?;
        temp.start_writeback();
        Ok(temp)
    };
    if jobs.len() <= 1 {
        return jobs
            .into_iter()
            .map(|j| {
                let built = build(&j);
                (j, built)
            })
            .collect();
    }
    let per = jobs.len().div_ceil(BUILD_THREADS);
    let results: Vec<Result<crate::fs::TempFile<'d>, String>> = std::thread::scope(|s| {
        let parts: Vec<_> =
            jobs.chunks(per).map(|part| s.spawn(|| part.iter().map(build).collect::<Vec<_>>())).collect();
        parts.into_iter().flat_map(|p| p.join().expect("a build thread panicked")).collect()
    });
    jobs.into_iter().zip(results).collect()
}

/// Temporaries built, and the result of syncing each.
type Synced<'d> = (Vec<(FileJob, crate::fs::TempFile<'d>)>, Vec<io::Result<()>>);

/// Syncs the temporaries of `built` from up to [`SYNC_THREADS`] threads
/// at once; the result of each, in order.
fn sync_temps(built: &mut [(FileJob, crate::fs::TempFile<'_>)]) -> Vec<io::Result<()>> {
    synced_from_threads(built, |(_, t)| t.sync())
}

/// `sync` applied to every item, from up to [`SYNC_THREADS`] threads: the
/// waits for the disk overlap and share its journal commits.
fn synced_from_threads<T: Send>(
    items: &mut [T],
    sync: impl Fn(&mut T) -> io::Result<()> + Sync,
) -> Vec<io::Result<()>> {
    if items.len() <= 1 {
        return items.iter_mut().map(&sync).collect();
    }
    let per = items.len().div_ceil(SYNC_THREADS);
    let sync = &sync;
    std::thread::scope(|s| {
        let parts: Vec<_> =
            items.chunks_mut(per).map(|part| s.spawn(move || part.iter_mut().map(sync).collect::<Vec<_>>())).collect();
        parts.into_iter().flat_map(|p| p.join().expect("a sync thread panicked")).collect()
    })
}

/// Where chunks of tracked files are: a file, an offset and a length.
type ChunkIndex = HashMap<Hash, (PathBuf, u64, u32)>;

/// Adds where each of `chunks`, the chunk list of the file at `local`, is
/// in that file (a chunk already indexed keeps its first place).
fn index_file(index: &mut ChunkIndex, local: &Path, chunks: &[ChunkRef]) {
    let mut off = 0u64;
    for c in chunks {
        index.entry(c.hash).or_insert_with(|| (local.to_path_buf(), off, c.len));
        off += u64::from(c.len);
    }
}

/// Where an apply looks for chunks in files already here. Every entry may
/// be outdated (a local change since): it is only a miss, since every copy
/// read is checked against its hash.
#[derive(Default)]
struct LocalChunks {
    /// The chunks of the files the apply replaces or deletes: a file the
    /// peer renamed or moved is a deletion and a new file here.
    replaced: ChunkIndex,
    /// Whether to look in every tracked file too: only for an apply that
    /// takes enough bytes to pay for the index ([`TREE_INDEX_MIN_BYTES`]).
    whole_tree: bool,
    /// Every tracked file's chunks, built when first needed.
    tree: std::sync::OnceLock<ChunkIndex>,
}

impl LocalChunks {
    /// The chunks of the local files that `takes` replace or delete;
    /// `whole_tree` as the field says.
    fn of<'t>(takes: impl Iterator<Item = &'t Take>, whole_tree: bool) -> Self {
        let mut replaced = HashMap::new();
        for t in takes {
            if let Some(old) = t.old.as_ref().filter(|o| !o.deleted && o.body.kind() == Kind::File) {
                index_file(&mut replaced, &t.local, &old.chunks);
            }
        }
        LocalChunks { replaced, whole_tree, tree: std::sync::OnceLock::new() }
    }

    /// Where chunk `hash` is, if known; `index` builds the index of the
    /// whole tree.
    fn find(&self, hash: &Hash, index: impl FnOnce() -> ChunkIndex) -> Option<&(PathBuf, u64, u32)> {
        self.replaced.get(hash).or_else(|| if self.whole_tree { self.tree.get_or_init(index).get(hash) } else { None })
    }
}

/// Where each chunk of the group's tracked files is: a file and offset.
fn chunk_index(node: &Node, g: &ResolvedGroup) -> ChunkIndex {
    let mut index = HashMap::new();
    for item in node.engine.store.all_dir_records(&g.name) {
        let Ok((dir, rec)) = item else { continue };
        for (name, r) in rec.children.iter().filter(|(_, r)| !r.deleted && r.body.kind() == Kind::File) {
            let logical = join_logical(&dir, name);
            let Some(local) = g.to_local(Path::new(std::ffi::OsStr::from_bytes(&logical))) else { continue };
            index_file(&mut index, &local, &r.chunks);
        }
    }
    index
}

/// Makes `name` in `dir` a directory with `meta` (mode and owner;
/// directories keep no mtime in the tree), replacing a file or symlink
/// there. The metadata is set through a descriptor opened without
/// following a symlink put in its place.
fn make_dir(dir: &Dir, name: &OsStr, meta: &Meta) -> io::Result<()> {
    let created = match dir.entry_type(name)? {
        Some(EntryType::Dir) => false,
        Some(_) => {
            dir.remove(name)?;
            dir.make_dir(name)?;
            true
        }
        None => {
            dir.make_dir(name)?;
            true
        }
    };
    let f = dir.open_dir(name)?.as_file()?;
    // A new directory without a synced mode (`ignore mod`) gets the mode the
    // started-with umask gives, not the private umask the process runs under.
    let mode = meta.mode.or_else(|| created.then(|| 0o777 & !crate::fs::tree_umask()));
    apply_meta(&f, &Meta { mtime: None, mode, ..meta.clone() })
}

/// Makes `name` in `dir` a symlink to `target`, atomically replacing what
/// is there (an empty directory is removed first).
fn make_symlink(dir: &Dir, name: &OsStr, meta: &Meta, target: &[u8]) -> io::Result<()> {
    if dir.entry_type(name)? == Some(EntryType::Dir) {
        dir.remove(name)?;
    }
    dir.place_symlink(name, target, meta).map_err(io::Error::other)?;
    dir.sync()
}

/// Whether `t` puts a file or symlink where this node has a directory.
pub(super) fn replaces_dir(t: &Take) -> bool {
    !t.new.deleted
        && t.new.body.kind() != Kind::Dir
        && t.old.as_ref().is_some_and(|o| !o.deleted && o.body.kind() == Kind::Dir)
}

/// What a directory that could not be removed still holds.
#[derive(Default)]
struct Held {
    /// Entries the group tracks.
    tracked: Vec<PathBuf>,
    /// How many of the tracked entries stay because they are in conflict
    /// with the peer (its deletion against a change here), not because
    /// the peer will take them.
    conflicted: usize,
    /// How many of the tracked entries this apply failed to remove (they
    /// changed while syncing, or could not be removed).
    failed: usize,
    /// The host counters of the entries in conflict.
    conflicted_versions: crate::store::Version,
    /// Entries it does not (excluded, or not recorded yet).
    untracked: Vec<PathBuf>,
}

impl Held {
    fn list(paths: &[PathBuf]) -> String {
        const SHOWN: usize = 3;
        let mut s: Vec<String> = paths.iter().take(SHOWN).map(|p| p.display().to_string()).collect();
        if paths.len() > SHOWN {
            s.push(format!("{} more", paths.len() - SHOWN));
        }
        s.join(", ")
    }

    /// All of it, for a message.
    fn describe(&self) -> String {
        let all: Vec<PathBuf> = self.tracked.iter().chain(&self.untracked).cloned().collect();
        if all.is_empty() { "entries".into() } else { format!("entries ({})", Held::list(&all)) }
    }

    /// The untracked part, for a message.
    fn describe_untracked(&self) -> String {
        format!("entries ({})", Held::list(&self.untracked))
    }
}

/// The directory holding `path`, opened from its include root without
/// following a symlink on the way.
fn open_parent(g: &ResolvedGroup, path: &Path) -> io::Result<Dir> {
    let parent = path.parent().ok_or_else(|| io::Error::other("no parent directory"))?;
    let root = g.root_of_local(path).ok_or_else(|| io::Error::other("outside the include roots"))?;
    match parent.strip_prefix(&root.local) {
        Ok(rel) => Dir::open_beneath(&root.local, rel),
        // The include root itself: its directory is the configuration's.
        Err(_) => Dir::open_trusted(parent),
    }
}

/// The paths of `paths` not below another one of them.
pub(crate) fn minimal(mut paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths.sort();
    paths.dedup();
    let mut out: Vec<PathBuf> = Vec::new();
    for p in paths {
        if !out.last().is_some_and(|last| p.starts_with(last)) {
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(n: usize, len: u32) -> Vec<ChunkRef> {
        (0..n).map(|i| ChunkRef { hash: Hash::of(&i.to_le_bytes()), len }).collect()
    }

    #[test]
    fn max_chunks_follows_the_minimum_chunk_size() {
        let min = u64::from(crate::chunk::MIN_SIZE);
        assert_eq!(max_chunks(0), 0);
        assert_eq!(max_chunks(1), 1);
        assert_eq!(max_chunks(min), 1);
        assert_eq!(max_chunks(min + 1), 2);
        assert_eq!(max_chunks(10 * min), 10);
        // Every list the chunker makes fits.
        let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let list = crate::chunk::chunk_bytes(&data);
        assert!(list.len() as u64 <= max_chunks(data.len() as u64));
    }

    /// A peer declaring 2^26 chunks for a 1 MiB file is refused on the
    /// first page, before anything of that count is held.
    #[test]
    fn absurd_chunk_count_is_refused_without_allocating_it() {
        let mut pages = ChunkListPages::new(1 << 20);
        let e = pages.add(proto::limits::MAX_CHUNKS_PER_ENTRY, refs(16, 65536)).unwrap_err();
        assert!(e.contains("at most 64"), "{e}");
        assert_eq!(pages.list.capacity(), 0);
        // The same count inline.
        let mut inline = ChunkListPages::new(1 << 20);
        assert!(inline.check_total(65).is_err());
        assert!(inline.check_total(64).is_ok());
    }

    #[test]
    fn chunk_list_pages_must_add_up() {
        let mut pages = ChunkListPages::new(4 << 20);
        assert!(!pages.add(64, refs(32, 65536)).unwrap());
        assert!(pages.add(63, refs(32, 65536)).is_err(), "the total may not change");
        let mut pages = ChunkListPages::new(4 << 20);
        assert!(!pages.add(64, refs(32, 65536)).unwrap());
        assert!(pages.add(64, refs(33, 65536)).is_err(), "more than declared");
        assert!(pages.add(64, Vec::new()).is_err(), "an empty page");
        assert!(pages.add(64, refs(32, 65536)).unwrap());
    }
}
