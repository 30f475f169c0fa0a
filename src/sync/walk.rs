//! Reconciling one group with one peer, from this node's side: compare
//! roots, descend where the trees differ, decide each differing path, and
//! take what the peer has newer (docs/protocol.md, "Reconcile").
//!
//! Terms:
//! - The *walk* visits the differing paths breadth first. It reads the
//!   node's state as it is and holds no lock, so a peer that answers slowly
//!   never keeps the node's writers out; what changes under it is caught
//!   before anything is applied (the pulled side's check, and the apply's
//!   own check of every path).
//! - A *listing* is the peer's `Dir` pages of one directory. The walk merges
//!   it page by page with the local record and keeps one page at a time; a
//!   listing over [`MAX_DIR_ENTRIES`] ends the reconcile.
//! - A *plan* is what the walk decided for one path (take the peer's
//!   state, re-version the local one, store a tombstone). Plans, the
//!   conflicts to record and the directories still to list are what the
//!   reconcile keeps until it applies; their estimated size is bounded by
//!   [`MAX_PLAN_BYTES`].
//! - A *flush* applies the plans kept so far, once they reach
//!   [`PLAN_FLUSH_BYTES`] and when the walk ends, and the walk goes on:
//!   what a reconcile holds stays bounded however many paths it changes.
//!   Deletions, and files or links that replace a directory, wait for the
//!   last flush (they remove what is below them, all of which must be
//!   decided first).
//! - *Edits* are the walk's own writes to the state (conflicts found or
//!   gone, versions for settled conflicts, `force` marks used up). They are
//!   made at each flush, under the writer lock, with no wait on the
//!   network while it is held.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::mem::size_of;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::apply::{Apply, Take};
use super::{
    ConflictKind, Decision, Resolution, Side, decide, decide_receive_only, merged_version, resolve, settled_version,
};
use super::{Peer, SyncError, request, roots_summary};
use crate::chunk::ChunkRef;
use crate::config::{Class, ResolvedGroup};
use crate::engine::Engine;
use crate::net::StreamOpener;
use crate::node::Node;
use crate::proto::{Change, ChangeAction, MAX_DIR_ENTRIES, MAX_PLAN_BYTES, MAX_REPORTED_CHANGES, Message, WireEntry};
use crate::store::{Conflict, EntryRecord, Version, Writer, join_logical};
use crate::tree::{Body, Kind, Timestamp};

/// One change a reconcile made (or would make, dry run) on this node.
#[derive(Clone, Debug, Serialize)]
pub struct ChangeReport {
    /// What happened: `create`, `update`, `delete`, `conflict` or `merge`.
    #[serde(serialize_with = "action_name")]
    pub action: ChangeAction,
    /// The logical path.
    pub path: String,
}

impl ChangeReport {
    fn new(action: ChangeAction, path: &[u8]) -> Self {
        ChangeReport { action, path: String::from_utf8_lossy(path).into_owned() }
    }

    /// A change a peer reported.
    pub fn from_wire(c: &Change) -> Self {
        ChangeReport::new(c.action, &c.path)
    }
}

fn action_name<S: serde::Serializer>(a: &ChangeAction, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(a.as_str())
}

/// What reconciling one group with one peer did on this node.
#[derive(Debug, Default, Serialize)]
pub struct GroupReport {
    /// Nothing is left to do with the peer: the root hashes and version
    /// digests were equal (nothing was compared further), or the trees
    /// were equal and the walk found nothing to change, no conflict and
    /// no problem, only versions to merge (which a sync records, and a
    /// dry run or `status` leaves for the next sync).
    pub in_sync: bool,
    /// Changes applied (or, dry run, that would be): every conflict, and
    /// the first [`MAX_REPORTED_CHANGES`] other changes.
    pub changes: Vec<ChangeReport>,
    /// Changes applied (or, dry run, that would be) past those listed in
    /// `changes`: counted, not listed (the audit log has every one).
    pub more_changes: u64,
    /// Paths in conflict with the peer.
    pub conflicts: Vec<String>,
    /// Paths that could not be applied, with the reason; retried next run.
    pub problems: Vec<String>,
    /// Directories listed from the peer.
    pub dirs_listed: u64,
    /// Chunks fetched from the peer.
    pub chunks_fetched: u64,
    /// Stored bytes of those chunks.
    pub bytes_fetched: u64,
    /// Chunks found locally instead (store, old versions, other files).
    pub chunks_local: u64,
    /// Conflicts this node won (by `force` or the `auto` policy) and now
    /// holds under a version the peer will take.
    pub settled: u64,
    /// The generation recorded for the applied changes, if any.
    pub generation: Option<u64>,
    /// The changes as the wire carries them.
    #[serde(skip)]
    wire: Vec<Change>,
}

impl GroupReport {
    /// The `Pulled` message reporting these changes.
    pub fn pulled(&self) -> Message {
        Message::pulled(self.wire.iter().cloned(), self.more_changes, &self.problems)
    }

    /// Whether any change other than a conflict was made (or, dry run,
    /// would be).
    pub fn took_any(&self) -> bool {
        self.more_changes > 0 || self.changes.iter().any(|c| c.action != ChangeAction::Conflict)
    }

    /// All changes made (or, dry run, that would be), listed or not.
    pub fn changes_total(&self) -> u64 {
        self.changes.len() as u64 + self.more_changes
    }

    /// Adds what a later part of the same walk did (its paths are not in
    /// this report): lists its changes while fewer than
    /// [`MAX_REPORTED_CHANGES`] other than conflicts are listed, and counts
    /// the rest.
    fn append(&mut self, later: GroupReport) {
        self.add_counts(&later);
        let real = |a: ChangeAction| a != ChangeAction::Conflict;
        let mut listed = self.changes.iter().filter(|c| real(c.action)).count();
        for c in later.changes {
            if !real(c.action) || listed < MAX_REPORTED_CHANGES {
                listed += usize::from(real(c.action));
                self.changes.push(c);
            } else {
                self.more_changes += 1;
            }
        }
        // The wire list is the same changes, with conflicts the apply
        // could not settle left out: it is cut by the same rule.
        let mut listed = self.wire.iter().filter(|c| real(c.action)).count();
        for c in later.wire {
            if !real(c.action) || listed < MAX_REPORTED_CHANGES {
                listed += usize::from(real(c.action));
                self.wire.push(c);
            }
        }
        self.conflicts.extend(later.conflicts);
        self.problems.extend(later.problems);
    }

    /// Adds what `later` counted, and takes its generation if it recorded
    /// one.
    fn add_counts(&mut self, later: &GroupReport) {
        self.more_changes += later.more_changes;
        self.dirs_listed += later.dirs_listed;
        self.chunks_fetched += later.chunks_fetched;
        self.bytes_fetched += later.bytes_fetched;
        self.chunks_local += later.chunks_local;
        self.settled += later.settled;
        self.generation = later.generation.or(self.generation);
    }

    /// Adds what a later reconcile with the same peer did.
    pub fn absorb(&mut self, later: GroupReport) {
        self.add_counts(&later);
        for c in later.changes {
            self.changes.retain(|x| x.path != c.path);
            self.changes.push(c);
        }
        self.conflicts = later.conflicts;
        self.problems.extend(later.problems);
        self.in_sync = later.in_sync;
        self.wire.extend(later.wire);
    }

    /// Whether this pass leaves nothing to do between two equal trees:
    /// no change (here or, by a settlement, for the peer), no conflict and
    /// no problem. Versions merged (or to merge) do not count: they change
    /// no file, and the next sync records them.
    fn nothing_to_do(&self) -> bool {
        self.changes.is_empty()
            && self.more_changes == 0
            && self.conflicts.is_empty()
            && self.problems.is_empty()
            && self.settled == 0
    }

