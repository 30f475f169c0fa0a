//! The stored form of a chunk: what the content store keeps and what peers
//! send.
//!
//! ```text
//! stored form = tag:u8 payload
//!   tag 0 (TAG_RAW)   payload = the chunk's bytes
//!   tag 1 (TAG_ZSTD)  payload = a zstd frame that decompresses to them
//! ```
//!
//! [`encode`] compresses with zstd and keeps the result only when it is
//! smaller than the chunk; already-compressed assets (images, archives) stay
//! raw and cost only a copy to decode. It writes one frame that records its
//! decompressed size; [`decode`] also accepts several frames, or frames that
//! do not record their size, within the same limit. [`decode`] trusts nothing: it refuses
//! unknown tags, never produces (or allocates for) more than [`MAX_SIZE`]
//! bytes, and checks the result against the chunk's hash.

use std::cell::Cell;
use std::io::{self, Cursor};
use std::sync::{Condvar, Mutex, PoisonError};

use zstd::bulk::{Compressor, Decompressor};
use zstd::zstd_safe::zstd_sys::ZSTD_ErrorCode;

use super::{ChunkError, MAX_SIZE, verify};
use crate::hash::Hash;

/// Tag of a stored form whose payload is the chunk's bytes.
pub const TAG_RAW: u8 = 0;

/// Tag of a stored form whose payload is a zstd frame.
pub const TAG_ZSTD: u8 = 1;

/// zstd level for chunks.
///
/// Level 1. Measured with `benches/chunking.rs` on text-like 64 KiB chunks,
/// level 3 makes them about 8% smaller (0.248 of the input against 0.271)
/// for about 10% more compression time. Compression sits on the path of
/// every first sync of new content, and most asset bytes (images, fonts,
/// archives) do not compress and are stored raw whatever the level, so the
/// space level 3 would save is small.
pub const ZSTD_LEVEL: i32 = 1;

/// Chunks smaller than this are stored raw without trying: zstd's frame
/// header alone is 6 to 18 bytes, so there is next to nothing to win.
const MIN_COMPRESS: usize = 64;

thread_local! {
    /// Decompression contexts, kept per thread because creating one costs
    /// more than decompressing a small chunk; each is small.
    static DECOMPRESSOR: Cell<Option<Decompressor<'static>>> = const { Cell::new(None) };
}

/// Compression contexts, kept because creating one costs more than
/// compressing a small chunk, and shared by every thread: at most one per
/// CPU exists, and a thread that finds them all in use waits for one.
/// Compression is CPU-bound, so more at once would not finish sooner; kept
/// per thread instead, a daemon serving two peers from a dozen threads
/// held about 9 MiB of contexts.
static COMPRESSORS: Pool =
    Pool { state: Mutex::new(PoolState { idle: Vec::new(), made: 0 }), returned: Condvar::new() };

/// How many compression contexts [`COMPRESSORS`] makes at most: one per
/// CPU.
static MAX_COMPRESSORS: std::sync::LazyLock<usize> =
    std::sync::LazyLock::new(|| std::thread::available_parallelism().map_or(1, |n| n.get()));

struct Pool {
    state: Mutex<PoolState>,
    returned: Condvar,
}

struct PoolState {
    idle: Vec<Compressor<'static>>,
    /// Contexts that exist, idle or lent.
    made: usize,
}

/// A compression context lent by [`COMPRESSORS`]; given back when dropped.
struct Lent(Option<Compressor<'static>>);

impl Pool {
    /// A context: an idle one, a new one while there are fewer than CPUs,
    /// else the next one given back. None if zstd could not make one (out
    /// of memory): the chunk is then stored raw.
    fn lend(&'static self) -> Option<Lent> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(c) = state.idle.pop() {
                return Some(Lent(Some(c)));
            }
            if state.made < *MAX_COMPRESSORS {
                state.made += 1;
                drop(state);
                return match Compressor::new(ZSTD_LEVEL) {
                    Ok(c) => Some(Lent(Some(c))),
                    Err(_) => {
                        self.state.lock().unwrap_or_else(PoisonError::into_inner).made -= 1;
                        self.returned.notify_one();
                        None
                    }
                };
            }
            state = self.returned.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            COMPRESSORS.state.lock().unwrap_or_else(PoisonError::into_inner).idle.push(c);
            COMPRESSORS.returned.notify_one();
        }
    }
}

/// The stored form of the chunk `data`: zstd when that is smaller, raw
/// otherwise.
pub fn encode(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(data, &mut out);
    // Compression reserved zstd's worst case; give the rest back, since the
    // result may wait in a queue for a while.
    out.shrink_to_fit();
    out
}

