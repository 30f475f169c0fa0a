//! The canonical encoding of a [`Node`].
//!
//! A node is encoded as one format byte ([`NODE_FORMAT`]) followed by the
//! postcard encoding of [`Node`]: a varint entry count, then per entry the
//! name (varint length + bytes), the four optional metadata fields and the
//! body (varint variant index, then its fields). postcard's encoding of a
//! given value is unique, and entries are sorted and unique, so equal trees
//! encode to equal bytes. docs/design.md spells the layout out field by field.

use super::{Body, Node};

/// First byte of every encoded node; bumped when the layout changes.
pub const NODE_FORMAT: u8 = 1;

/// Longest accepted entry name, in bytes (Linux's NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;

/// Longest accepted symlink target, in bytes (Linux's PATH_MAX).
pub const MAX_LINK_LEN: usize = 4096;

/// A node that is malformed or does not follow the canonical rules.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The bytes do not decode as a node.
    #[error("tree node does not decode: {0}")]
    Decode(#[from] postcard::Error),
    /// The format byte is not one this version reads.
    #[error("tree node has format {found}, expected {NODE_FORMAT}")]
    Format {
        /// The format byte found.
        found: u8,
    },
    /// The encoding is empty.
    #[error("tree node is empty")]
    Empty,
    /// An entry name is not a valid single path component.
    #[error("invalid entry name {name:?}: {why}")]
    Name {
        /// The name, lossily decoded.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Entries are not strictly sorted by name.
    #[error("entries out of order or duplicated at {name:?}")]
    Order {
        /// The first name out of place.
        name: String,
    },
    /// A symlink target is empty, too long or holds a NUL.
    #[error("invalid symlink target for {name:?}")]
    LinkTarget {
        /// The entry's name.
        name: String,
    },
    /// The bytes decode, but are not the node's canonical encoding: bytes
    /// after the node, or a number written longer than it needs.
    #[error("tree node is not in canonical form")]
    NotCanonical,
}

/// Checks that `name` is one valid path component.
pub fn validate_name(name: &[u8]) -> Result<(), TreeError> {
    let why = if name.is_empty() {
        "empty"
    } else if name == b"." || name == b".." {
        "is . or .."
    } else if name.len() > MAX_NAME_LEN {
        "longer than 255 bytes"
    } else if name.contains(&b'/') {
        "contains /"
    } else if name.contains(&0) {
        "contains NUL"
    } else {
        return Ok(());
    };
    Err(TreeError::Name { name: String::from_utf8_lossy(name).into_owned(), why })
}

impl Node {
    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![NODE_FORMAT];
        postcard::to_io(self, &mut out).expect("encoding to a Vec cannot fail");
        // Held until the scan commits, as records are
        // (`crate::store::DirRecord::encode`).
        out.shrink_to_fit();
        out
    }

    /// Decodes and checks a node: format byte, valid names in strict order,
    /// valid link targets, canonical encoding. Anything else is an error,
    /// never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Node, TreeError> {
        let (&format, rest) = bytes.split_first().ok_or(TreeError::Empty)?;
        if format != NODE_FORMAT {
            return Err(TreeError::Format { found: format });
        }
        let node: Node = postcard::from_bytes(rest)?;
        node.check()?;
        // postcard ignores bytes after the value and accepts varints with
        // redundant continuation bytes, so other bytes than `encode`'s can
        // decode to the same node. A node is named by the hash of its
        // encoding: accepting them would give one node several names
        // (found by the tree_node fuzz target).
        if node.encode() != bytes {
            return Err(TreeError::NotCanonical);
        }
        Ok(node)
    }

    /// Checks the canonical rules on a node built in memory.
    pub(super) fn check(&self) -> Result<(), TreeError> {
        let mut prev: Option<&[u8]> = None;
        for e in &self.entries {
            validate_name(&e.name)?;
            if prev.is_some_and(|p| p >= e.name.as_slice()) {
                return Err(TreeError::Order { name: String::from_utf8_lossy(&e.name).into_owned() });
            }
            if let Body::Symlink { target } = &e.body
                && (target.is_empty() || target.len() > MAX_LINK_LEN || target.contains(&0))
            {
                return Err(TreeError::LinkTarget { name: String::from_utf8_lossy(&e.name).into_owned() });
            }
            prev = Some(&e.name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::{Meta, NodeEntry, Timestamp};
    use super::*;
    use crate::hash::Hash;

    fn arb_entry() -> impl Strategy<Value = NodeEntry> {
        let name = proptest::collection::vec(1u8..=255, 1..20).prop_filter("valid name", |n| validate_name(n).is_ok());
        let meta = (
            proptest::option::of(0u32..0o7777),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>()),
            proptest::option::of((any::<i64>(), 0u32..1_000_000_000)),
        )
            .prop_map(|(mode, uid, gid, t)| Meta {
                mode,
                uid,
                gid,
                mtime: t.map(|(secs, nanos)| Timestamp { secs, nanos }),
            });
        let body = prop_oneof![
            (any::<u64>(), any::<[u8; 32]>()).prop_map(|(size, h)| Body::File { size, content: Hash(h) }),
            any::<[u8; 32]>().prop_map(|h| Body::Dir { tree: Hash(h) }),
            proptest::collection::vec(1u8..=255, 1..64).prop_map(|target| Body::Symlink { target }),
        ];
        (name, meta, body).prop_map(|(name, meta, body)| NodeEntry { name, meta, body })
    }

    fn arb_entries() -> impl Strategy<Value = Vec<NodeEntry>> {
        proptest::collection::vec(arb_entry(), 0..24).prop_map(|mut v| {
            v.sort_by(|a, b| a.name.cmp(&b.name));
            v.dedup_by(|a, b| a.name == b.name);
            v
        })
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(entries in arb_entries()) {
            let node = Node { entries };
            let bytes = node.encode();
            prop_assert_eq!(Node::decode(&bytes).unwrap(), node);
        }

        #[test]
        fn order_of_entries_does_not_change_the_hash(entries in arb_entries(), seed in any::<u64>()) {
            let sorted = Node::from_unsorted(entries.clone()).unwrap();
            let mut shuffled = entries;
            // A deterministic shuffle driven by the seed.
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(Node::from_unsorted(shuffled).unwrap().hash(), sorted.hash());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Node::decode(&bytes);
        }
    }

    fn file(name: &str) -> NodeEntry {
        NodeEntry {
            name: name.as_bytes().to_vec(),
            meta: Meta::default(),
            body: Body::File { size: 1, content: Hash::of(name.as_bytes()) },
        }
    }

    #[test]
    fn duplicate_names_are_refused() {
        assert!(matches!(Node::from_unsorted(vec![file("a"), file("a")]), Err(TreeError::Order { .. })));
    }

    #[test]
    fn out_of_order_encoding_is_refused() {
        let node = Node { entries: vec![file("b"), file("a")] };
        assert!(matches!(Node::decode(&node.encode()), Err(TreeError::Order { .. })));
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b", &[b'x'; 256]] {
            let node = Node { entries: vec![NodeEntry { name: bad.to_vec(), ..file("x") }] };
            assert!(Node::decode(&node.encode()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn wrong_format_byte_is_refused() {
        let mut bytes = Node::default().encode();
        bytes[0] = 9;
        assert!(matches!(Node::decode(&bytes), Err(TreeError::Format { found: 9 })));
        assert!(matches!(Node::decode(&[]), Err(TreeError::Empty)));
    }

    #[test]
    fn metadata_changes_the_hash() {
        let a = Node { entries: vec![file("a")] };
        let mut b = a.clone();
        b.entries[0].meta.mode = Some(0o644);
        assert_ne!(a.hash(), b.hash());
    }
}