    /// Drops the changes reported for `failed` paths: they were not made.
    pub(super) fn forget_changes(&mut self, failed: &std::collections::HashSet<Vec<u8>>) {
        if failed.is_empty() {
            return;
        }
        self.wire.retain(|c| !failed.contains(&c.path));
        let shown: std::collections::HashSet<String> =
            failed.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
        self.changes.retain(|c| !shown.contains(&c.path) || c.action == ChangeAction::Conflict);
    }

    fn change(&mut self, action: ChangeAction, path: &[u8]) {
        self.changes.push(ChangeReport::new(action, path));
        self.wire.push(Change { action, path: path.to_vec() });
    }
}

/// What the walk decided for one path.
// Plans are kept in one list, most of them takes: boxing would cost an
// allocation per change for nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Plan {
    /// Take the peer's state under `version`.
    Take(Take),
    /// Keep the local state; record it under `version` (merged or settled).
    Reversion { logical: Vec<u8>, local: PathBuf, record: EntryRecord },
    /// Store this tombstone as child `name` of directory `dir` (local path
    /// `local`, where nothing may be on disk): a deletion both sides agree
    /// on, under the merged version.
    Patch { dir: Vec<u8>, name: Vec<u8>, local: PathBuf, record: EntryRecord },
}

impl Plan {
    /// Whether the plan waits for the last flush of the walk (see
    /// [`Walk::flush`]): a deletion, or a file or symlink that replaces a
    /// directory, removes what is below it, which must all be decided (and
    /// what is taken below it applied) first.
    fn waits_for_last(&self) -> bool {
        matches!(self, Plan::Take(t) if t.new.deleted || super::apply::replaces_dir(t))
    }

    /// The local path a plan changes on disk, if it changes one.
    fn local_path(&self) -> Option<&PathBuf> {
        match self {
            Plan::Take(t) => Some(&t.local),
            // Nothing is recorded there; something unrecorded on disk must
            // be checked first, or the tombstone would make it look newer
            // than the deletion.
            Plan::Patch { local, .. } => Some(local),
            Plan::Reversion { .. } => None,
        }
    }

    /// Gives the state the plan stores the version `v`.
    fn set_version(&mut self, v: Version) {
        match self {
            Plan::Take(t) => t.new.version = v,
            Plan::Reversion { record, .. } | Plan::Patch { record, .. } => record.version = v,
        }
    }

    /// About how many bytes of memory the plan holds: the plan itself (its
    /// records are inline) and what its paths and records hold on the heap.
    fn footprint(&self) -> usize {
        let heap = match self {
            Plan::Take(t) => {
                t.logical.len()
                    + t.local.as_os_str().len()
                    + t.old.as_deref().map_or(0, |r| size_of::<EntryRecord>() + record_heap(r))
                    + record_heap(&t.new)
            }
            Plan::Reversion { logical, local, record } => logical.len() + local.as_os_str().len() + record_heap(record),
            Plan::Patch { dir, name, local, record } => {
                dir.len() + name.len() + local.as_os_str().len() + record_heap(record)
            }
        };
        size_of::<Plan>() + heap
    }
}

/// About how many bytes a version vector holds on the heap.
fn version_heap(v: &Version) -> usize {
    v.0.iter().map(|(host, _)| size_of::<(String, u64)>() + host.len()).sum()
}

/// About how many bytes a record holds on the heap: its chunk list,
/// version vector and link target.
fn record_heap(r: &EntryRecord) -> usize {
    let version = version_heap(&r.version);
    let target = match &r.body {
        Body::Symlink { target } => target.len(),
        _ => 0,
    };
    r.chunks.len() * size_of::<ChunkRef>() + version + target
}

/// What a reported change of a path holds (a `ChangeReport` and a `Change`).
fn change_footprint(path: &[u8]) -> usize {
    size_of::<ChangeReport>() + size_of::<Change>() + 2 * path.len()
}

/// The walk's writes to the state, made after it under the writer lock.
#[derive(Default)]
struct Edits {
    /// Conflicts to record.
    conflicts: Vec<Conflict>,
    /// Paths whose conflict with the peer is gone.
    cleared: Vec<Vec<u8>>,
    /// Plans that settle a conflict: the plan's index and the two sides'
    /// versions, to store it under a version that dominates both with a
    /// fresh local counter.
    settle: Vec<(usize, Version, Version)>,
    /// What the walk learnt about forced paths (see [`ForceSeen`]).
    forces: Vec<(Vec<u8>, ForceSeen)>,
}

/// What a reconcile learnt about one forced path with its peer.
enum ForceSeen {
    /// The local entry changed since force was run: the force is void.
    Void,
    /// The force won: plan `at` stores the forced state under a settled
    /// version, which the force then holds for too.
    Won { at: usize },
    /// The peer holds the forced state (under `merged`, when the versions
    /// differed and both sides now adopt the merge).
    Reached { merged: Option<Version> },
}

/// Updates the force on `path` of group `g` with what a reconcile with
/// `peer` learnt; drops it once void or used up. Under the writer lock.
fn note_force(
    engine: &Engine,
    batch: &mut crate::store::Batch<'_>,
    g: &ResolvedGroup,
    path: &[u8],
    peer: &str,
    seen: &ForceSeen,
    plans: &[Plan],
) -> Result<(), SyncError> {
    let Some(mut f) = engine.store.force(&g.name, path)? else { return Ok(()) };
    let local = engine.local_record(g, path)?;
    match seen {
        ForceSeen::Void => {}
        ForceSeen::Won { at } => {
            if let Some(Plan::Reversion { record, .. } | Plan::Patch { record, .. }) = plans.get(*at) {
                f.also_under(record.version.clone());
            }
        }
        ForceSeen::Reached { merged } => {
            f.reach(peer);
            if let Some(v) = merged {
                f.also_under(v.clone());
            }
        }
    }
    // Only hosts that send can conflict with this one: a receive-only peer
    // takes this host's state whatever it is.
    let used_up = f.used_up(g.peers().filter(|h| !h.receive_only).map(|h| h.name.as_str()));
    if matches!(seen, ForceSeen::Void) || !f.current(local.as_ref()) || used_up {
        batch.remove_force(&g.name, path);
    } else {
        batch.put_force(&f);
    }
    Ok(())
}

impl Edits {
    /// Makes the edits (under the writer lock); gives the settling plans
    /// their versions. A dry run makes none.
    fn commit(self, engine: &Engine, w: &Writer, group: &str, peer: &str, plans: &mut [Plan]) -> Result<(), SyncError> {
        let mut batch = engine.store.batch(w);
        if !self.settle.is_empty() {
            // Counters handed out here, under the lock, are never handed
            // out again (a check takes the next ones).
            let base = engine.store.seq()?;
            for (i, (at, lv, rv)) in self.settle.iter().enumerate() {
                plans[*at].set_version(settled_version(lv, rv, &engine.host, base + 1 + i as u64));
            }
            batch.put_seq(base + self.settle.len() as u64);
        }
        for c in &self.conflicts {
            batch.put_conflict(c);
        }
        for path in &self.cleared {
            batch.remove_conflict(group, path, peer);
        }
        if let Some(g) = engine.group_index(group).map(|i| &engine.groups[i]) {
            for (path, seen) in &self.forces {
                note_force(engine, &mut batch, g, path, peer, seen, plans)?;
            }
        }
        batch.commit()?;
        Ok(())
    }
}

