//! Chunking: how file content becomes content-addressed pieces.
//!
//! - A *chunk* is a run of a file's bytes whose boundaries are chosen by the
//!   content itself (FastCDC, the 2020 variant with normalization level 1),
//!   so an edit moves only the boundaries near it and the rest of the file
//!   cuts into the same chunks as before. Every chunk is between
//!   [`MIN_SIZE`] and [`MAX_SIZE`] bytes long, except the last chunk of a
//!   file, which may be shorter than [`MIN_SIZE`] (a file shorter than
//!   [`MIN_SIZE`] is one chunk). A chunk is named by the plain BLAKE3 hash
//!   of its bytes ([`Hash::of`]); equal bytes in any file, version,
//!   generation or host are the same chunk, stored and sent once.
//! - A *chunk list* is the ordered list of [`ChunkRef`]s (chunk hash and
//!   length) of one file. Concatenating its chunks gives the file back; an
//!   empty file has an empty chunk list.
//! - The *content hash* of a file names its whole content: a BLAKE3 hash, in
//!   its own `derive_key` domain ([`CONTENT_HASH_CONTEXT`]), of the chunk
//!   list (see [`content_hash`]). Two files have the same content hash
//!   exactly when they have the same chunk list.
//! - The *stored form* of a chunk is how it sits in the content store and
//!   travels between hosts: one tag byte ([`TAG_RAW`] or [`TAG_ZSTD`]) and
//!   the payload, raw or zstd-compressed (see [`encode`] and [`decode`]).
//!   Whatever its form, a chunk is only ever used after its decoded bytes
//!   have been checked against its hash.
//!
//! The cut points, and therefore every chunk hash and content hash, depend
//! on the three size constants, the normalization level and the FastCDC
//! gear table. They are part of the on-disk and wire format: changing any
//! of them renames all content, and needs a new format version. The
//! snapshot test in `cut.rs` pins them on seeded data so that a dependency
//! upgrade cannot change them silently.

mod cut;
mod stored;

/// Where the chunk `hash` starts in a file with this chunk list.
pub fn offset_of<'c>(chunks: &'c [ChunkRef], hash: &Hash) -> Option<(u64, &'c ChunkRef)> {
    let mut offset = 0u64;
    for c in chunks {
        if c.hash == *hash {
            return Some((offset, c));
        }
        offset += u64::from(c.len);
    }
    None
}

#[cfg(test)]
mod testdata;

use serde::{Deserialize, Serialize};

use crate::hash::Hash;

pub use cut::{Chunks, STREAM_WINDOW, chunk_bytes, chunk_file, chunk_reader, chunks};
pub use stored::{
    TAG_RAW, TAG_ZSTD, ZSTD_LEVEL, compressed, decode, decode_borrowed, decode_into, encode, encode_into,
};

/// Smallest chunk FastCDC cuts (except a file's last chunk).
///
/// A quarter of [`AVG_SIZE`], the ratio of the FastCDC papers (Xia et al.,
/// USENIX ATC 2016 and IEEE TPDS 2020). FastCDC does not look for a cut
/// point in the first `MIN_SIZE` bytes of a chunk ("cut-point skipping"),
/// which is a large part of its speed; the floor also bounds the number of
/// chunks, and so the per-chunk index and request overhead, whatever the
/// data.
pub const MIN_SIZE: u32 = 16 * 1024;

/// The size FastCDC aims for: the unit of deduplication and of transfer.
///
/// 64 KiB keeps the per-chunk cost small (an index entry, a store object
/// and a request each; a 100 GiB tree is about 1.3 million chunks) while a
/// one-byte edit in a large file still sends only about one chunk. Most
/// asset files (a few hundred bytes to a few hundred KiB) are one to a few
/// chunks. On random data the mean chunk is about 80 KiB: with
/// normalization level 1, cut points are rarer than `1 / AVG_SIZE` before
/// `AVG_SIZE` and more frequent after it, and no cut is looked for in the
/// first [`MIN_SIZE`] bytes.
pub const AVG_SIZE: u32 = 64 * 1024;

/// Largest chunk; FastCDC forces a cut here when it found none.
///
/// Four times [`AVG_SIZE`]: past `AVG_SIZE` the normalized cut probability
/// is `2^-15` per byte, so a chunk of random data that gets that far reaches
/// the forced cut with probability `e^-6` (one in 400; one chunk in about
/// 600 overall). Forced cuts are not content-defined, so they should be
/// rare outside of degenerate data such as long runs of zeros. It also
/// bounds every buffer that holds one chunk: the streaming window, the
/// decoder ([`decode`] refuses anything larger) and a chunk message on the
/// wire.
///
/// fastcdc 5 requires all three sizes to be even.
pub const MAX_SIZE: u32 = 256 * 1024;

/// The `derive_key` context of [`content_hash`]. Part of the format: content
/// hashes computed under another context are different names.
pub const CONTENT_HASH_CONTEXT: &str = "snapsync 2026-11 content v1";

/// One entry of a chunk list: a chunk's hash and its length in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Plain BLAKE3 hash of the chunk's bytes.
    pub hash: Hash,
    /// Length of the chunk in bytes, at most [`MAX_SIZE`].
    pub len: u32,
}

impl ChunkRef {
    /// Names `bytes`, which are one chunk (at most [`MAX_SIZE`] bytes).
    fn of(bytes: &[u8]) -> Self {
        debug_assert!(bytes.len() <= MAX_SIZE as usize);
        ChunkRef { hash: Hash::of(bytes), len: bytes.len() as u32 }
    }
}

