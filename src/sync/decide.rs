//! The per-entry reconcile decision: given what two hosts know of one path,
//! what moves and in which direction.
//!
//! Everything here is a pure function of the two sides' records, so both
//! hosts of a pair reach mirror-image answers whichever of them runs the
//! sync, and a decision can be shown (`--dry-run`, `status`) without doing
//! anything. [`decide`] lists the rules; [`resolve`] applies the `auto`
//! policies to what is left a conflict; [`decide_receive_only`] replaces
//! [`decide`] on a receive-only host.

use std::cmp::Ordering;

use crate::config::AutoPolicy;
use crate::store::{EntryRecord, Version};
use crate::tree::Body;

#[cfg(test)]
mod tests;

/// One host's view of a path.
#[derive(Clone, Copy, Debug, Default)]
pub struct Side<'a> {
    /// The host's record of the path: `None` when it never saw it, a
    /// tombstone (`deleted`) when it saw it deleted.
    pub record: Option<&'a EntryRecord>,
    /// A force (`snapsync force PATH`) holds for this host's state against
    /// this peer: the state is the one it was forced on, and the peer has
    /// not been seen holding it yet ([`crate::store::Force::applies`]).
    /// It wins a conflict only; a peer's version that dominates it is a
    /// later change, made after the forced state reached that peer.
    pub forced: bool,
}

impl<'a> Side<'a> {
    /// A side that is not forced.
    pub fn new(record: Option<&'a EntryRecord>) -> Self {
        Side { record, forced: false }
    }

    /// The same side, marked by `snapsync force` or not.
    pub fn with_force(self, forced: bool) -> Self {
        Side { forced, ..self }
    }
}

/// How two concurrent changes of one path differ. The names read from the
/// local side: `ModifyDelete` means the local host has a live entry and the
/// remote host deleted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConflictKind {
    /// Both sides hold different live entries of the same kind (content or
    /// metadata differ). Two independent creations of the same path count
    /// here too.
    ModifyModify,
    /// The local side holds a live entry, the remote side deleted it.
    ModifyDelete,
    /// The local side deleted the entry, the remote side holds a live one.
    DeleteModify,
    /// Both sides hold live entries of different kinds: a file against a
    /// directory, or either against a symbolic link.
    TypeChange,
}

impl ConflictKind {
    /// The same conflict seen from the other host.
    pub fn mirror(self) -> Self {
        match self {
            ConflictKind::ModifyDelete => ConflictKind::DeleteModify,
            ConflictKind::DeleteModify => ConflictKind::ModifyDelete,
            k => k,
        }
    }

    /// A short lower-case name for listings and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictKind::ModifyModify => "modify-modify",
            ConflictKind::ModifyDelete => "modify-delete",
            ConflictKind::DeleteModify => "delete-modify",
            ConflictKind::TypeChange => "type-change",
        }
    }
}

/// What to do with one path, seen from the local host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Both sides hold the same state (or both have none): nothing moves.
    /// Where the versions differ, both sides adopt [`merged_version`].
    InSync,
    /// The remote state is newer: apply the remote entry, or its deletion,
    /// locally, and adopt its version.
    TakeRemote,
    /// The local state is newer: the remote host takes ours.
    KeepLocal,
    /// Concurrent different changes: nothing moves until `force` or an
    /// `auto` policy ([`resolve`]) settles it.
    Conflict(ConflictKind),
}

impl Decision {
    /// The same decision seen from the other host.
    pub fn mirror(self) -> Self {
        match self {
            Decision::InSync => Decision::InSync,
            Decision::TakeRemote => Decision::KeepLocal,
            Decision::KeepLocal => Decision::TakeRemote,
            Decision::Conflict(k) => Decision::Conflict(k.mirror()),
        }
    }

    /// Whether this is a conflict.
    pub fn is_conflict(self) -> bool {
        matches!(self, Decision::Conflict(_))
    }
}

/// How a conflict was settled, seen from the local host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// The remote state wins.
    TakeRemote,
    /// The local state wins.
    KeepLocal,
}