/// The trees of group `gi` are equal with `peer`: drops every conflict
/// recorded with it, and counts every force of the group as having reached
/// it (the peer holds this node's states, versions included), under the
/// writer lock; takes no lock when there is nothing to do.
pub async fn clear_conflicts(node: &Arc<Node>, gi: usize, peer: &str) -> Result<(), SyncError> {
    let group = node.engine.groups[gi].name.clone();
    let conflicts = node.engine.store.conflicts()?.iter().any(|c| c.group == group && c.peer == peer);
    let forces: Vec<Vec<u8>> = node
        .engine
        .store
        .forces()?
        .into_iter()
        .filter(|f| f.group == group && !f.has_reached(peer))
        .map(|f| f.path)
        .collect();
    if !conflicts && forces.is_empty() {
        return Ok(());
    }
    let peer = peer.to_owned();
    node.write_locked(move |n, w| {
        let g = &n.engine.groups[gi];
        let mut batch = n.engine.store.batch(w);
        batch.clear_conflicts(&group, &peer)?;
        for path in &forces {
            note_force(&n.engine, &mut batch, g, path, &peer, &ForceSeen::Reached { merged: None }, &[])?;
        }
        batch.commit()?;
        Ok(())
    })
    .await
}

/// How many times one reconcile walks and applies at most (see
/// [`reconcile`]).
const MAX_PASSES: usize = 3;

/// Reconciles group `gi` with `peer`: this node takes what the peer has
/// newer. `initiated`: this node runs the sync (for `auto first`).
///
/// The walk holds no lock, so reconciles of one group with several peers
/// (or with one peer over two sessions: two syncs started at once) run
/// side by side, and one may change paths the other planned to change. The
/// apply leaves such a path alone and reports it; a new pass then decides
/// it against the state as the other reconcile left it (usually: nothing
/// is left to do). Problems that remain after `MAX_PASSES` (3) passes are reported.
pub async fn reconcile(
    node: &Arc<Node>,
    peer: &Arc<Peer>,
    gi: usize,
    dry_run: bool,
    initiated: bool,
) -> Result<GroupReport, SyncError> {
    let mut report = pass(node, peer, gi, dry_run, initiated).await?;
    let mut passes = 1;
    while !dry_run && !report.problems.is_empty() && passes < MAX_PASSES {
        tracing::debug!(
            "group {}, peer {}: {} paths left by pass {passes}; deciding them again",
            node.engine.groups[gi].name,
            peer.host,
            report.problems.len()
        );
        let again = pass(node, peer, gi, dry_run, initiated).await?;
        report.problems.clear();
        report.absorb(again);
        passes += 1;
    }
    Ok(report)
}

/// One walk of the differing paths and one apply of what it decided.
async fn pass(
    node: &Arc<Node>,
    peer: &Arc<Peer>,
    gi: usize,
    dry_run: bool,
    initiated: bool,
) -> Result<GroupReport, SyncError> {
    let g = &node.engine.groups[gi];
    let mut opener = peer.opener.clone();
    let (_, roots) = request(&peer.host, &mut opener, &Message::GetRoots { group: g.name.clone() }).await?;
    let Message::Roots { hash, versions, roots, .. } = roots else { unreachable!("check_reply allows only Roots") };
    let mut report = GroupReport::default();
    let (tree, digest) = roots_summary(&node.engine, g)?;
    if (hash, versions) == (tree, digest) {
        report.in_sync = true;
        if !dry_run {
            clear_conflicts(node, gi, &peer.host).await?;
        }
        return Ok(report);
    }
    let top: Vec<WireEntry> = roots.into_iter().filter_map(|(_, e)| e).collect();
    // Equal trees with different versions: the differences hide behind
    // equal tree hashes, so every directory is listed (once; merging makes
    // the digests equal).
    let mut everywhere = hash == tree;
    let mut may_rewalk = !initiated;
    loop {
        let mut walk = Walk::new(node, peer, gi, Mode { dry_run, initiated, everywhere, may_rewalk });
        match walk.run(top.clone()).await? {
            Walked::Done => {
                let mut report = walk.done;
                report.in_sync = everywhere && report.nothing_to_do();
                return Ok(report);
            }
            Walked::Again => {
                // The tree as checked now may equal the peer's (a host
                // that had not checked before, say): then only versions
                // differ, and they hide below equal directories.
                everywhere = hash == roots_summary(&node.engine, g)?.0;
                may_rewalk = false;
            }
        }
    }
}

/// How a walk ended.
#[derive(Debug, PartialEq, Eq)]
enum Walked {
    /// Everything it decided is applied (a dry run: reported).
    Done,
    /// The pulled side's check of the paths found a local change before
    /// anything was applied: the walk is made again, deciding it.
    Again,
}

/// Estimated bytes of plans (with their changes and edits) the walk keeps
/// before it applies them and goes on: about 30,000 files. What a reconcile
/// holds at once stays bounded however many paths it changes (a first sync
/// of a million files held about 1 GiB of plans otherwise), while each apply
/// is still large enough for its batches to overlap the network and the
/// disk.
const PLAN_FLUSH_BYTES: usize = 32 << 20;

/// The test hook that sets the flush size instead (bytes), so that tests
/// make walks of a few files apply in many parts. Nobody sets it in
/// production.
const FLUSH_BYTES_ENV: &str = "SNAPSYNC_PLAN_FLUSH_BYTES";

/// [`PLAN_FLUSH_BYTES`], or what [`FLUSH_BYTES_ENV`] says, read once.
fn plan_flush_bytes() -> usize {
    static SIZE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SIZE.get_or_init(|| {
        std::env::var(FLUSH_BYTES_ENV).ok().and_then(|s| s.parse().ok()).filter(|&n| n > 0).unwrap_or(PLAN_FLUSH_BYTES)
    })
}

/// How one walk runs.
#[derive(Clone, Copy)]
struct Mode {
    /// Decide and report only (SPEC §3): nothing is checked, recorded or
    /// applied.
    dry_run: bool,
    /// This node runs the sync (for `auto first`); else a peer asked it to
    /// pull.
    initiated: bool,
    /// Descend into every directory live on both sides, equal trees too.
    everywhere: bool,
    /// Nothing is applied yet and the walk may be made again if the
    /// pulled side's check finds a local change.
    may_rewalk: bool,
}

struct Walk<'a> {
    node: &'a Arc<Node>,
    peer: &'a Arc<Peer>,
    g: &'a ResolvedGroup,
    gi: usize,
    mode: Mode,
    /// Plans not applied yet: those decided since the last flush, and the
    /// deletions and directory replacements kept for the last one.
    plans: Vec<Plan>,
    edits: Edits,
    /// What the plans not applied yet report.
    report: GroupReport,
    /// What the parts applied (a dry run: decided) so far did.
    done: GroupReport,
    /// Estimated bytes held in plans, their changes and edits.
    held: usize,
    /// Of `held`, the bytes of plans kept for the last flush.
    kept: usize,
    /// Estimated bytes held until the walk ends: the queue of directories
    /// and the directory maps below.
    lasting: usize,
    /// Directories that lose a settled type-change conflict, on either
    /// side, with the version every entry below them is deleted under
    /// (see [`Walk::visit`]).
    doomed: std::collections::HashMap<Vec<u8>, Version>,
    /// Directories the walk descends into that this node does not have
    /// and does not take (deleted here, against the peer's live
    /// directory), each with whether it is in conflict with the peer:
    /// nothing below them can be written here.
    missing: std::collections::HashMap<Vec<u8>, bool>,
    /// Paths where the peer's file or symlink replaced a directory that
    /// this node does not have, and the deleted directories below them:
    /// listed only to store the peer's tombstones of what the directory
    /// held (see [`Walk::visit`]).
    relayed: std::collections::HashSet<Vec<u8>>,
}

