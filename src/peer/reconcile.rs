//! Reconciling one group with one peer, from this node's side: compare
//! roots, descend where the trees differ, decide each differing path, and
//! take what the peer has newer (docs/protocol.md, "Reconcile").

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::apply::{Apply, Take};
use super::server::{Peer, roots_summary};
use super::session::request;
use super::{Node, SyncError};
use crate::config::{Class, ResolvedGroup};
use crate::proto::{Change, ChangeAction, Message, WireEntry};
use crate::store::{Conflict, EntryRecord, Stat, Version, join_logical};
use crate::sync::{ConflictKind, Decision, Resolution, Side, decide, decide_receive_only, merged_version, resolve};
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
    pub(super) fn from_wire(c: &Change) -> Self {
        ChangeReport::new(c.action, &c.path)
    }
}

fn action_name<S: serde::Serializer>(a: &ChangeAction, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(a.as_str())
}

/// What reconciling one group with one peer did on this node.
#[derive(Debug, Default, Serialize)]
pub struct GroupReport {
    /// The root hashes were equal: nothing was compared further.
    pub in_sync: bool,
    /// Changes applied (or, dry run, that would be).
    pub changes: Vec<ChangeReport>,
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
    pub(super) fn pulled(&self) -> Message {
        Message::pulled(self.wire.iter().cloned())
    }

    /// Adds what a later reconcile with the same peer did.
    pub(super) fn absorb(&mut self, later: GroupReport) {
        for c in later.changes {
            self.changes.retain(|x| x.path != c.path);
            self.changes.push(c);
        }
        self.conflicts = later.conflicts;
        self.problems.extend(later.problems);
        self.dirs_listed += later.dirs_listed;
        self.chunks_fetched += later.chunks_fetched;
        self.bytes_fetched += later.bytes_fetched;
        self.chunks_local += later.chunks_local;
        self.settled += later.settled;
        self.generation = later.generation.or(self.generation);
        self.in_sync = later.in_sync;
        self.wire.extend(later.wire);
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
    /// Store this tombstone as child `name` of directory `dir`: a deletion
    /// both sides agree on, under the merged version.
    Patch { dir: Vec<u8>, name: Vec<u8>, record: EntryRecord },
}

impl Plan {
    /// The local path a plan changes on disk, if it changes one.
    fn local_path(&self) -> Option<&PathBuf> {
        match self {
            Plan::Take(t) => Some(&t.local),
            Plan::Reversion { .. } | Plan::Patch { .. } => None,
        }
    }
}

/// Reconciles group `gi` with `peer`: this node takes what the peer has
/// newer. `initiated`: this node runs the sync (for `auto first`).
pub(super) async fn reconcile(
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
    let (tree, digest) = roots_summary(node, g)?;
    if (hash, versions) == (tree, digest) {
        report.in_sync = true;
        let mut batch = node.engine.store.batch();
        batch.clear_conflicts(&g.name, &peer.host)?;
        batch.commit()?;
        return Ok(report);
    }
    let top: Vec<WireEntry> = roots.into_iter().filter_map(|(_, e)| e).collect();
    // Equal trees with different versions: the differences hide behind
    // equal tree hashes, so every directory is listed (once; merging makes
    // the digests equal).
    let everywhere = hash == tree;
    let mut walk = Walk { node, peer, g, initiated, everywhere, plans: Vec::new(), unforce: Vec::new(), report };
    walk.run(top.clone()).await?;
    // The initiator checked its whole tree before; a peer asked to pull
    // checks the paths it is about to change, so that a local change it
    // has not recorded yet takes part (as a conflict, say) instead of
    // blocking the apply. If that check found anything, decide again.
    if !initiated {
        let paths = super::apply::minimal(walk.plans.iter().filter_map(Plan::local_path).cloned().collect());
        if !paths.is_empty() {
            let checked = node
                .write_locked(move |n| n.engine.check_with_cause(&paths, "local scan", Some(gi), false, None))
                .await?;
            if checked.groups.iter().any(|c| c.changed) {
                let report = GroupReport::default();
                walk = Walk { node, peer, g, initiated, everywhere, plans: Vec::new(), unforce: Vec::new(), report };
                walk.run(top).await?;
            }
        }
    }
    let Walk { plans, unforce, mut report, .. } = walk;
    if dry_run {
        return Ok(report);
    }
    if !unforce.is_empty() {
        let mut batch = node.engine.store.batch();
        for path in &unforce {
            batch.set_forced(&g.name, path, false);
        }
        batch.commit()?;
    }
    let applied = Apply::new(node, peer, gi).run(plans, &mut report).await?;
    report.generation = applied;
    Ok(report)
}

struct Walk<'a> {
    node: &'a Arc<Node>,
    peer: &'a Arc<Peer>,
    g: &'a ResolvedGroup,
    initiated: bool,
    /// Descend into every directory live on both sides, equal trees too.
    everywhere: bool,
    /// Forced paths whose win is planned: the mark goes once applied.
    unforce: Vec<Vec<u8>>,
    plans: Vec<Plan>,
    report: GroupReport,
}