impl Resolution {
    /// The same resolution seen from the other host.
    pub fn mirror(self) -> Self {
        match self {
            Resolution::TakeRemote => Resolution::KeepLocal,
            Resolution::KeepLocal => Resolution::TakeRemote,
        }
    }

    /// The resolution when the local side wins exactly if `local_wins`.
    fn local_wins(local_wins: bool) -> Self {
        if local_wins { Resolution::KeepLocal } else { Resolution::TakeRemote }
    }
}

impl From<Resolution> for Decision {
    fn from(r: Resolution) -> Decision {
        match r {
            Resolution::TakeRemote => Decision::TakeRemote,
            Resolution::KeepLocal => Decision::KeepLocal,
        }
    }
}

/// The version of a host that has no record of the path.
static NO_VERSION: Version = Version(Vec::new());

/// Decides one path between the local and a remote host. Neither may be
/// receive-only (see [`decide_receive_only`]). The rules, in the order they
/// apply:
///
/// 1. Equal states never move and never conflict, whatever the versions
///    (SPEC §4.4): two live entries of the same kind with equal metadata
///    and body, or two absent ones (no record, or a tombstone). Directories
///    compare their own metadata and existence only; their children are
///    decided one by one, so the tree hash in a directory's body is not
///    compared. Where the versions differ, both sides adopt
///    [`merged_version`]; a side without a record then stores the other's
///    tombstone under it.
/// 2. Otherwise the versions order the sides: the one whose version
///    dominates the other's wins (`TakeRemote` / `KeepLocal`). A tombstone
///    is a version like any other: a deletion made after the last change
///    another host saw wins over that change, and an older deletion loses
///    to a later re-creation (SPEC §4.3, §4.7). A host with no record has
///    the empty version, which every record dominates, so it takes a
///    creation; and a tombstone met by a host that never saw the entry is
///    two equal (absent) states, never a creation.
/// 3. Neither version dominates: concurrent changes, a conflict (SPEC
///    §4.5). The side marked by `snapsync force` wins it; if both are, it
///    stays a conflict. Equal versions over different states count as a
///    conflict too: they mean a host reused its counters (its state was
///    lost and rebuilt) or a settlement was stored without
///    [`settled_version`], and nothing is overwritten on a guess.
///
/// A conflict left here can be settled by the group's `auto` policy with
/// [`resolve`]. Whoever settles one (by force or by policy) stores the
/// winning state on both sides under [`settled_version`], which dominates
/// both conflicting versions: a third host still holding either of them
/// then takes the winner instead of finding the conflict again.
pub fn decide(local: Side<'_>, remote: Side<'_>) -> Decision {
    if EntryRecord::same_state(local.record, remote.record) {
        return Decision::InSync;
    }
    let (lv, rv) = (version_of(local.record), version_of(remote.record));
    match (lv.dominates(rv), rv.dominates(lv)) {
        (true, false) => Decision::KeepLocal,
        (false, true) => Decision::TakeRemote,
        // Concurrent, or equal versions over different states.
        _ => match (local.forced, remote.forced) {
            (true, false) => Decision::KeepLocal,
            (false, true) => Decision::TakeRemote,
            _ => Decision::Conflict(conflict_kind(local.record, remote.record)),
        },
    }
}