/// The peer's listing of one directory, fetched a page at a time as the
/// walk merges it.
struct Listing {
    /// The directory's logical path.
    dir: Vec<u8>,
    /// The page being merged.
    page: VecDeque<WireEntry>,
    /// No page follows.
    done: bool,
    /// The name the next page starts after.
    after: Vec<u8>,
    /// Entries received, all pages.
    entries: u64,
    /// Pages received.
    pages: u64,
}

impl Listing {
    /// A listing already in hand (the include roots, from `Roots`).
    fn given(entries: Vec<WireEntry>) -> Self {
        Listing { dir: Vec::new(), page: entries.into(), done: true, after: Vec::new(), entries: 0, pages: 0 }
    }

    /// The listing of `dir`, asked for as it is merged.
    fn of(dir: Vec<u8>) -> Self {
        Listing { dir, page: VecDeque::new(), done: false, after: Vec::new(), entries: 0, pages: 0 }
    }

    /// Makes sure the next entry is in the page, unless the listing is over.
    ///
    /// Pages cannot repeat: `check_reply` refuses a page that does not
    /// start after the cursor, and validation one whose names do not
    /// increase. A peer that never sets `last_page` is stopped by
    /// [`MAX_DIR_ENTRIES`].
    async fn fill(&mut self, peer: &Peer, group: &str, opener: &mut StreamOpener) -> Result<(), SyncError> {
        while self.page.is_empty() && !self.done {
            let msg = Message::GetDir { group: group.to_owned(), path: self.dir.clone(), after: self.after.clone() };
            let (_, reply) = request(&peer.host, opener, &msg).await?;
            self.add_page(reply, peer, group)?;
        }
        Ok(())
    }

    /// Takes the peer's next page (a checked `Dir` answer).
    fn add_page(&mut self, reply: Message, peer: &Peer, group: &str) -> Result<(), SyncError> {
        let Message::Dir { last_page, entries, .. } = reply else { unreachable!("check_reply allows only Dir") };
        self.pages += 1;
        self.entries += entries.len() as u64;
        if self.entries > MAX_DIR_ENTRIES {
            return Err(SyncError::Limit {
                peer: peer.host.clone(),
                what: format!(
                    "directory {:?} of group {group} lists more than {MAX_DIR_ENTRIES} entries (the limit of one \
                     listing); the reconcile with this peer stops here and nothing of it is applied",
                    String::from_utf8_lossy(&self.dir)
                ),
            });
        }
        if let Some(last) = entries.last() {
            self.after = last.name.clone();
        }
        self.done = last_page || entries.is_empty();
        self.page.extend(entries);
        Ok(())
    }
}

/// Directories whose first page is asked for before the walk reaches
/// them: the next ones in its queue, so that their round trips overlap
/// instead of following one another (a change spread over 200 directories
/// waited for 200 round trips in a row). Half the streams a connection
/// allows at once ([`crate::net::MAX_STREAMS`]); each holds at most one
/// page ([`crate::proto::PAGE_BUDGET`]).
const LISTINGS_AHEAD: usize = 4;

/// The first page of a directory's listing, asked for ahead; the request
/// stops when this is dropped unread (the walk failed).
struct Ahead(tokio::task::JoinHandle<Result<Message, SyncError>>);

impl Drop for Ahead {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a directory waiting in the walk's queue holds.
fn queued_footprint(dir: &[u8]) -> usize {
    size_of::<Vec<u8>>() + dir.len()
}

/// Whether to descend into a differing pair once it is decided: live
/// directories on both sides with different trees; a directory this node
/// takes from the peer (its children come with it); a directory the peer
/// deleted, or replaced by a file or symlink, that this node deletes or
/// replaces too (its children are decided one by one against the peer's
/// tombstones below it, so a child changed here since is a conflict, not a
/// silent loss, and the directory is emptied before its place is taken); with
/// `everywhere`, also live directories with equal trees and directories
/// deleted on both sides (versions to merge hide below them).
fn descend(
    local: Option<&EntryRecord>,
    remote: Option<&EntryRecord>,
    taken: Option<&EntryRecord>,
    everywhere: bool,
) -> bool {
    let live_dir = |r: Option<&EntryRecord>| r.is_some_and(|r| !r.deleted && r.body.kind() == Kind::Dir);
    let dead_dir = |r: Option<&EntryRecord>| r.is_some_and(|r| r.deleted && r.body.kind() == Kind::Dir);
    if live_dir(local) && live_dir(remote) {
        return everywhere || local.map(|l| &l.body) != remote.map(|r| &r.body);
    }
    // Versions to merge may sit below a directory deleted on both sides.
    if everywhere && dead_dir(remote) && (local.is_none() || dead_dir(local)) {
        return true;
    }
    match taken {
        Some(t) => live_dir(Some(t)) || live_dir(local),
        None => false,
    }
}

impl<'a> Walk<'a> {
    fn new(node: &'a Arc<Node>, peer: &'a Arc<Peer>, gi: usize, mode: Mode) -> Self {
        Walk {
            node,
            peer,
            g: &node.engine.groups[gi],
            gi,
            mode,
            plans: Vec::new(),
            edits: Edits::default(),
            report: GroupReport::default(),
            done: GroupReport::default(),
            held: 0,
            kept: 0,
            lasting: 0,
            doomed: Default::default(),
            missing: Default::default(),
            relayed: Default::default(),
        }
    }

    /// Walks the differing paths from the include roots the peer listed,
    /// applying what it decides as it goes (see [`Walk::flush`]).
    async fn run(&mut self, top: Vec<WireEntry>) -> Result<Walked, SyncError> {
        let roots: Vec<&str> = self.g.roots.iter().map(|r| r.logical.as_str()).collect();
        // Include roots the peer names must be ours too.
        let top: Vec<WireEntry> = top.into_iter().filter(|e| roots.iter().any(|r| r.as_bytes() == e.name)).collect();
        let mut queue: VecDeque<Vec<u8>> = VecDeque::new();
        if self.merge(Vec::new(), Listing::given(top), &mut queue).await? == Walked::Again {
            return Ok(Walked::Again);
        }
        // `ahead[i]` is the first page of `queue[i]`.
        let mut ahead: VecDeque<Ahead> = VecDeque::new();
        loop {
            while ahead.len() < LISTINGS_AHEAD.min(queue.len()) {
                ahead.push_back(self.ask_ahead(queue[ahead.len()].clone()));
            }
            let Some(dir) = queue.pop_front() else { break };
            self.lasting -= queued_footprint(&dir);
            let mut listing = Listing::of(dir.clone());
            if let Some(mut first) = ahead.pop_front() {
                let reply = (&mut first.0).await.expect("a listing task panicked")?;
                listing.add_page(reply, self.peer, &self.g.name)?;
            }
            if self.merge(dir, listing, &mut queue).await? == Walked::Again {
                return Ok(Walked::Again);
            }
        }
        self.flush(true).await
    }