/// Whether to descend into a differing pair once it is decided: live
/// directories on both sides with different trees; a directory this node
/// takes from the peer (its children come with it); a directory the peer
/// deleted and this node deletes too (its children are decided one by one,
/// so a child changed here since is a conflict, not a silent loss); with
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
        Some(t) if !t.deleted => live_dir(Some(t)),
        Some(_) => live_dir(local),
        None => false,
    }
}

impl Walk<'_> {
    async fn run(&mut self, top: Vec<WireEntry>) -> Result<(), SyncError> {
        let roots: Vec<&str> = self.g.roots.iter().map(|r| r.logical.as_str()).collect();
        // Include roots the peer names must be ours too.
        let top: Vec<WireEntry> = top.into_iter().filter(|e| roots.iter().any(|r| r.as_bytes() == e.name)).collect();
        let mut queue: VecDeque<(Vec<u8>, Vec<WireEntry>)> = VecDeque::new();
        queue.push_back((Vec::new(), top));
        while let Some((dir, remote)) = queue.pop_front() {
            let local = self.node.engine.store.dir_record(&self.g.name, &dir)?.unwrap_or_default();
            let mut remote = remote.into_iter().peekable();
            let mut local = local.children.into_iter().peekable();
            loop {
                let (name, l, r) = match (local.peek(), remote.peek()) {
                    (None, None) => break,
                    (Some((ln, _)), Some(re)) if *ln == re.name => {
                        let (n, l) = local.next().expect("peeked");
                        (n, Some(l), Some(record_of(remote.next().expect("peeked"))))
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
                        let r = remote.next().expect("peeked");
                        (r.name.clone(), None, Some(record_of(r)))
                    }
                };
                let logical = join_logical(&dir, &name);
                if self.visit(&dir, &name, &logical, l.as_ref(), r.as_ref())? {
                    let listing = self.list(&logical).await?;
                    queue.push_back((logical, listing));
                }
            }
        }
        Ok(())
    }

    /// The peer's listing of directory `path`, all pages.
    async fn list(&mut self, path: &[u8]) -> Result<Vec<WireEntry>, SyncError> {
        let mut opener = self.peer.opener.clone();
        let mut out: Vec<WireEntry> = Vec::new();
        loop {
            let after = out.last().map(|e| e.name.clone()).unwrap_or_default();
            let msg = Message::GetDir { group: self.g.name.clone(), path: path.to_vec(), after };
            let (_, reply) = request(&self.peer.host, &mut opener, &msg).await?;
            self.report.dirs_listed += 1;
            let Message::Dir { last_page, entries, .. } = reply else { unreachable!("check_reply allows only Dir") };
            let empty = entries.is_empty();
            out.extend(entries);
            if last_page || empty {
                return Ok(out);
            }
        }
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
        let forced = self.node.engine.store.is_forced(&g.name, logical)?;
        let decision = if g.local.receive_only {
            decide_receive_only(Side::new(l), Side::new(r), &self.node.engine.host)
        } else {
            decide(Side::new(l).with_force(forced), Side::new(r))
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
                        self.plans.push(Plan::Patch { dir: dir.to_vec(), name: name.to_vec(), record });
                    }
                    (Some(l), _) if lv != merged => {
                        let record = EntryRecord { version: merged, ..l.clone() };
                        self.reversion(logical, local, record, ChangeAction::Merge);
                    }
                    _ => {}
                }
            }
            Decision::TakeRemote => {
                let r = r.cloned().unwrap_or_else(|| absent_like(l.expect("one side has a record")));
                let action = action_for(l, &r);
                self.take(logical, local, l, r, action);
            }
            Decision::KeepLocal => {
                if let Some(l) = l
                    && !lv.dominates(&rv)
                    && !g.local.receive_only
                {
                    // Won by `force`: stored under a version that dominates
                    // both, so the peer takes it when it pulls.
                    let record = EntryRecord { version: self.settled(&lv, &rv)?, ..l.clone() };
                    self.reversion(logical, local, record, ChangeAction::Merge);
                    self.unforce.push(logical.to_vec());
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
                        self.take(logical, local, Some(l), EntryRecord { version, ..r.clone() }, ChangeAction::Update);
                    } else {
                        let record = EntryRecord { version, ..l.clone() };
                        self.reversion(logical, local, record, ChangeAction::Merge);
                    }
                } else {
                    conflict_cleared = false;
                    self.conflict(kind, logical, local, l, r)?;
                }
            }
        }
        let taken = match self.plans.get(planned) {
            Some(Plan::Take(t)) => Some(&t.new),
            _ => None,
        };
        let go_down = descend(l, r, taken, self.everywhere);
        if conflict_cleared && !self.node.engine.store.conflicts_of(&g.name, logical)?.is_empty() {
            let mut batch = self.node.engine.store.batch();
            batch.remove_conflict(&g.name, logical, &self.peer.host);
            batch.commit()?;
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
        match resolve(kind, l, r, g.auto, remote_is_left, self.initiated) {
            Some(Resolution::TakeRemote) => {
                let version = self.settled(&lv, &rv)?;
                let r = r.cloned().unwrap_or_else(|| absent_like(l.expect("one side has a record")));
                let action = action_for(l, &r);
                self.take(logical, local, l, EntryRecord { version, ..r }, action);
            }
            Some(Resolution::KeepLocal) => {
                if let Some(l) = l {
                    let record = EntryRecord { version: self.settled(&lv, &rv)?, ..l.clone() };
                    self.reversion(logical, local, record, ChangeAction::Merge);
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
                let mut batch = self.node.engine.store.batch();
                batch.put_conflict(&c);
                batch.commit()?;
            }
        }
        Ok(())
    }

    /// A version that dominates both sides, with a fresh local counter.
    fn settled(&mut self, lv: &Version, rv: &Version) -> Result<Version, SyncError> {
        self.report.settled += 1;
        let seq = self.node.engine.store.allocate_seq()?;
        Ok(crate::sync::settled_version(lv, rv, &self.node.engine.host, seq))
    }

    fn take(&mut self, logical: &[u8], local: PathBuf, l: Option<&EntryRecord>, r: EntryRecord, action: ChangeAction) {
        if action != ChangeAction::Merge {
            self.report.change(action, logical);
        }
        self.plans.push(Plan::Take(Take { logical: logical.to_vec(), local, old: l.cloned(), new: r, action }));
    }

    fn reversion(&mut self, logical: &[u8], local: PathBuf, record: EntryRecord, action: ChangeAction) {
        if action != ChangeAction::Merge {
            self.report.change(action, logical);
        }
        self.plans.push(Plan::Reversion { logical: logical.to_vec(), local, record });
    }
}

/// What taking `r` over `l` does to the path.
fn action_for(l: Option<&EntryRecord>, r: &EntryRecord) -> ChangeAction {
    match (l.filter(|l| !l.deleted), r.deleted) {
        (_, true) => ChangeAction::Delete,
        (None, false) => ChangeAction::Create,
        (Some(_), false) => ChangeAction::Update,
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

/// A peer's entry as a record (no stat: it describes no local file).
fn record_of(e: WireEntry) -> EntryRecord {
    let bytes = match &e.body {
        Body::File { size, .. } => *size,
        _ => 0,
    };
    EntryRecord {
        meta: e.meta,
        body: e.body,
        chunks: e.chunks,
        stat: Stat::default(),
        racy: false,
        stored: false,
        version: e.version,
        deleted: e.deleted,
        count: 1,
        bytes,
    }
}