/// Decides one path on a receive-only host (`local`) against a peer that
/// may send (`remote`), given the local host's name as it appears in
/// version vectors.
///
/// A receive-only host never sends, so its own changes (the components of
/// its version under its own name) carry no weight. What it *received* is
/// the rest of its version. It takes the peer's state only when the peer's
/// version descends from what it received:
///
/// - The peer's version strictly dominates: a later state of the group,
///   taken whatever the host changed itself (SPEC §4.8: its edits and
///   creations are overwritten by the group's version, kept in its
///   generations).
/// - Equal: taken when the host changed the entry itself (its edit is
///   undone); otherwise two different states under one version, which only
///   a host that reused its counters or a peer holding back a conflicted
///   state (below) shows, and nothing moves on a guess.
/// - What it received strictly dominates the peer's: the peer has not
///   caught up yet, and taking its state would step back and forth.
/// - Concurrent: the peer's state is one side of a conflict the host has
///   already taken the other side of, or was shown the group's agreed
///   version of (a sending host offers a receive-only peer a path in
///   conflict under [`agreed_version`]). Taking it would flip the host
///   between the two sides with every sync (SPEC §4.17); it waits for
///   the settlement, whose version dominates both sides.
///
/// Every answer but `TakeRemote` means nothing moves (`KeepLocal` is never
/// sent from a receive-only host). `force` has no effect here.
///
/// `TakeRemote` with no remote record means the group does not have the
/// entry: the local one is removed.
///
/// On the other end of the pair, a host facing a receive-only peer uses
/// `decide_receive_only(remote, local, peer_name).mirror()`, and does
/// nothing on `TakeRemote`: it never takes anything from a receive-only
/// host. Its `KeepLocal` is csync2's rule that a host always wins a
/// conflict against a receive-only peer, before any `auto` policy.
pub fn decide_receive_only(local: Side<'_>, remote: Side<'_>, local_host: &str) -> Decision {
    if EntryRecord::same_state(local.record, remote.record) {
        return Decision::InSync;
    }
    let rv = version_of(remote.record);
    // The host's own changes: its counter, and the creation versions of
    // entries it created (those the peer's version does not carry).
    let own = |h: &str| h.eq_ignore_ascii_case(local_host) || (h.starts_with('~') && !rv.0.iter().any(|(r, _)| r == h));
    let lv = version_of(local.record);
    let changed_here = lv.0.iter().any(|(h, _)| own(h));
    let received = Version(lv.0.iter().filter(|(h, _)| !own(h)).cloned().collect());
    match (rv.dominates(&received), received.dominates(rv)) {
        (true, false) => Decision::TakeRemote,
        (true, true) if changed_here => Decision::TakeRemote,
        _ => Decision::KeepLocal,
    }
}

/// The element-wise minimum of two version vectors (a host missing from
/// one counts 0): the greatest version both descend from, an upper bound
/// of the version the two hosts last agreed on.
///
/// A sending host offers a receive-only peer a path it has an unresolved
/// conflict on under the agreed version of its own and the conflicting
/// peers' versions (with its own state): the receive-only host, which
/// holds that agreed version or one side of the conflict, keeps what it
/// has ([`decide_receive_only`]) instead of taking one side and then the
/// other.
pub fn agreed_version(a: &Version, b: &Version) -> Version {
    Version(
        a.0.iter()
            .filter_map(|(h, ca)| {
                let cb = b.0.iter().find(|(x, _)| x == h)?.1;
                Some((h.clone(), (*ca).min(cb))).filter(|(_, c)| *c > 0)
            })
            .collect(),
    )
}

/// The element-wise maximum of two version vectors: the least version that
/// dominates both. Two hosts that find their states equal both adopt it,
/// so neither looks behind the other afterwards.
pub fn merged_version(a: &Version, b: &Version) -> Version {
    let (mut x, mut y) = (a.0.iter().peekable(), b.0.iter().peekable());
    let mut out = Vec::with_capacity(a.0.len().max(b.0.len()));
    loop {
        let next = match (x.peek(), y.peek()) {
            (None, None) => break,
            (Some(_), None) => x.next().cloned(),
            (None, Some(_)) => y.next().cloned(),
            (Some((hx, cx)), Some((hy, cy))) => match hx.cmp(hy) {
                Ordering::Less => x.next().cloned(),
                Ordering::Greater => y.next().cloned(),
                Ordering::Equal => {
                    let c = (*cx).max(*cy);
                    y.next();
                    x.next().map(|(h, _)| (h.clone(), c))
                }
            },
        };
        out.extend(next);
    }
    Version(out)
}

/// The version under which the winner of a settled conflict is stored on
/// both sides: the merge of both conflicting versions, bumped with the next
/// counter (`seq`) of the host that settled it (`host`).
///
/// Dominating both versions is what keeps a settled conflict settled: a
/// third host still holding the losing version takes the winner instead of
/// finding the conflict again. The bump makes two hosts that settle the
/// same conflict differently at the same moment (two `sync` runs crossing,
/// each initiator winning under `auto first`) see a new conflict rather
/// than equal versions with different states.
pub fn settled_version(local: &Version, remote: &Version, host: &str, seq: u64) -> Version {
    merged_version(local, remote).bumped(host, seq)
}