/// [`encode`] into `out` (cleared first), so that a caller encoding many
/// chunks can reuse one buffer.
pub fn encode_into(data: &[u8], out: &mut Vec<u8>) {
    out.clear();
    if data.len() >= MIN_COMPRESS && compress_into(data, out) {
        return;
    }
    out.clear();
    out.reserve_exact(1 + data.len());
    out.push(TAG_RAW);
    out.extend_from_slice(data);
}

/// `raw`, a chunk's raw stored form ([`TAG_RAW`], then its bytes),
/// compressed when that makes it smaller: [`encode`] for a chunk already
/// read into that form, without copying the bytes of one that does not
/// shrink.
pub fn compressed(raw: Vec<u8>) -> Vec<u8> {
    debug_assert_eq!(raw.first(), Some(&TAG_RAW), "not a raw stored form");
    let mut out = Vec::new();
    if raw.len() > MIN_COMPRESS && compress_into(&raw[1..], &mut out) {
        out.shrink_to_fit();
        return out;
    }
    raw
}

/// Writes the zstd stored form of `data` into the empty `out`; false when
/// compression failed or did not shrink the chunk.
fn compress_into(data: &[u8], out: &mut Vec<u8>) -> bool {
    // Without a context (out of memory) the chunk is simply stored raw.
    let Some(mut lent) = COMPRESSORS.lend() else {
        return false;
    };
    let compressor = lent.0.as_mut().expect("a lent context is held until dropped");
    // Room for zstd's worst case, so it never fails for lack of space.
    out.reserve(1 + zstd::compress_bound(data.len()));
    out.push(TAG_ZSTD);
    // The cursor makes zstd write after the tag, into spare capacity.
    let mut payload = Cursor::new(&mut *out);
    payload.set_position(1);
    let result = compressor.compress_to_buffer(data, &mut payload);
    drop(lent);
    matches!(result, Ok(n) if n < data.len())
}

/// The chunk named `expected`, from its stored form.
pub fn decode(expected: &Hash, stored: &[u8]) -> Result<Vec<u8>, ChunkError> {
    let mut out = Vec::new();
    decode_into(expected, stored, &mut out)?;
    Ok(out)
}

/// [`decode`], borrowing the bytes of a raw stored form rather than
/// copying them (a received chunk is checked and then written once).
pub fn decode_borrowed<'s>(expected: &Hash, stored: &'s [u8]) -> Result<std::borrow::Cow<'s, [u8]>, ChunkError> {
    match stored.split_first() {
        Some((&TAG_RAW, payload)) => {
            let payload = raw_payload(*expected, payload)?;
            verify(expected, payload)?;
            Ok(std::borrow::Cow::Borrowed(payload))
        }
        _ => decode(expected, stored).map(std::borrow::Cow::Owned),
    }
}

/// [`decode`] into `out` (cleared first). On error `out` is left empty.
pub fn decode_into(expected: &Hash, stored: &[u8], out: &mut Vec<u8>) -> Result<(), ChunkError> {
    out.clear();
    let result = decode_unchecked(expected, stored, out).and_then(|()| verify(expected, out));
    if result.is_err() {
        out.clear();
    }
    result
}

/// Decodes the payload into `out` without checking the hash.
fn decode_unchecked(hash: &Hash, stored: &[u8], out: &mut Vec<u8>) -> Result<(), ChunkError> {
    let hash = *hash;
    let Some((&tag, payload)) = stored.split_first() else {
        return Err(ChunkError::Empty { hash });
    };
    match tag {
        TAG_RAW => {
            out.extend_from_slice(raw_payload(hash, payload)?);
            Ok(())
        }
        TAG_ZSTD => decompress_into(hash, payload, out),
        tag => Err(ChunkError::BadTag { hash, tag }),
    }
}

/// The payload of a raw stored form, if no longer than a chunk may be.
fn raw_payload(hash: Hash, payload: &[u8]) -> Result<&[u8], ChunkError> {
    if payload.len() > MAX_SIZE as usize {
        return Err(ChunkError::TooLarge { hash, size: payload.len() as u64 });
    }
    Ok(payload)
}