    /// Applies the plans decided so far (a dry run: drops them, keeping
    /// what they report), except, unless `last`, deletions and files or
    /// links that replace a directory: those wait for the last flush, when
    /// everything below the directories they remove is decided and
    /// applied. Under the writer lock, with no wait on the network while
    /// it is held: a pulled side first checks the paths it is about to
    /// change, so that a local change it has not recorded yet takes part
    /// (as a conflict, say) instead of blocking the apply; then the walk's
    /// edits are made. If that check found a change before anything was
    /// applied, nothing is and the walk is made again (once).
    async fn flush(&mut self, last: bool) -> Result<Walked, SyncError> {
        let goes = |p: &Plan| last || !p.waits_for_last();
        if !self.mode.dry_run {
            let node = self.node;
            let writer = node.engine.store.writer().await;
            if !self.mode.initiated {
                let paths = self.plans.iter().filter(|p| goes(p)).filter_map(Plan::local_path).cloned().collect();
                let paths = super::apply::minimal(paths);
                if !paths.is_empty() {
                    // The writer is held: the check runs here, not through
                    // `write_locked` (the token is not reentrant).
                    let checked = tokio::task::block_in_place(|| {
                        node.engine.check_with_cause(
                            &writer,
                            &paths,
                            "local scan",
                            Some(self.gi),
                            false,
                            None,
                            &*self.peer.progress,
                            None,
                        )
                    })?;
                    self.peer.actions.add_check(&node.engine.groups, &checked);
                    if checked.groups.iter().any(|c| c.changed) && self.mode.may_rewalk {
                        return Ok(Walked::Again);
                    }
                }
            }
            crate::killpoint::hit("reconcile.planned");
            // The edits name plans by their place in `plans`: they are
            // made before any plan moves.
            let edits = std::mem::take(&mut self.edits);
            let (group, peer) = (&self.g.name, &self.peer.host);
            tokio::task::block_in_place(|| edits.commit(&node.engine, &writer, group, peer, &mut self.plans))?;
            drop(writer);
            self.mode.may_rewalk = false;
        }
        // A dry run makes no edits (SPEC §3: read-only) and drops its
        // plans here, keeping what they report.
        self.edits = Edits::default();
        let count = self.plans.iter().filter(|p| goes(p)).count();
        let mut go = Vec::with_capacity(count);
        go.extend(self.plans.extract_if(.., |p| goes(p)));
        self.plans.shrink_to_fit();
        let mut report = std::mem::take(&mut self.report);
        // The changes of kept plans (takes, all of them) stay with them.
        // Until an apply drops some, the two lists are the same changes in
        // the same order; the wire one has the paths as bytes.
        if !self.plans.is_empty() {
            let paths: std::collections::HashSet<&[u8]> = (self.plans.iter())
                .filter_map(|p| if let Plan::Take(t) = p { Some(&t.logical[..]) } else { None })
                .collect();
            debug_assert_eq!(report.changes.len(), report.wire.len());
            let (waiting, now): (Vec<_>, Vec<_>) =
                report.changes.into_iter().zip(report.wire).partition(|(_, w)| paths.contains(&w.path[..]));
            (self.report.changes, self.report.wire) = waiting.into_iter().unzip();
            (report.changes, report.wire) = now.into_iter().unzip();
        }
        self.kept = self.plans.iter().map(Plan::footprint).sum::<usize>()
            + self.report.changes.iter().map(|c| change_footprint(c.path.as_bytes())).sum::<usize>();
        self.held = self.kept;
        if !self.mode.dry_run {
            report.generation = Apply::new(self.node, self.peer, self.gi).run(go, &self.plans, &mut report).await?;
        }
        self.done.append(report);
        Ok(Walked::Done)
    }

    /// Asks for the first page of `dir`'s listing, to be read later.
    fn ask_ahead(&self, dir: Vec<u8>) -> Ahead {
        let (host, mut opener) = (self.peer.host.clone(), self.peer.opener.clone());
        let msg = Message::GetDir { group: self.g.name.clone(), path: dir, after: Vec::new() };
        Ahead(tokio::spawn(async move { request(&host, &mut opener, &msg).await.map(|(_, reply)| reply) }))
    }

    /// Merges the peer's listing of `dir` with the local record, deciding
    /// each child; queues the directories to descend into.
    async fn merge(
        &mut self,
        dir: Vec<u8>,
        mut remote: Listing,
        queue: &mut VecDeque<Vec<u8>>,
    ) -> Result<Walked, SyncError> {
        let local = self.node.engine.store.dir_record(&self.g.name, &dir)?.unwrap_or_default();
        let mut local = local.children.into_iter().peekable();
        let mut opener = self.peer.opener.clone();
        loop {
            remote.fill(self.peer, &self.g.name, &mut opener).await?;
            let (name, l, r) = match (local.peek(), remote.page.front()) {
                (None, None) => break,
                (Some((ln, _)), Some(re)) if *ln == re.name => {
                    let (n, l) = local.next().expect("peeked");
                    (n, Some(l), Some(crate::sync::from_wire(remote.page.pop_front().expect("peeked"))))
                }
                (Some((ln, _)), Some(re)) if *ln < re.name => {
                    let (n, l) = local.next().expect("peeked");
                    (n, Some(l), None)
                }
                (Some(_), None) => {
                    let (n, l) = local.next().expect("peeked");
                    (n, Some(l), None)
                }
                _ => {
                    let r = remote.page.pop_front().expect("peeked");
                    (r.name.clone(), None, Some(crate::sync::from_wire(r)))
                }
            };
            let logical = join_logical(&dir, &name);
            if self.visit(&dir, &name, &logical, l.as_ref(), r.as_ref())? {
                self.charge_lasting(queued_footprint(&logical))?;
                queue.push_back(logical);
            }
            if self.held - self.kept >= plan_flush_bytes() && self.flush(false).await? == Walked::Again {
                return Ok(Walked::Again);
            }
        }
        self.report.dirs_listed += remote.pages;
        Ok(Walked::Done)
    }

    /// Counts `bytes` more held until the plans are applied; fails over
    /// [`MAX_PLAN_BYTES`].
    fn charge(&mut self, bytes: usize) -> Result<(), SyncError> {
        self.held += bytes;
        self.within_budget()
    }

    /// Counts `bytes` more held until the walk ends; fails over
    /// [`MAX_PLAN_BYTES`].
    fn charge_lasting(&mut self, bytes: usize) -> Result<(), SyncError> {
        self.lasting += bytes;
        self.within_budget()
    }

    fn within_budget(&self) -> Result<(), SyncError> {
        if self.held + self.lasting > MAX_PLAN_BYTES {
            return Err(SyncError::Limit {
                peer: self.peer.host.clone(),
                what: format!(
                    "reconciling group {} would keep more than {} MiB of changes to make at once (the limit of \
                     one reconcile); it stops here, and what it had not applied yet is not applied",
                    self.g.name,
                    MAX_PLAN_BYTES >> 20
                ),
            });
        }
        Ok(())
    }

