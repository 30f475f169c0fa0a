//! Differences between two recorded trees of one group (two generations,
//! or a generation and the current tree).
//!
//! Terms:
//! - A *side* ([`Side`]) is what one tree holds at a path: its metadata
//!   and body, or nothing.
//! - A path *differs* when its two sides differ as entries: one is absent,
//!   the kinds differ, the metadata differs, or (for a file or a link) the
//!   content differs. A directory whose entries changed but whose own
//!   metadata did not does not differ itself; the entries below it that
//!   changed are reported instead.
//!
//! Trees share subtrees by hash, so the walk descends only where the tree
//! hashes of two directories differ: its cost follows what changed, not
//! the size of the trees.

use super::{Store, StoreError};
use crate::hash::Hash;
use crate::tree::{Body, Meta, Node, RootSet, join_logical};

/// What one tree holds at a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    /// Kept metadata.
    pub meta: Meta,
    /// Content.
    pub body: Body,
}

impl Side {
    /// Whether the two are the same entry, leaving out what is below a
    /// directory (a directory's own metadata and kind only).
    pub fn same_entry(&self, other: &Side) -> bool {
        if self.meta != other.meta {
            return false;
        }
        match (&self.body, &other.body) {
            (Body::Dir { .. }, Body::Dir { .. }) => true,
            (a, b) => a == b,
        }
    }

    /// A hash naming this entry as [`Side::same_entry`] compares it: two
    /// sides are the same entry exactly when their identities are equal.
    pub fn identity(&self) -> Hash {
        let body = match &self.body {
            Body::Dir { .. } => Body::Dir { tree: Hash([0; 32]) },
            b => b.clone(),
        };
        let encoded = postcard::to_stdvec(&(&self.meta, &body)).expect("encoding to a Vec cannot fail");
        Hash(*blake3::hash(&encoded).as_bytes())
    }
}

/// What [`diff_trees`] calls for each path that differs: (logical path,
/// old side, new side).
pub type DiffVisitor<'a> = dyn FnMut(&[u8], Option<&Side>, Option<&Side>) + 'a;

/// Which differences [`diff_trees`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiffScope {
    /// Every path that differs.
    All,
    /// Only paths the old tree holds: what is below a directory only the
    /// new tree has is not walked (retention looks for old versions only,
    /// and a newly included tree would cost a walk of all of it).
    OldSides,
}

/// Calls `each(path, old, new)` for every logical path where `old` and
/// `new` differ (see the module comment), in path order within each
/// directory. Below a directory present on one side only, every entry is
/// reported (with [`DiffScope::OldSides`], only on the old side).
pub fn diff_trees(
    store: &Store,
    old: &RootSet,
    new: &RootSet,
    scope: DiffScope,
    each: &mut DiffVisitor<'_>,
) -> Result<(), StoreError> {
    let side =
        |e: &Option<crate::tree::RootEntry>| e.as_ref().map(|e| Side { meta: e.meta.clone(), body: e.body.clone() });
    let mut logicals: Vec<&String> = old.roots.iter().chain(&new.roots).map(|(l, _)| l).collect();
    logicals.sort();
    logicals.dedup();
    for l in logicals {
        let o = old.roots.iter().find(|(x, _)| x == l).and_then(|(_, e)| side(e));
        let n = new.roots.iter().find(|(x, _)| x == l).and_then(|(_, e)| side(e));
        diff_entry(store, l.as_bytes(), o.as_ref(), n.as_ref(), scope, each)?;
    }
    Ok(())
}

/// One path and, where its sides are directories, what is below it.
fn diff_entry(
    store: &Store,
    path: &[u8],
    old: Option<&Side>,
    new: Option<&Side>,
    scope: DiffScope,
    each: &mut DiffVisitor<'_>,
) -> Result<(), StoreError> {
    let differs = match (old, new) {
        (None, None) => return Ok(()),
        (Some(o), Some(n)) => !o.same_entry(n),
        _ => true,
    };
    if differs {
        each(path, old, new);
    }
    let tree = |s: Option<&Side>| match s.map(|s| &s.body) {
        Some(Body::Dir { tree }) => Some(*tree),
        _ => None,
    };
    let (ot, nt) = (tree(old), tree(new));
    if ot.is_none() && nt.is_none() || ot == nt || (ot.is_none() && scope == DiffScope::OldSides) {
        return Ok(());
    }
    let (on, nn) = (load(store, ot)?, load(store, nt)?);
    let (mut i, mut j) = (0, 0);
    // A merge of two name-sorted lists.
    while i < on.entries.len() || j < nn.entries.len() {
        let a = on.entries.get(i);
        let b = nn.entries.get(j);
        let (x, y) = match (a, b) {
            (Some(a), Some(b)) if a.name == b.name => {
                i += 1;
                j += 1;
                (Some(a), Some(b))
            }
            (Some(a), Some(b)) if a.name < b.name => {
                i += 1;
                (Some(a), None)
            }
            (Some(a), None) => {
                i += 1;
                (Some(a), None)
            }
            (_, Some(b)) => {
                j += 1;
                (None, Some(b))
            }
            (None, None) => unreachable!("the loop condition holds one"),
        };
        let name = x.or(y).map(|e| &e.name).expect("one side is present");
        let xs = x.map(|e| Side { meta: e.meta.clone(), body: e.body.clone() });
        let ys = y.map(|e| Side { meta: e.meta.clone(), body: e.body.clone() });
        diff_entry(store, &join_logical(path, name), xs.as_ref(), ys.as_ref(), scope, each)?;
    }
    Ok(())
}