/// Decompresses `payload` into the empty `out`, producing at most
/// [`MAX_SIZE`] bytes.
fn decompress_into(hash: Hash, payload: &[u8], out: &mut Vec<u8>) -> Result<(), ChunkError> {
    const MAX: usize = MAX_SIZE as usize;
    let too_large = |size: u64| ChunkError::TooLarge { hash, size };
    let zstd_error = |source: io::Error| ChunkError::Zstd { hash, source };

    // `upper_bound` is exact when every frame records its size, as frames
    // from `encode` do; zstd then checks each frame against its recorded
    // size, so the output cannot exceed it. Otherwise, decompress into a
    // slice of exactly MAX_SIZE bytes, which zstd cannot write past.
    let known_size = Decompressor::upper_bound(payload);
    if let Some(size) = known_size
        && size > MAX
    {
        return Err(too_large(size as u64));
    }
    let mut decompressor = match DECOMPRESSOR.take() {
        Some(decompressor) => decompressor,
        None => Decompressor::new().map_err(zstd_error)?,
    };
    let result = match known_size {
        Some(size) => {
            out.reserve_exact(size);
            decompressor.decompress_to_buffer(payload, out)
        }
        None => {
            out.resize(MAX, 0);
            let result = decompressor.decompress_to_buffer(payload, &mut out[..]);
            out.truncate(*result.as_ref().unwrap_or(&0));
            result
        }
    };
    DECOMPRESSOR.set(Some(decompressor));
    match result {
        Ok(_) if out.len() > MAX => Err(too_large(out.len() as u64)),
        Ok(_) => Ok(()),
        Err(e) if is_dst_too_small(&e) => Err(too_large(MAX as u64 + 1)),
        Err(e) => Err(zstd_error(e)),
    }
}