    /// Decides one path; returns whether to descend into it.
    fn visit(
        &mut self,
        dir: &[u8],
        name: &[u8],
        logical: &[u8],
        l: Option<&EntryRecord>,
        r: Option<&EntryRecord>,
    ) -> Result<bool, SyncError> {
        let g = self.g;
        let Some(local) = g.to_local(Path::new(OsStr::from_bytes(logical))) else {
            return Ok(false);
        };
        match g.matcher.classify(&local) {
            // Never read, sent, written or deleted (SPEC §4.11).
            Class::Excluded => return Ok(false),
            // Walked through to reach an include; only directories count.
            Class::Ancestor if r.is_some_and(|r| !r.deleted && r.body.kind() != Kind::Dir) => return Ok(false),
            _ => {}
        }
        // Below a directory that lost a type-change conflict with this
        // peer (settled for a file, symlink or deletion), every entry goes,
        // entries one side never saw included: the conflict was about the
        // directory with what it held. Both hosts store the same tombstone
        // version for each, computed from what both know (the entry's
        // versions and the conflict's two sides), so their records agree.
        // (Without a conflict, an entry the peer never saw is newer than
        // the peer's change and keeps the directory; see the apply.)
        if let Some(base) = self.doomed.get(dir).cloned()
            && (l.is_some_and(|l| !l.deleted) || r.is_some_and(|r| !r.deleted))
        {
            let lv = l.map(|x| x.version.clone()).unwrap_or_default();
            let rv = r.map(|x| x.version.clone()).unwrap_or_default();
            let version = merged_version(&merged_version(&lv, &rv), &base);
            let is_dir = |x: Option<&EntryRecord>| x.is_some_and(|x| !x.deleted && x.body.kind() == Kind::Dir);
            let go_down = is_dir(l) || is_dir(r);
            match l.filter(|l| !l.deleted) {
                Some(l) => {
                    let gone = EntryRecord { version, ..absent_like(l) };
                    self.take(logical, local, Some(l), gone, ChangeAction::Delete)?;
                }
                None => {
                    let r = r.expect("one side is live");
                    let gone = EntryRecord { version, ..absent_like(r) };
                    self.plan(Plan::Patch { dir: dir.to_vec(), name: name.to_vec(), local, record: gone })?;
                }
            }
            if !self.node.engine.store.conflicts_of(&g.name, logical)?.is_empty() {
                self.charge(size_of::<Vec<u8>>() + logical.len())?;
                self.edits.cleared.push(logical.to_vec());
            }
            if go_down {
                self.charge_lasting(size_of::<Vec<u8>>() + logical.len() + version_heap(&base))?;
                self.doomed.insert(logical.to_vec(), base);
            }
            return Ok(go_down);
        }
        // Below a replacement listed for its tombstones, nothing live is
        // taken: no directory is there to hold it.
        if self.relayed.contains(dir) && r.is_some_and(|r| !r.deleted) {
            return Ok(false);
        }
        let mark = if g.local.receive_only { None } else { self.node.engine.store.force(&g.name, logical)? };
        let forced = mark.as_ref().is_some_and(|m| m.applies(l, &self.peer.host));
        let decision = if g.local.receive_only {
            decide_receive_only(Side::new(l), Side::new(r), &self.node.engine.host)
        } else {
            decide(Side::new(l).with_force(forced), Side::new(r))
        };
        // Below a directory this node deleted while the peer kept it, the
        // peer's entries cannot be placed. In a conflict, those this node
        // deleted are part of it (recorded path by path, as `force -r`
        // settles them); those it never had wait, as they do where the
        // deletion here is newer: the peer decides about them when it
        // takes the deletion (keeping the directory for them if they are
        // newer still, and sending it here) or the conflict is settled.
        let decision = match (decision, self.missing.get(dir)) {
            (Decision::TakeRemote, Some(&in_conflict)) if r.is_some_and(|r| !r.deleted) => {
                if !in_conflict || l.is_none() {
                    return Ok(false);
                }
                Decision::Conflict(ConflictKind::DeleteModify)
            }
            (d, _) => d,
        };
        let lv = l.map(|x| x.version.clone()).unwrap_or_default();
        let rv = r.map(|x| x.version.clone()).unwrap_or_default();
        let planned = self.plans.len();
        let mut conflict_cleared = true;
        match decision {
            Decision::InSync => {
                let merged = if g.local.receive_only { rv.clone() } else { merged_version(&lv, &rv) };
                match (l, r) {
                    // Both deleted (or never seen here): the tombstone is
                    // stored under the merged version, with no scan.
                    (l, Some(r))
                        if r.deleted && l.is_none_or(|l| l.deleted) && l.is_none_or(|l| l.version != merged) =>
                    {
                        let base = l.unwrap_or(r);
                        let record = EntryRecord { version: merged, ..base.clone() };
                        self.plan(Plan::Patch { dir: dir.to_vec(), name: name.to_vec(), local, record })?;
                    }
                    (Some(l), _) if lv != merged => {
                        let record = EntryRecord { version: merged, ..l.clone() };
                        self.reversion(logical, local, record, ChangeAction::Merge)?;
                    }
                    _ => {}
                }
            }
            Decision::TakeRemote => {
                // No record there (only a receive-only host takes that): the
                // group never had the entry, and the tombstone is stored
                // under the empty version, which no peer's digest counts.
                let r = r.cloned().unwrap_or_else(|| EntryRecord {
                    version: Version::default(),
                    ..absent_like(l.expect("one side has a record"))
                });
                let action = action_for(l, &r);
                self.take(logical, local, l, r, action)?;
            }
            Decision::KeepLocal => {
                if let Some(l) = l
                    && !lv.dominates(&rv)
                    && !g.local.receive_only
                {
                    // Won by `force`: stored under a version that dominates
                    // both, so the peer takes it when it pulls.
                    let record = EntryRecord { version: self.settled(&over_dir(&lv, Some(l), r), &rv), ..l.clone() };
                    self.reversion(logical, local, record, ChangeAction::Merge)?;
                }
            }
            Decision::Conflict(kind) => {
                if let (Some(l), Some(r)) = (l, r)
                    && same_but_mtime(l, r)
                {
                    // The same content written on two hosts at different
                    // times: not a conflict. Both keep the later mtime.
                    let version = merged_version(&lv, &rv);
                    if r.meta.mtime > l.meta.mtime {
                        let record = EntryRecord { version, ..r.clone() };
                        self.take(logical, local, Some(l), record, ChangeAction::Update)?;
                    } else {
                        let record = EntryRecord { version, ..l.clone() };
                        self.reversion(logical, local, record, ChangeAction::Merge)?;
                    }
                } else {
                    conflict_cleared = false;
                    self.conflict(kind, logical, local, l, r)?;
                }
            }
        }
        if let Some(m) = &mark {
            let seen = if !m.current(l) {
                Some(ForceSeen::Void)
            } else if m.has_reached(&self.peer.host) {
                None
            } else {
                match decision {
                    Decision::InSync => {
                        let merged = merged_version(&lv, &rv);
                        Some(ForceSeen::Reached { merged: (merged != lv).then_some(merged) })
                    }
                    Decision::KeepLocal if forced && !lv.dominates(&rv) => Some(ForceSeen::Won { at: planned }),
                    _ => None,
                }
            };
            if let Some(seen) = seen {
                self.charge(size_of::<(Vec<u8>, ForceSeen)>() + logical.len())?;
                self.edits.forces.push((logical.to_vec(), seen));
            }
        }
        let taken = match self.plans.get(planned) {
            Some(Plan::Take(t)) => Some(&t.new),
            _ => None,
        };
        // A directory here against the peer's deletion of it, or the
        // other way, kept here (newer, or forced) or in conflict: this side
        // lists the peer's entries below it too. In a conflict, what below
        // it conflicts is recorded path by path (what `force -r` then
        // settles); when this side wins, the peer takes its state and lists
        // what is below it, and what is forced below it is settled in this
        // same pass rather than met as a conflict by the peer.
        let dir_state = |x: Option<&EntryRecord>| x.filter(|x| x.body.kind() == Kind::Dir).map(|x| x.deleted);
        let keeps_over_peer_dir = matches!(decision, Decision::KeepLocal | Decision::Conflict(_))
            && !self.g.local.receive_only
            && matches!((dir_state(l), dir_state(r)), (Some(true), Some(false)) | (Some(false), Some(true)));
        let go_down = descend(l, r, taken, self.mode.everywhere) || keeps_over_peer_dir;
        // A directory that loses a settled type-change conflict: here (the
        // peer's file, symlink or deletion is taken), or there (this side
        // keeps its file or symlink; the peer's directory is listed so
        // that this side stores the same tombstones the peer will).
        let live_dir = |x: Option<&EntryRecord>| x.is_some_and(|x| !x.deleted && x.body.kind() == Kind::Dir);
        let loses_here = live_dir(l) && taken.is_some_and(|t| t.deleted || t.body.kind() != Kind::Dir);
        let loses_there = live_dir(r) && !live_dir(l) && taken.is_none() && !self.g.local.receive_only;
        let nothing_below = !live_dir(l) && !live_dir(r) && !live_dir(taken);
        let live_here = live_dir(l) || live_dir(taken);
        // The peer's file or symlink that replaced a directory there, taken
        // here (or met again while listing everywhere) where no directory
        // is: the peer's tombstones of what the directory held are listed
        // and stored too, deleted directories below included. Without them
        // this node, meeting a host that still holds the directory, could
        // not show that the replacing host saw what it holds (entries first
        // recorded carry only a creation component), and the replacement
        // would look like a conflict with it.
        let replacement = r.is_some_and(|r| !r.deleted && r.body.kind() != Kind::Dir && r.version.replaced_dir());
        let dead_dir = r.is_some_and(|r| r.deleted && r.body.kind() == Kind::Dir);
        let relay = !live_dir(l)
            && !live_dir(taken)
            && ((replacement && (taken.is_some() || (self.mode.everywhere && decision == Decision::InSync)))
                || (dead_dir && self.relayed.contains(dir)));
        let mut go_down = go_down;
        if (loses_here || loses_there)
            && let Some(c) =
                self.node.engine.store.conflicts_of(&g.name, logical)?.into_iter().find(|c| {
                    c.path == logical && c.peer == self.peer.host && c.kind == ConflictKind::TypeChange.as_str()
                })
            && (loses_here || !decision.is_conflict())
        {
            let version = |x: &Option<EntryRecord>| x.as_ref().map(|x| x.version.clone()).unwrap_or_default();
            let base = merged_version(&version(&c.local), &version(&c.remote));
            self.charge_lasting(size_of::<Vec<u8>>() + logical.len() + version_heap(&base))?;
            self.doomed.insert(logical.to_vec(), base);
            go_down = true;
        }
        let parent_missing = self.missing.get(dir).copied();
        if relay {
            self.charge_lasting(size_of::<Vec<u8>>() + logical.len())?;
            self.relayed.insert(logical.to_vec());
            go_down = true;
        } else if go_down && !live_here && (parent_missing.is_some() || r.is_some_and(|r| !r.deleted)) {
            let in_conflict = decision.is_conflict() || parent_missing == Some(true);
            self.charge_lasting(size_of::<(Vec<u8>, bool)>() + logical.len())?;
            self.missing.insert(logical.to_vec(), in_conflict);
        }
        if conflict_cleared && !self.node.engine.store.conflicts_of(&g.name, logical)?.is_empty() {
            self.charge(size_of::<Vec<u8>>() + logical.len())?;
            self.edits.cleared.push(logical.to_vec());
        }
        // Nothing is below this path on either side once this decision is
        // made (no directory here or there, and none taken): a conflict
        // recorded with the peer on an entry below it is moot. The walk
        // never descends here, so it would otherwise stay listed for good
        // (a type-change conflict settled for the file, say, while entries
        // of the directory had conflicted).
        if nothing_below && !go_down && !decision.is_conflict() {
            for c in self.node.engine.store.conflicts_below(&g.name, logical)? {
                if c.peer == self.peer.host {
                    self.charge(size_of::<Vec<u8>>() + c.path.len())?;
                    self.edits.cleared.push(c.path);
                }
            }
        }
        Ok(go_down)
    }

