//! What `Roots` says of a group, read from one commit of the state.

use super::SyncError;
use crate::config::ResolvedGroup;
use crate::engine::Engine;
use crate::hash::Hash;
use crate::proto::WireEntry;
use crate::store::EntryRecord;
use crate::tree::{RootEntry, RootSet};

/// A group's `Roots`, as [`roots_of`] reads it.
pub struct RootsAnswer {
    /// The root hash.
    pub hash: Hash,
    /// The version digest.
    pub versions: Hash,
    /// Each include root with its entry, if it has one.
    pub roots: Vec<(String, Option<WireEntry>)>,
}

/// What `Roots` says of a group: each include root's entry, the root hash
/// of those entries and the version digest, all read from one commit of
/// the state ([`crate::store::Store::view`]). Separate reads could pair the
/// roots of one commit with the digest of the next, and a peer refuses a
/// `Roots` whose hash is not that of the roots listed; the hash is
/// computed from the entries listed, so it is theirs by construction (it
/// equals the recorded root set's: a check records both from the same
/// entries). Never scanned: every root absent.
///
/// `offer` makes each root's wire entry from its name and record
/// ([`super::to_wire`], or what a server offers a receive-only peer).
pub fn roots_of(
    engine: &Engine,
    group: &ResolvedGroup,
    offer: impl Fn(&[u8], &EntryRecord) -> WireEntry,
) -> Result<RootsAnswer, SyncError> {
    let view = engine.store.view();
    let rec = view.dir_record(&group.name, b"")?.unwrap_or_default();
    let versions = view.version_digest(&group.name)?;
    drop(view);
    let mut set = RootSet { roots: Vec::with_capacity(group.roots.len()) };
    let mut roots = Vec::with_capacity(group.roots.len());
    for r in &group.roots {
        let e = rec.get(r.logical.as_bytes());
        let live = e.filter(|e| !e.deleted).map(|e| RootEntry { meta: e.meta.clone(), body: e.body.clone() });
        set.roots.push((r.logical.clone(), live));
        roots.push((r.logical.clone(), e.map(|e| offer(r.logical.as_bytes(), e))));
    }
    Ok(RootsAnswer { hash: set.hash(), versions, roots })
}

/// What `Roots` says of a group, to compare: its root hash and its
/// version digest, from one commit.
pub fn roots_summary(engine: &Engine, group: &ResolvedGroup) -> Result<(Hash, Hash), SyncError> {
    let a = roots_of(engine, group, super::to_wire)?;
    Ok((a.hash, a.versions))
}
