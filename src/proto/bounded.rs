//! Decoding with bounds: lists that refuse to grow past their limit, and a
//! per-frame memory budget.
//!
//! A frame is at most [`MAX_FRAME`] bytes, which bounds
//! every string in it, but not what its lists take in memory: postcard
//! encodes a version-vector element in 2 bytes that decode to 32. Every
//! list field of a message is therefore decoded through [`vec()`], which
//! refuses a declared length over the field's limit before allocating, and
//! charges `length × element size` to a budget that [`with_budget`] sets for
//! the frame being decoded.
//!
//! postcard turns an error raised inside `Deserialize` into a bare
//! `SerdeDeCustom` without its text, so the bound that stopped a decode is
//! also left in a thread-local [`Overrun`] for [`with_budget`] to return;
//! the caller reports that rather than postcard's error. Decoding is
//! synchronous, so the thread-local belongs to exactly one decode.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;

use super::ProtoError;
use super::limits::*;
use crate::tree::Version;

/// The limit of one list field.
pub(super) trait Bound {
    /// The field, as errors name it.
    const FIELD: &'static str;
    /// Most items it may hold.
    const MAX: usize;
}

macro_rules! bounds {
    ($($name:ident = $field:literal, $max:expr;)*) => {
        $(
            pub(super) struct $name;
            impl Bound for $name {
                const FIELD: &'static str = $field;
                const MAX: usize = $max;
            }
        )*
    };
}

bounds! {
    Groups = "groups", MAX_GROUPS;
    Roots = "Roots.roots", MAX_ROOTS;
    Entries = "Dir.entries", MAX_ENTRIES_PER_PAGE;
    InlineChunks = "entry.chunks", MAX_INLINE_CHUNKS;
    PageChunks = "ChunkList.chunks", MAX_CHUNKS_PER_PAGE;
    Files = "GetChunks.files", MAX_CHUNKS_PER_REQUEST;
    Hashes = "GetChunks.files.hashes", MAX_CHUNKS_PER_REQUEST;
    Missing = "ChunksDone.missing", MAX_CHUNKS_PER_REQUEST;
    Changes = "Pulled.changes", MAX_REPORTED_CHANGES;
    Problems = "Pulled.problems", MAX_REPORTED_PROBLEMS;
    VersionHosts = "entry.version", MAX_VERSION_HOSTS;
}

/// The bound that stopped a decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Overrun {
    /// A list longer than its limit.
    Count { field: &'static str, count: usize, max: usize },
    /// The frame's lists exceeded the memory budget.
    Budget { field: &'static str },
}

impl fmt::Display for Overrun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Overrun::Count { field, count, max } => write!(f, "{field}: {count} items, over {max}"),
            Overrun::Budget { field } => write!(f, "{field}: over the decode budget"),
        }
    }
}

impl From<Overrun> for ProtoError {
    fn from(o: Overrun) -> Self {
        match o {
            Overrun::Count { field, count, max } => ProtoError::Limit { field, count: count as u64, max: max as u64 },
            Overrun::Budget { field } => ProtoError::DecodeBudget { field, max: MAX_DECODED_LISTS },
        }
    }
}

thread_local! {
    /// Bytes the lists of the frame being decoded may still take; `None`
    /// outside [`with_budget`] (only the count limits apply then).
    static BUDGET: Cell<Option<usize>> = const { Cell::new(None) };
    /// The first bound that stopped the current decode.
    static OVERRUN: Cell<Option<Overrun>> = const { Cell::new(None) };
}

/// Restores the thread-locals even if a `Deserialize` impl panics.
struct Scope {
    budget: Option<usize>,
    overrun: Option<Overrun>,
}

impl Drop for Scope {
    fn drop(&mut self) {
        BUDGET.set(self.budget);
        OVERRUN.set(self.overrun);
    }
}

/// Runs `decode` with `budget` bytes for lists; returns its result and the
/// bound that stopped it, if one did.
pub(super) fn with_budget<T>(budget: usize, decode: impl FnOnce() -> T) -> (T, Option<Overrun>) {
    let _scope = Scope { budget: BUDGET.replace(Some(budget)), overrun: OVERRUN.take() };
    let out = decode();
    (out, OVERRUN.take())
}

fn refuse<E: de::Error>(o: Overrun) -> E {
    if OVERRUN.get().is_none() {
        OVERRUN.set(Some(o));
    }
    E::custom(o)
}

fn charge(field: &'static str, bytes: usize) -> Result<(), Overrun> {
    match BUDGET.get() {
        None => Ok(()),
        Some(left) if bytes <= left => {
            BUDGET.set(Some(left - bytes));
            Ok(())
        }
        Some(_) => Err(Overrun::Budget { field }),
    }
}