    /// A conflict: settled by the group's `auto` policy, or recorded.
    fn conflict(
        &mut self,
        kind: ConflictKind,
        logical: &[u8],
        local: PathBuf,
        l: Option<&EntryRecord>,
        r: Option<&EntryRecord>,
    ) -> Result<(), SyncError> {
        let g = self.g;
        let remote_is_left = g.is_left_of_local(&self.peer.host);
        let lv = l.map(|x| x.version.clone()).unwrap_or_default();
        let rv = r.map(|x| x.version.clone()).unwrap_or_default();
        match resolve(kind, l, r, g.auto, remote_is_left, self.mode.initiated) {
            Some(Resolution::TakeRemote) => {
                let version = self.settled(&lv, &over_dir(&rv, r, l));
                let r = r.cloned().unwrap_or_else(|| absent_like(l.expect("one side has a record")));
                let action = action_for(l, &r);
                self.take(logical, local, l, EntryRecord { version, ..r }, action)?;
            }
            Some(Resolution::KeepLocal) => {
                if let Some(l) = l {
                    let record = EntryRecord { version: self.settled(&over_dir(&lv, Some(l), r), &rv), ..l.clone() };
                    self.reversion(logical, local, record, ChangeAction::Merge)?;
                }
            }
            None => {
                tracing::warn!(
                    "conflict with {} on {} ({}): nothing changed; settle it with `snapsync force {}` on the host whose version should win",
                    self.peer.host,
                    String::from_utf8_lossy(logical),
                    kind.as_str(),
                    local.display()
                );
                self.report.conflicts.push(String::from_utf8_lossy(logical).into_owned());
                self.report.change(ChangeAction::Conflict, logical);
                let c = Conflict {
                    group: g.name.clone(),
                    path: logical.to_vec(),
                    peer: self.peer.host.clone(),
                    kind: kind.as_str().to_owned(),
                    local: l.cloned(),
                    remote: r.cloned(),
                    time: Timestamp::now(),
                };
                let held = size_of::<Conflict>()
                    + c.group.len()
                    + c.path.len()
                    + c.peer.len()
                    + c.kind.len()
                    + c.local.as_ref().map_or(0, record_heap)
                    + c.remote.as_ref().map_or(0, record_heap)
                    + size_of::<String>()
                    + logical.len()
                    + change_footprint(logical);
                self.charge(held)?;
                self.edits.conflicts.push(c);
            }
        }
        Ok(())
    }

    /// A version that dominates both sides, for the plan about to be
    /// pushed; its fresh local counter is handed out with the edits, under
    /// the writer lock (until then, the counter is 0).
    fn settled(&mut self, lv: &Version, rv: &Version) -> Version {
        self.report.settled += 1;
        self.edits.settle.push((self.plans.len(), lv.clone(), rv.clone()));
        settled_version(lv, rv, &self.node.engine.host, 0)
    }

    /// Keeps a plan, within the budget.
    fn plan(&mut self, plan: Plan) -> Result<(), SyncError> {
        self.charge(plan.footprint())?;
        self.plans.push(plan);
        Ok(())
    }

    fn take(
        &mut self,
        logical: &[u8],
        local: PathBuf,
        l: Option<&EntryRecord>,
        r: EntryRecord,
        action: ChangeAction,
    ) -> Result<(), SyncError> {
        if action != ChangeAction::Merge {
            self.charge(change_footprint(logical))?;
            self.report.change(action, logical);
        }
        self.plan(Plan::Take(Take { logical: logical.to_vec(), local, old: l.cloned().map(Box::new), new: r, action }))
    }

