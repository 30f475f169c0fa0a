//! Entry records as they travel: a host's record of a path becomes the
//! wire entry a peer reads ([`to_wire`]), and a peer's wire entry the
//! record the decision compares ([`from_wire`]). The state database and
//! the wire format know nothing of each other; this is where they meet.

use crate::proto::{MAX_INLINE_CHUNKS, WireEntry};
use crate::store::{EntryRecord, Stat};
use crate::tree::Body;

/// The wire entry for a stored record named `name`, with its chunk list
/// inline when it is short enough (a live file of at most
/// [`MAX_INLINE_CHUNKS`] chunks).
pub fn to_wire(name: &[u8], rec: &EntryRecord) -> WireEntry {
    let inline = !rec.deleted && matches!(rec.body, Body::File { .. }) && rec.chunks.len() <= MAX_INLINE_CHUNKS;
    WireEntry {
        name: name.to_vec(),
        meta: rec.meta.clone(),
        body: rec.body.clone(),
        version: rec.version.clone(),
        deleted: rec.deleted,
        chunks: if inline { rec.chunks.clone() } else { Vec::new() },
    }
}

/// A peer's entry as a record (no stat: it describes no local file).
pub fn from_wire(e: WireEntry) -> EntryRecord {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::ChunkRef;
    use crate::hash::Hash;
    use crate::tree::{Meta, Version};

    fn record(chunks: usize, deleted: bool) -> EntryRecord {
        let list: Vec<ChunkRef> = (0..chunks).map(|i| ChunkRef { hash: Hash::of(&i.to_le_bytes()), len: 1 }).collect();
        EntryRecord {
            meta: Meta::default(),
            body: Body::File { size: chunks as u64, content: crate::chunk::content_hash(&list) },
            chunks: list,
            stat: Stat::default(),
            racy: false,
            stored: false,
            version: Version::default().bumped("a", 1),
            deleted,
            count: 1,
            bytes: chunks as u64,
        }
    }

    #[test]
    fn records_carry_short_chunk_lists_inline() {
        let e = to_wire(b"f", &record(3, false));
        assert_eq!(e.chunks.len(), 3);
        assert!(!e.chunks_left_out());
    }

    #[test]
    fn long_chunk_lists_are_left_out_to_be_paged() {
        let e = to_wire(b"f", &record(MAX_INLINE_CHUNKS + 1, false));
        assert!(e.chunks.is_empty());
        assert!(e.chunks_left_out());
    }

    #[test]
    fn tombstones_carry_no_chunks() {
        let mut rec = record(2, true);
        rec.chunks = record(2, false).chunks;
        let e = to_wire(b"f", &rec);
        assert!(e.chunks.is_empty() && !e.chunks_left_out());
    }

    #[test]
    fn a_record_survives_the_trip_but_its_stat() {
        let rec = record(3, false);
        let back = from_wire(to_wire(b"f", &rec));
        assert_eq!(EntryRecord { stat: rec.stat.clone(), ..back }, rec);
    }
}
