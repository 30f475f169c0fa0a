//! Version vectors: what each entry's state has seen of every host's
//! changes, the order reconciling decides by. They belong to the tree's
//! vocabulary, below both the state database and the wire format.

use serde::{Deserialize, Serialize};

use super::{Body, Meta};

/// A version vector: for each host that changed the entry, the counter of
/// its latest change. Sorted by host name, one pair per host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version(pub Vec<(String, u64)>);

/// The `derive_key` context of creation versions ([`Version::created`]).
pub const CREATION_CONTEXT: &str = "snapsync 2026-11 creation version v1";

/// The component that marks a file or symlink which replaced a directory
/// ([`Version::replacing_dir`]). Like a creation component it starts with
/// `~`, so no host name collides with it, and its counter is always 1.
pub const REPLACED_DIR: &str = "~replaced-dir";

impl Version {
    /// The version of an entry seen for the first time in state `meta`
    /// and `body`: one component named `~` and 16 hex digits of a hash of
    /// that state (a directory's children left out), counter 1.
    ///
    /// Two hosts that create the same entry independently (the same
    /// release unpacked on both, say) thereby give it the same version,
    /// and a later change on either dominates it instead of being
    /// concurrent with the other's creation. Different creations get
    /// different components, so they are concurrent: a conflict, as they
    /// should be. `~` cannot start a host name, so the component never
    /// collides with a host's counter.
    pub fn created(meta: &Meta, body: &Body) -> Version {
        let body = match body {
            Body::Dir { .. } => Body::Dir { tree: crate::hash::Hash::of(b"") },
            other => other.clone(),
        };
        let encoded = postcard::to_stdvec(&(meta, &body)).expect("encoding to a Vec cannot fail");
        let hash = crate::hash::Hash(blake3::derive_key(CREATION_CONTEXT, &encoded));
        Version(vec![(format!("~{}", &hash.to_hex()[..16]), 1)])
    }

    /// This version with `host`'s counter set to `seq` (a new local change).
    pub fn bumped(&self, host: &str, seq: u64) -> Version {
        let mut v = self.0.clone();
        match v.binary_search_by(|(h, _)| h.as_str().cmp(host)) {
            Ok(i) => v[i].1 = seq,
            Err(i) => v.insert(i, (host.to_owned(), seq)),
        }
        Version(v)
    }

    /// This version raised to every host counter of `other` (creation
    /// components, `~...`, left out): what a change made after seeing
    /// `other` has seen. Deleting a directory deletes what it holds as
    /// this host saw it, so the directory's tombstone takes in the host
    /// counters of everything below it; a later deletion by a host that
    /// saw those entries then dominates a version kept for them.
    /// Creation components stay out, so the version stays as small as
    /// the number of hosts, however many entries the directory held.
    pub fn with_counters_of(&self, other: &Version) -> Version {
        let mut v = self.0.clone();
        for (h, c) in other.0.iter().filter(|(h, _)| !h.starts_with('~')) {
            match v.binary_search_by(|(x, _)| x.as_str().cmp(h)) {
                Ok(i) => v[i].1 = v[i].1.max(*c),
                Err(i) => v.insert(i, (h.clone(), *c)),
            }
        }
        Version(v)
    }

    /// This version marked as that of an entry which replaced a directory.
    ///
    /// The host that replaced the directory keeps a tombstone for each
    /// entry it held, and the replacement's version has seen them all; but
    /// entries first recorded carry only a creation component, which no
    /// host counter covers. A host that takes the replacement and never had
    /// the directory lists those tombstones too when the mark is there
    /// (see the sync walk), so that it can show a host still holding the
    /// directory what the replacing host saw. The mark stays through later
    /// changes, merges and settlements, as every component does.
    pub fn replacing_dir(&self) -> Version {
        self.bumped(REPLACED_DIR, 1)
    }

    /// Whether this is the version of an entry that replaced a directory
    /// ([`Version::replacing_dir`]).
    pub fn replaced_dir(&self) -> bool {
        self.0.binary_search_by(|(h, _)| h.as_str().cmp(REPLACED_DIR)).is_ok()
    }

    /// Whether `self` has seen everything `other` has (`self >= other`).
    pub fn dominates(&self, other: &Version) -> bool {
        other
            .0
            .iter()
            .all(|(h, c)| self.0.binary_search_by(|(x, _)| x.as_str().cmp(h)).is_ok_and(|i| self.0[i].1 >= *c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replaced_directory_mark_survives_changes_and_orders_nothing_by_itself() {
        let dir = Version(vec![("~0123456789abcdef".into(), 1)]);
        let replacement = dir.bumped("a", 4).replacing_dir();
        assert!(replacement.replaced_dir() && !dir.replaced_dir());
        assert!(replacement.dominates(&dir), "the replacement is a later change of the directory");
        // Later changes and merges keep it; a directory's tombstone built
        // from what it held does not take it in (it is not a host counter).
        assert!(replacement.bumped("b", 9).replaced_dir());
        assert!(crate::sync::merged_version(&dir.bumped("b", 2), &replacement).replaced_dir());
        assert!(!Version::default().with_counters_of(&replacement).replaced_dir());
        // Marking twice changes nothing; the components stay sorted.
        assert_eq!(replacement.replacing_dir(), replacement);
        assert!(replacement.0.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