/// Whether zstd stopped because the output buffer was full.
fn is_dst_too_small(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<zstd::Error>())
        .is_some_and(|z| z.is(ZSTD_ErrorCode::ZSTD_error_dstSize_tooSmall))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::chunk::testdata::random_bytes;

    fn text(len: usize) -> Vec<u8> {
        let line = b"body { margin: 0; padding: 0; font-family: sans-serif; }\n";
        line.iter().copied().cycle().take(len).collect()
    }

    #[test]
    fn threads_share_at_most_one_compression_context_per_cpu() {
        let threads: Vec<_> = (0..4 * *MAX_COMPRESSORS + 4)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..20 {
                        let data = text(4096 + 64 * t + i);
                        let stored = encode(&data);
                        assert_eq!(stored[0], TAG_ZSTD);
                        assert_eq!(decode(&Hash::of(&data), &stored).unwrap(), data);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let state = COMPRESSORS.state.lock().unwrap();
        assert!(state.made <= *MAX_COMPRESSORS, "{} contexts for {} CPUs", state.made, *MAX_COMPRESSORS);
        assert!(state.made >= 1);
    }

    #[test]
    fn compressible_chunk_is_stored_compressed() {
        let data = text(64 * 1024);
        let stored = encode(&data);
        assert_eq!(stored[0], TAG_ZSTD);
        assert!(stored.len() < data.len() / 10);
        assert_eq!(decode(&Hash::of(&data), &stored).unwrap(), data);
    }

    #[test]
    fn incompressible_chunk_is_stored_raw() {
        let data = random_bytes(1, 64 * 1024);
        let stored = encode(&data);
        assert_eq!(stored[0], TAG_RAW);
        assert_eq!(&stored[1..], &data[..]);
        assert_eq!(decode(&Hash::of(&data), &stored).unwrap(), data);
    }

    #[test]
    fn tiny_and_empty_chunks_round_trip() {
        for data in [&b""[..], b"a", &[0; 63], &[0; 64], &[0; 65]] {
            let stored = encode(data);
            assert_eq!(decode(&Hash::of(data), &stored).unwrap(), data);
        }
        assert_eq!(encode(b""), [TAG_RAW]);
    }

    #[test]
    fn largest_chunk_round_trips() {
        for data in [vec![7; MAX_SIZE as usize], random_bytes(2, MAX_SIZE as usize)] {
            let stored = encode(&data);
            assert_eq!(decode(&Hash::of(&data), &stored).unwrap(), data);
        }
    }

    #[test]
    fn decode_into_reuses_and_clears_buffer() {
        let data = text(10_000);
        let hash = Hash::of(&data);
        let mut out = vec![1; 3 * MAX_SIZE as usize];
        decode_into(&hash, &encode(&data), &mut out).unwrap();
        assert_eq!(out, data);
        let mut bad = encode(&data);
        bad.truncate(bad.len() - 1);
        assert!(decode_into(&hash, &bad, &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn empty_stored_form_is_refused() {
        let hash = Hash::of(b"x");
        assert!(matches!(decode(&hash, &[]), Err(ChunkError::Empty { hash: h }) if h == hash));
    }

    #[test]
    fn unknown_tag_is_refused() {
        let hash = Hash::of(b"x");
        let err = decode(&hash, &[2, b'x']).unwrap_err();
        assert!(matches!(err, ChunkError::BadTag { tag: 2, .. }), "{err:?}");
        assert_eq!(err.hash(), &hash);
    }

    #[test]
    fn raw_payload_over_max_size_is_refused() {
        let data = vec![0; MAX_SIZE as usize + 1];
        let mut stored = vec![TAG_RAW];
        stored.extend_from_slice(&data);
        for err in
            [decode(&Hash::of(&data), &stored).unwrap_err(), decode_borrowed(&Hash::of(&data), &stored).unwrap_err()]
        {
            assert!(matches!(err, ChunkError::TooLarge { size, .. } if size == u64::from(MAX_SIZE) + 1), "{err:?}");
        }
    }

    #[test]
    fn zstd_frame_declaring_too_much_is_refused() {
        // A frame that records its size: refused before decompressing.
        let data = vec![0; 64 << 20];
        let mut stored = vec![TAG_ZSTD];
        stored.extend_from_slice(&zstd::bulk::compress(&data, 1).unwrap());
        let err = decode(&Hash::of(&data), &stored).unwrap_err();
        assert!(matches!(err, ChunkError::TooLarge { size, .. } if size == 64 << 20), "{err:?}");
    }

    #[test]
    fn zstd_stream_without_size_is_bounded() {
        // A streamed frame does not record its size; decoding must stop at
        // MAX_SIZE rather than follow it.
        let data = vec![0; MAX_SIZE as usize + 1];
        let mut stored = vec![TAG_ZSTD];
        stored.extend_from_slice(&zstd::stream::encode_all(&data[..], 1).unwrap());
        assert_eq!(Decompressor::upper_bound(&stored[1..]), None);
        let err = decode(&Hash::of(&data), &stored).unwrap_err();
        assert!(matches!(err, ChunkError::TooLarge { .. }), "{err:?}");

        // The same kind of frame within the limit decodes.
        let data = text(100_000);
        let mut stored = vec![TAG_ZSTD];
        stored.extend_from_slice(&zstd::stream::encode_all(&data[..], 1).unwrap());
        assert_eq!(decode(&Hash::of(&data), &stored).unwrap(), data);
    }

    #[test]
    fn zstd_garbage_is_refused() {
        let hash = Hash::of(b"x");
        let err = decode(&hash, &[TAG_ZSTD, 1, 2, 3, 4, 5, 6, 7, 8]).unwrap_err();
        assert!(matches!(err, ChunkError::Zstd { .. }), "{err:?}");
        assert!(err.to_string().contains(&hash.to_hex()));

        // A valid frame cut short.
        let data = text(50_000);
        let mut stored = encode(&data);
        stored.truncate(stored.len() / 2);
        let err = decode(&Hash::of(&data), &stored).unwrap_err();
        assert!(matches!(err, ChunkError::Zstd { .. }), "{err:?}");
    }

    #[test]
    fn damaged_content_fails_verification() {
        let data = random_bytes(3, 1000);
        let hash = Hash::of(&data);
        let mut stored = encode(&data);
        stored[500] ^= 1;
        assert!(matches!(
            decode(&hash, &stored),
            Err(ChunkError::HashMismatch { expected, .. }) if expected == hash
        ));
        assert!(matches!(
            decode_borrowed(&hash, &stored),
            Err(ChunkError::HashMismatch { expected, .. }) if expected == hash
        ));

        // Well-formed zstd of other bytes.
        let stored = encode(&text(5000));
        assert!(matches!(decode(&hash, &stored), Err(ChunkError::HashMismatch { .. })));
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(
            data in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..5000),
                prop::collection::vec(0u8..4, 0..200_000),
            ]
        ) {
            let stored = encode(&data);
            prop_assert!(stored.len() <= data.len() + 1);
            // From the raw form, the same stored form.
            let mut raw = vec![TAG_RAW];
            raw.extend_from_slice(&data);
            prop_assert_eq!(&compressed(raw), &stored);
            prop_assert_eq!(&*decode_borrowed(&Hash::of(&data), &stored).unwrap(), &data[..]);
            prop_assert_eq!(decode(&Hash::of(&data), &stored).unwrap(), data);
        }

        #[test]
        fn decode_never_panics(stored in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&Hash::of(b""), &stored);
            let mut zstd = vec![TAG_ZSTD];
            zstd.extend_from_slice(&stored);
            let _ = decode(&Hash::of(b""), &zstd);
        }

        #[test]
        fn damaged_frame_never_panics(
            seed in any::<u64>(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut data = text(30_000);
            data.extend_from_slice(&random_bytes(seed, 2000));
            let hash = Hash::of(&data);
            let mut stored = encode(&data);
            prop_assert_eq!(stored[0], TAG_ZSTD);
            let intact = stored.clone();
            for (at, mask) in flips {
                let i = 1 + at.index(stored.len() - 1);
                stored[i] ^= mask;
            }
            // Two flips of one byte with one mask undo each other.
            if stored != intact {
                prop_assert!(decode(&hash, &stored).is_err());
            }
            stored.truncate(cut.index(stored.len()));
            prop_assert!(decode(&hash, &stored).is_err());
        }
    }
}