/// Deserializes a list of at most `B::MAX` items, charging its memory to
/// the frame's budget. Use as `#[serde(deserialize_with = "bounded::vec::<B, _, _>")]`.
pub(super) fn vec<'de, B: Bound, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    d.deserialize_seq(BoundedSeq::<B, T>(PhantomData))
}

struct BoundedSeq<B, T>(PhantomData<(B, T)>);

impl<'de, B: Bound, T: Deserialize<'de>> Visitor<'de> for BoundedSeq<B, T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a list of at most {} items", B::MAX)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let item = size_of::<T>().max(1);
        // postcard declares the length up front (and gives no hint when
        // fewer bytes are left than items declared): the whole list is
        // refused or paid for before anything is allocated.
        let declared = seq.size_hint().unwrap_or(0);
        if declared > B::MAX {
            return Err(refuse(Overrun::Count { field: B::FIELD, count: declared, max: B::MAX }));
        }
        charge(B::FIELD, declared * item).map_err(refuse)?;
        let mut out = Vec::with_capacity(declared);
        while let Some(value) = seq.next_element()? {
            if out.len() >= declared {
                // Only for formats that did not declare the length.
                if out.len() == B::MAX {
                    return Err(refuse(Overrun::Count { field: B::FIELD, count: out.len() + 1, max: B::MAX }));
                }
                charge(B::FIELD, item).map_err(refuse)?;
            }
            out.push(value);
        }
        Ok(out)
    }
}

/// Deserializes a [`Version`] through a bounded list.
pub(super) fn version<'de, D: Deserializer<'de>>(d: D) -> Result<Version, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Version;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a version vector of at most {MAX_VERSION_HOSTS} hosts")
        }

        fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Version, D::Error> {
            vec::<VersionHosts, _, _>(d).map(Version)
        }
    }
    d.deserialize_newtype_struct("Version", V)
}

/// `Vec<u8>` as one byte string rather than a list of `u8`s: the same
/// postcard bytes (a varint length, then the bytes), decoded with one copy
/// instead of one visitor call per byte. Use as `#[serde(with = "bounded::bytes")]`.
pub(super) mod bytes {
    use super::*;

    pub(in super::super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // Self-describing formats (JSON) write bytes as a list; a frame
            // bounds its length.
            let mut out = Vec::new();
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    bounds! {
        Three = "test.list", 3;
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Holder {
        #[serde(deserialize_with = "vec::<Three, _, _>")]
        items: Vec<u64>,
        #[serde(with = "bytes")]
        raw: Vec<u8>,
    }

    #[test]
    fn byte_strings_encode_like_lists_of_bytes() {
        let h = Holder { items: vec![1], raw: b"abc".to_vec() };
        let plain = postcard::to_stdvec(&(vec![1u64], b"abc".to_vec())).unwrap();
        assert_eq!(postcard::to_stdvec(&h).unwrap(), plain);
        assert_eq!(postcard::from_bytes::<Holder>(&plain).unwrap(), h);
    }

    #[test]
    fn a_list_over_its_bound_is_refused_from_its_declared_length() {
        // A length prefix of 4: refused before any item is decoded.
        let (res, overrun) = with_budget(1 << 20, || postcard::from_bytes::<Holder>(&[4, 1, 2, 3, 4, 0]));
        assert!(res.is_err());
        assert_eq!(overrun, Some(Overrun::Count { field: "test.list", count: 4, max: 3 }));
        // A length prefix larger than the bytes left: postcard gives no
        // length hint, nothing is reserved, and decoding fails at the end
        // of the input.
        let (res, overrun) = with_budget(1 << 20, || postcard::from_bytes::<Holder>(&[0xff, 0xff, 0x03, 1]));
        assert!(res.is_err());
        assert_eq!(overrun, None);
    }

    #[test]
    fn the_budget_is_charged_for_declared_items() {
        let bytes = postcard::to_stdvec(&Holder { items: vec![7, 8, 9], raw: vec![] }).unwrap();
        let (res, overrun) = with_budget(2 * size_of::<u64>(), || postcard::from_bytes::<Holder>(&bytes));
        assert!(res.is_err());
        assert_eq!(overrun, Some(Overrun::Budget { field: "test.list" }));
        let (res, overrun) = with_budget(3 * size_of::<u64>(), || postcard::from_bytes::<Holder>(&bytes));
        assert_eq!(res.unwrap().items, [7, 8, 9]);
        assert_eq!(overrun, None);
    }

    #[test]
    fn the_scope_is_restored_after_a_decode() {
        let _ = with_budget(0, || postcard::from_bytes::<Holder>(&[1, 5]));
        assert_eq!(BUDGET.get(), None);
        assert_eq!(OVERRUN.get(), None);
    }
}