/// Settles a conflict found by [`decide`] with the group's `auto` policy,
/// as csync2 defines the policies; `None` leaves it a conflict.
///
/// - `none`: never settles.
/// - `first`: the host that runs the sync wins (`local_initiated`): in
///   csync2 the host whose update run reaches the other first pushes its
///   version and clears the other's pending change. Deletions win too.
/// - `left` / `right`: the host listed further left / right in the group's
///   host list wins (`remote_is_left`: the remote host is listed before the
///   local one, [`crate::config::ResolvedGroup::is_left_of_local`]).
///   Deletions win too.
/// - `younger` / `older`: the entry with the later / earlier modification
///   time wins; `bigger` / `smaller`: the larger / smaller entry wins (a
///   file's size, a link's target length). Under these four a live entry
///   always wins over a deletion, as in csync2. Where the value is equal or
///   unknown on either side (directories and links keep no mtime,
///   directories no size), the conflict stays for `force` to settle: that
///   keeps the answer the same on both hosts, where csync2 lets equal
///   `older`/`smaller` values go to whichever host runs first.
pub fn resolve(
    conflict: ConflictKind,
    local: Option<&EntryRecord>,
    remote: Option<&EntryRecord>,
    policy: AutoPolicy,
    remote_is_left: bool,
    local_initiated: bool,
) -> Option<Resolution> {
    let (by_size, greater_wins) = match policy {
        AutoPolicy::None => return None,
        AutoPolicy::First => return Some(Resolution::local_wins(local_initiated)),
        AutoPolicy::Left => return Some(Resolution::local_wins(!remote_is_left)),
        AutoPolicy::Right => return Some(Resolution::local_wins(remote_is_left)),
        AutoPolicy::Younger => (false, true),
        AutoPolicy::Older => (false, false),
        AutoPolicy::Bigger => (true, true),
        AutoPolicy::Smaller => (true, false),
    };
    match conflict {
        ConflictKind::ModifyDelete => Some(Resolution::KeepLocal),
        ConflictKind::DeleteModify => Some(Resolution::TakeRemote),
        ConflictKind::ModifyModify | ConflictKind::TypeChange => {
            let (l, r) = (live(local)?, live(remote)?);
            let order = if by_size { size(l)?.cmp(&size(r)?) } else { l.meta.mtime?.cmp(&r.meta.mtime?) };
            match order {
                Ordering::Equal => None,
                o => Some(Resolution::local_wins((o == Ordering::Greater) == greater_wins)),
            }
        }
    }
}

/// The record if it is a live entry (not a tombstone).
fn live(record: Option<&EntryRecord>) -> Option<&EntryRecord> {
    record.filter(|r| !r.deleted)
}

/// A record's version; the empty version without a record.
fn version_of(record: Option<&EntryRecord>) -> &Version {
    record.map_or(&NO_VERSION, |r| &r.version)
}

/// What kind of conflict two different states make.
fn conflict_kind(local: Option<&EntryRecord>, remote: Option<&EntryRecord>) -> ConflictKind {
    match (live(local), live(remote)) {
        (Some(l), Some(r)) if l.body.kind() != r.body.kind() => ConflictKind::TypeChange,
        (Some(_), None) => ConflictKind::ModifyDelete,
        (None, Some(_)) => ConflictKind::DeleteModify,
        // Two live entries of one kind. (Two absent ones are the same state
        // and never get here.)
        _ => ConflictKind::ModifyModify,
    }
}

/// The size `bigger` and `smaller` compare: a file's length, a link's
/// target length (what `lstat` reports for it); none for a directory.
fn size(record: &EntryRecord) -> Option<u64> {
    match &record.body {
        Body::File { size, .. } => Some(*size),
        Body::Symlink { target } => Some(target.len() as u64),
        Body::Dir { .. } => None,
    }
}