/// The node `tree` names (an empty one for none).
fn load(store: &Store, tree: Option<Hash>) -> Result<Node, StoreError> {
    let Some(tree) = tree else { return Ok(Node::default()) };
    store.node(&tree)?.ok_or_else(|| StoreError::Corrupt {
        path: store.dir().to_path_buf(),
        what: format!("tree node {tree}"),
        why: "referenced but missing".into(),
    })
}

/// What `roots` holds at `rest` below include root `logical` (an empty
/// `rest`: the root itself).
pub fn entry_at(store: &Store, roots: &RootSet, logical: &str, rest: &[&[u8]]) -> Result<Option<Side>, StoreError> {
    let Some(Some(root)) = roots.roots.iter().find(|(l, _)| l == logical).map(|(_, e)| e) else {
        return Ok(None);
    };
    let mut side = Side { meta: root.meta.clone(), body: root.body.clone() };
    for name in rest {
        let Body::Dir { tree } = side.body else { return Ok(None) };
        let node = load(store, Some(tree))?;
        let Some(e) = node.get(name) else { return Ok(None) };
        side = Side { meta: e.meta.clone(), body: e.body.clone() };
    }
    Ok(Some(side))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{NodeEntry, RootEntry};

    /// A tree described as `(path, content)` pairs ("" content: a
    /// directory), stored in `store`; returns its root set with one root
    /// `/r`.
    fn tree(store: &Store, files: &[(&str, &str)]) -> RootSet {
        fn build(batch: &mut super::super::Batch<'_>, files: &[(&str, &str)], dir: &str) -> Hash {
            let mut entries = Vec::new();
            for (path, content) in files {
                let Some(rest) = path.strip_prefix(dir) else { continue };
                if rest.is_empty() || rest[1..].contains('/') {
                    continue;
                }
                let name = rest.as_bytes()[1..].to_vec();
                let body = if content.is_empty() {
                    Body::Dir { tree: build(batch, files, path) }
                } else {
                    Body::File {
                        size: content.len() as u64,
                        content: Hash(*blake3::hash(content.as_bytes()).as_bytes()),
                    }
                };
                entries.push(NodeEntry { name, meta: Meta::default(), body });
            }
            let node = Node::from_unsorted(entries).unwrap();
            let encoded = node.encode();
            let manifest = vec![Vec::new(); node.entries.len()];
            batch.put_node_encoded(&node.hash(), &encoded, &super::super::encode_manifest(&manifest));
            node.hash()
        }
        let w = store.writer_blocking();
        let mut batch = store.batch(&w);
        let root = build(&mut batch, files, "/r");
        batch.commit().unwrap();
        RootSet {
            roots: vec![("/r".into(), Some(RootEntry { meta: Meta::default(), body: Body::Dir { tree: root } }))],
        }
    }

    fn diff(store: &Store, a: &RootSet, b: &RootSet, scope: DiffScope) -> Vec<String> {
        let mut out = Vec::new();
        diff_trees(store, a, b, scope, &mut |p, o, n| {
            let what = match (o, n) {
                (None, _) => "added",
                (_, None) => "removed",
                _ => "changed",
            };
            out.push(format!("{what} {}", String::from_utf8_lossy(p)));
        })
        .unwrap();
        out
    }

    #[test]
    fn only_what_differs_is_reported_and_only_old_sides_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = tree(&store, &[("/r/same", "s"), ("/r/d", ""), ("/r/d/x", "1"), ("/r/gone", ""), ("/r/gone/y", "y")]);
        let b = tree(&store, &[("/r/same", "s"), ("/r/d", ""), ("/r/d/x", "2"), ("/r/new", ""), ("/r/new/z", "z")]);
        assert_eq!(
            diff(&store, &a, &b, DiffScope::All),
            ["changed /r/d/x", "removed /r/gone", "removed /r/gone/y", "added /r/new", "added /r/new/z"]
        );
        assert_eq!(
            diff(&store, &a, &b, DiffScope::OldSides),
            ["changed /r/d/x", "removed /r/gone", "removed /r/gone/y", "added /r/new"]
        );
        assert!(diff(&store, &a, &a, DiffScope::All).is_empty());
        let e = entry_at(&store, &b, "/r", &[b"d", b"x"]).unwrap().unwrap();
        assert!(matches!(e.body, Body::File { size: 1, .. }));
        assert_eq!(entry_at(&store, &b, "/r", &[b"gone"]).unwrap(), None);
    }
}
