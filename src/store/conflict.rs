//! Conflicts found by reconciling, and paths forced to win one.
//!
//! A *conflict* is kept per group, path and peer until a later reconcile
//! with that peer finds the path settled (or the two trees equal).
//!
//! A *force* (`snapsync force PATH`) is bound to the local version of the
//! path when it was made ([`Force`]): it wins that version's conflict with
//! each peer, or its next reconcile with each, only while the local record
//! still holds that version. It is *used up* with a peer once the peer is
//! seen holding the forced state (or a later one descending from it), and
//! dropped when every peer is, or when the local entry changes again.

use serde::{Deserialize, Serialize};

use super::{EntryRecord, Version};
use crate::tree::Timestamp;

/// One unresolved conflict with one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The group.
    pub group: String,
    /// The logical path.
    pub path: Vec<u8>,
    /// The peer holding the other side.
    pub peer: String,
    /// What kind of conflict (`modified on both sides`, ...).
    pub kind: String,
    /// The local side when it was found (`None`: never seen here).
    pub local: Option<EntryRecord>,
    /// The peer's side when it was found.
    pub remote: Option<EntryRecord>,
    /// When it was last found.
    pub time: Timestamp,
}

/// A pending `snapsync force` of one path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Force {
    /// The group.
    pub group: String,
    /// The logical path.
    pub path: Vec<u8>,
    /// The versions of the local record the force holds for: the one it
    /// had when force was run, and those the same state was stored under
    /// since (winning a conflict stores it under a version dominating both
    /// sides; finding a peer equal merges the two versions). Any other
    /// version means the local entry changed again: the force is void.
    pub versions: Vec<Version>,
    /// Peers seen holding the forced state: the force no longer decides
    /// anything with them.
    pub reached: Vec<String>,
    /// When force was run.
    pub time: Timestamp,
}

impl Force {
    /// Whether the force still holds for the local record `local`: the
    /// local entry has not changed since.
    pub fn current(&self, local: Option<&EntryRecord>) -> bool {
        local.is_some_and(|l| self.versions.contains(&l.version))
    }

    /// Whether the force makes `local` win against `peer` now.
    pub fn applies(&self, local: Option<&EntryRecord>, peer: &str) -> bool {
        self.current(local) && !self.has_reached(peer)
    }

    /// Whether `peer` was seen holding the forced state.
    pub fn has_reached(&self, peer: &str) -> bool {
        self.reached.iter().any(|p| p.eq_ignore_ascii_case(peer))
    }

    /// Records that `peer` holds the forced state.
    pub fn reach(&mut self, peer: &str) {
        if !self.has_reached(peer) {
            self.reached.push(peer.to_owned());
        }
    }

    /// Records that the forced state is now stored under `version` too.
    pub fn also_under(&mut self, version: Version) {
        if !self.versions.contains(&version) {
            self.versions.push(version);
        }
    }

    /// Whether every one of `peers` holds the forced state: the force is
    /// used up.
    pub fn used_up<'p>(&self, mut peers: impl Iterator<Item = &'p str>) -> bool {
        peers.all(|p| self.has_reached(p))
    }
}

pub(super) const CONFLICT_PREFIX: &[u8] = b"conflict\0";
pub(super) const FORCE_PREFIX: &[u8] = b"force\0";

/// `PREFIX group NUL path NUL`: every key of one path starts with it.
pub(super) fn path_key(prefix: &[u8], group: &str, path: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + group.len() + path.len() + 2);
    k.extend_from_slice(prefix);
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k.extend_from_slice(path);
    k.push(0);
    k
}

/// The key of a conflict: its path key and the peer.
pub(super) fn conflict_key(group: &str, path: &[u8], peer: &str) -> Vec<u8> {
    let mut k = path_key(CONFLICT_PREFIX, group, path);
    k.extend_from_slice(peer.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(version: Version) -> EntryRecord {
        EntryRecord { version, ..EntryRecord::tombstone_for_test() }
    }

    fn force(version: Version) -> Force {
        Force {
            group: "g".into(),
            path: b"/r/f".to_vec(),
            versions: vec![version],
            reached: Vec::new(),
            time: Timestamp::now(),
        }
    }

    #[test]
    fn a_force_holds_only_for_the_versions_of_its_state() {
        let forced = Version::default().bumped("a", 3);
        let mut f = force(forced.clone());
        assert!(f.applies(Some(&at(forced.clone())), "b"));
        // The local entry changed again, or is gone from the state: void.
        assert!(!f.current(Some(&at(forced.bumped("a", 4)))));
        assert!(!f.current(None));
        // Stored under the settled version after winning: still the same force.
        let settled = forced.bumped("b", 2).bumped("a", 5);
        f.also_under(settled.clone());
        assert!(f.applies(Some(&at(settled.clone())), "b"));
        assert!(f.applies(Some(&at(forced)), "b"));
        assert!(!f.current(Some(&at(settled.bumped("a", 6)))));
    }

    #[test]
    fn a_force_is_used_up_peer_by_peer() {
        let v = Version::default().bumped("a", 1);
        let mut f = force(v.clone());
        let peers = ["b", "c"];
        assert!(!f.used_up(peers.iter().copied()));
        f.reach("B");
        assert!(!f.applies(Some(&at(v.clone())), "b"), "host names compare case-insensitively");
        assert!(f.applies(Some(&at(v)), "c"));
        assert!(!f.used_up(peers.iter().copied()));
        f.reach("c");
        f.reach("c");
        assert_eq!(f.reached.len(), 2);
        assert!(f.used_up(peers.iter().copied()));
    }
}