/// The content hash of a file, from its chunk list.
///
/// BLAKE3 in the [`CONTENT_HASH_CONTEXT`] `derive_key` domain over, for each
/// chunk in order, its 32-byte hash then its length as a little-endian
/// `u32`. Hashing the chunk list rather than the bytes means a file's bytes
/// are hashed once (into chunk hashes) and the content hash costs 36 bytes
/// of hashing per chunk; a separate domain keeps a content hash from ever
/// equalling a chunk hash.
///
/// The result depends on where chunks are cut, so the chunking parameters
/// ([`MIN_SIZE`], [`AVG_SIZE`], [`MAX_SIZE`], the FastCDC variant and level)
/// are part of the format version: the same bytes cut differently get a
/// different content hash.
pub fn content_hash(chunks: &[ChunkRef]) -> Hash {
    let mut hasher = blake3::Hasher::new_derive_key(CONTENT_HASH_CONTEXT);
    for chunk in chunks {
        hasher.update(chunk.hash.as_bytes());
        hasher.update(&chunk.len.to_le_bytes());
    }
    Hash::from(hasher.finalize())
}

/// Total length in bytes of the file a chunk list describes.
pub fn total_len(chunks: &[ChunkRef]) -> u64 {
    chunks.iter().map(|c| u64::from(c.len)).sum()
}

/// Checks that `data` is the chunk named `expected`.
pub fn verify(expected: &Hash, data: &[u8]) -> Result<(), ChunkError> {
    let actual = Hash::of(data);
    if actual == *expected { Ok(()) } else { Err(ChunkError::HashMismatch { expected: *expected, actual }) }
}

/// A chunk's bytes or stored form are not what its hash says.
///
/// Every variant is permanent: the bytes at hand are damaged or hostile, and
/// reading the same bytes again gives the same error. A caller that got them
/// from a peer may fetch the chunk again from another source; one that read
/// them from its own store has a corrupt store entry.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The bytes hash to something other than the chunk's name.
    #[error("chunk {expected}: content does not match its hash (it hashes to {actual})")]
    HashMismatch {
        /// The chunk's name.
        expected: Hash,
        /// What the bytes actually hash to.
        actual: Hash,
    },
    /// The stored form has no tag byte.
    #[error("chunk {hash}: stored form is empty (no tag byte)")]
    Empty {
        /// The chunk's name.
        hash: Hash,
    },
    /// The stored form starts with a tag this version does not know.
    #[error("chunk {hash}: unknown stored-form tag {tag:#04x}")]
    BadTag {
        /// The chunk's name.
        hash: Hash,
        /// The tag byte found.
        tag: u8,
    },
    /// The stored form decodes to more than [`MAX_SIZE`] bytes; decoding
    /// stopped there.
    #[error("chunk {hash}: decodes to at least {size} bytes, over the {MAX_SIZE}-byte chunk limit")]
    TooLarge {
        /// The chunk's name.
        hash: Hash,
        /// The decoded size, or a lower bound of it when the stored form
        /// does not say.
        size: u64,
    },
    /// zstd could not decompress the payload.
    #[error("chunk {hash}: zstd payload does not decompress: {source}")]
    Zstd {
        /// The chunk's name.
        hash: Hash,
        /// zstd's error.
        #[source]
        source: std::io::Error,
    },
}

impl ChunkError {
    /// The chunk the error concerns.
    pub fn hash(&self) -> &Hash {
        match self {
            ChunkError::HashMismatch { expected, .. } => expected,
            ChunkError::Empty { hash }
            | ChunkError::BadTag { hash, .. }
            | ChunkError::TooLarge { hash, .. }
            | ChunkError::Zstd { hash, .. } => hash,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_is_not_a_chunk_hash() {
        let data = b"short file";
        let chunks = chunk_bytes(data);
        assert_eq!(chunks.len(), 1);
        assert_ne!(content_hash(&chunks), chunks[0].hash);
        assert_ne!(content_hash(&chunks), Hash::of(data));
    }

    #[test]
    fn content_hash_covers_lengths_and_order() {
        let a = ChunkRef { hash: Hash::of(b"a"), len: 1 };
        let b = ChunkRef { hash: Hash::of(b"b"), len: 1 };
        let a_longer = ChunkRef { len: 2, ..a };
        assert_ne!(content_hash(&[a, b]), content_hash(&[b, a]));
        assert_ne!(content_hash(&[a]), content_hash(&[a_longer]));
        assert_ne!(content_hash(&[a]), content_hash(&[]));
        assert_eq!(content_hash(&[a, b]), content_hash(&[a, b]));
    }

    #[test]
    fn empty_file_has_a_fixed_content_hash() {
        assert_eq!(content_hash(&[]), Hash::from(blake3::Hasher::new_derive_key(CONTENT_HASH_CONTEXT).finalize()));
        assert_eq!(total_len(&[]), 0);
    }

    #[test]
    fn verify_accepts_match_and_names_mismatch() {
        let good = Hash::of(b"chunk");
        verify(&good, b"chunk").unwrap();
        match verify(&good, b"chunK") {
            Err(ChunkError::HashMismatch { expected, actual }) => {
                assert_eq!(expected, good);
                assert_eq!(actual, Hash::of(b"chunK"));
            }
            other => panic!("expected a hash mismatch, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_chunk() {
        let hash = Hash::of(b"x");
        let err = ChunkError::BadTag { hash, tag: 7 };
        assert_eq!(err.hash(), &hash);
        let text = err.to_string();
        assert!(text.contains(&hash.to_hex()), "{text}");
        assert!(text.contains("0x07"), "{text}");
    }
}