    fn reversion(
        &mut self,
        logical: &[u8],
        local: PathBuf,
        record: EntryRecord,
        action: ChangeAction,
    ) -> Result<(), SyncError> {
        if action != ChangeAction::Merge {
            self.charge(change_footprint(logical))?;
            self.report.change(action, logical);
        }
        if record.deleted {
            // A tombstone takes its new version without a scan, which
            // would not see it below a directory that is gone.
            let (dir, name) = match logical.iter().rposition(|&b| b == b'/') {
                Some(i) => (&logical[..i], &logical[i + 1..]),
                None => (&[][..], logical),
            };
            return self.plan(Plan::Patch { dir: dir.to_vec(), name: name.to_vec(), local, record });
        }
        self.plan(Plan::Reversion { logical: logical.to_vec(), local, record })
    }
}

/// What taking `r` over `l` does to the path.
pub(super) fn action_for(l: Option<&EntryRecord>, r: &EntryRecord) -> ChangeAction {
    match (l.filter(|l| !l.deleted), r.deleted) {
        (_, true) => ChangeAction::Delete,
        (None, false) => ChangeAction::Create,
        (Some(_), false) => ChangeAction::Update,
    }
}

/// The version `v` of a winner (`won`) of a settled conflict, marked as
/// replacing a directory when it is a file or symlink and the loser
/// (`lost`) a live directory ([`Version::replacing_dir`]).
fn over_dir(v: &Version, won: Option<&EntryRecord>, lost: Option<&EntryRecord>) -> Version {
    let kind = |x: Option<&EntryRecord>| x.filter(|x| !x.deleted).map(|x| x.body.kind());
    match (kind(won), kind(lost)) {
        (Some(Kind::File | Kind::Symlink), Some(Kind::Dir)) => v.replacing_dir(),
        _ => v.clone(),
    }
}

/// Taking "no record" from a peer: a tombstone of the local entry.
fn absent_like(l: &EntryRecord) -> EntryRecord {
    EntryRecord { deleted: true, chunks: Vec::new(), ..l.clone() }
}

/// Two live files with the same content and metadata but their mtime.
fn same_but_mtime(l: &EntryRecord, r: &EntryRecord) -> bool {
    !l.deleted
        && !r.deleted
        && l.body.kind() == Kind::File
        && l.body == r.body
        && l.meta.mode == r.meta.mode
        && l.meta.uid == r.meta.uid
        && l.meta.gid == r.meta.gid
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hash;
    use crate::store::Stat;
    use crate::tree::Meta;

    fn file_record(chunks: usize, hosts: usize) -> EntryRecord {
        let list: Vec<ChunkRef> =
            (0..chunks).map(|i| ChunkRef { hash: Hash::of(&i.to_le_bytes()), len: 64 * 1024 }).collect();
        EntryRecord {
            meta: Meta::default(),
            body: Body::File { size: crate::chunk::total_len(&list), content: crate::chunk::content_hash(&list) },
            chunks: list,
            stat: Stat::default(),
            racy: false,
            stored: false,
            version: Version((0..hosts).map(|h| (format!("app{h}.example.com"), 7)).collect()),
            deleted: false,
            count: 1,
            bytes: 0,
        }
    }

    fn take(chunks: usize) -> Plan {
        let logical = b"/vol/0/app/shared/images/2026/11/product-0123456789-large.png".to_vec();
        let local = PathBuf::from(String::from_utf8(logical.clone()).unwrap());
        Plan::Take(Take { logical, local, old: None, new: file_record(chunks, 2), action: ChangeAction::Create })
    }

    /// A directory replaced by the peer's file or symlink is descended
    /// into, so its entries are decided (and deleted) one by one.
    #[test]
    fn descend_into_a_directory_the_peer_replaced() {
        let dir = EntryRecord { body: Body::Dir { tree: Hash::of(b"t") }, ..file_record(0, 1) };
        let file = file_record(1, 2);
        let link = EntryRecord { body: Body::Symlink { target: b"x".to_vec() }, ..file_record(0, 2) };
        let gone = absent_like(&dir);
        for taken in [&file, &link, &gone] {
            assert!(descend(Some(&dir), Some(taken), Some(taken), false));
        }
        // A file taken over a file, or nothing taken, stays flat.
        assert!(!descend(Some(&file), Some(&link), Some(&link), false));
        assert!(!descend(Some(&dir), Some(&file), None, false));
        // A directory taken over a file: its entries come with it.
        assert!(descend(Some(&file), Some(&dir), Some(&dir), false));
    }

    #[test]
    fn deletions_and_replaced_directories_wait_for_the_last_flush() {
        let Plan::Take(file) = take(2) else { unreachable!() };
        let dir = EntryRecord { body: Body::Dir { tree: Hash::of(b"t") }, ..file_record(0, 1) };
        let with = |old: Option<&EntryRecord>, new: EntryRecord| {
            Plan::Take(Take { old: old.cloned().map(Box::new), new, ..take_of(&file) })
        };
        assert!(!with(None, file.new.clone()).waits_for_last(), "a new file");
        assert!(!with(Some(&file.new), dir.clone()).waits_for_last(), "a directory over a file");
        assert!(with(Some(&dir), file.new.clone()).waits_for_last(), "a file over a directory");
        assert!(with(Some(&file.new), absent_like(&file.new)).waits_for_last(), "a deletion");
        assert!(with(Some(&dir), absent_like(&dir)).waits_for_last(), "a directory's deletion");
    }

    fn take_of(t: &Take) -> Take {
        Take { logical: t.logical.clone(), local: t.local.clone(), old: None, new: t.new.clone(), action: t.action }
    }

    #[test]
    fn changes_appended_past_the_listed_ones_are_counted() {
        let part = |from: usize, n: usize| {
            let mut r = GroupReport { chunks_fetched: 1, ..GroupReport::default() };
            for i in from..from + n {
                r.change(ChangeAction::Create, format!("/srv/f{i}").as_bytes());
            }
            r
        };
        let mut done = GroupReport::default();
        done.append(part(0, MAX_REPORTED_CHANGES - 1));
        let mut second = part(MAX_REPORTED_CHANGES - 1, 3);
        second.change(ChangeAction::Conflict, b"/srv/c");
        done.append(second);
        // Conflicts are always listed.
        assert_eq!(done.changes.len(), MAX_REPORTED_CHANGES + 1);
        assert_eq!(done.changes.last().map(|c| c.path.as_str()), Some("/srv/c"));
        assert_eq!((done.more_changes, done.changes_total()), (2, MAX_REPORTED_CHANGES as u64 + 3));
        assert_eq!(done.chunks_fetched, 2);
        assert!(done.took_any());
        let Message::Pulled { changes, more, .. } = done.pulled() else { unreachable!() };
        assert_eq!(changes.len() as u64 + more, done.changes_total());
    }

    #[test]
    fn a_first_sync_of_about_a_million_typical_files_fits_the_plan_budget() {
        // An asset of a few hundred KiB: a handful of chunks, two hosts in
        // its version, reported as one change.
        let per_file = take(4).footprint() + change_footprint(&[b'x'; 62]);
        assert!(per_file <= 1200, "a typical file's plan takes {per_file} bytes");
        assert!(MAX_PLAN_BYTES / per_file >= 900_000, "{} files fit", MAX_PLAN_BYTES / per_file);
    }

    #[test]
    fn inline_chunk_lists_count_against_the_budget() {
        // A peer can send 1024 chunk references inline with every entry:
        // each such plan costs what its list holds, so the budget bounds
        // how many of them one reconcile keeps.
        let fat = take(crate::proto::MAX_INLINE_CHUNKS).footprint();
        assert!(fat >= crate::proto::MAX_INLINE_CHUNKS * size_of::<ChunkRef>());
        assert!(MAX_PLAN_BYTES / fat < 40_000, "{} fat plans fit", MAX_PLAN_BYTES / fat);
        let with_old = match take(4) {
            Plan::Take(mut t) => {
                t.old = Some(Box::new(file_record(1000, 2)));
                Plan::Take(t).footprint()
            }
            _ => unreachable!(),
        };
        assert!(with_old >= take(4).footprint() + 1000 * size_of::<ChunkRef>());
    }
}
