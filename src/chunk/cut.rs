//! Cutting content into chunks and naming them.
//!
//! Three entry points cut the same way and give the same chunk list for the
//! same bytes: [`chunk_bytes`] (a whole file in memory), [`chunk_reader`]
//! (any reader, in a window of [`STREAM_WINDOW`] bytes) and [`chunk_file`]
//! (a file, read whole when small, streamed when large). They agree because
//! FastCDC decides a cut from at most the next [`MAX_SIZE`] bytes: the
//! streaming window always holds that many, or everything up to the end of
//! the input, when it asks for a cut.
//!
//! Chunk bytes are hashed where they lie (in the caller's slice or the
//! window) and handed to the caller's sink as a borrowed slice; nothing is
//! allocated per chunk.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read};

use fastcdc::v2020::{self, Normalization};

use super::{AVG_SIZE, ChunkRef, MAX_SIZE, MIN_SIZE};

/// FastCDC normalization level (FastCDC 2016 paper, section 4.4; level 1 is
/// also the fastcdc crate's default). Level 1 narrows the spread of chunk
/// sizes around [`AVG_SIZE`] while leaving almost every cut to the content
/// rather than to [`MAX_SIZE`]; higher levels narrow it further at some cost
/// in deduplication.
const NORMALIZATION: Normalization = Normalization::Level1;

/// The read buffer of [`chunk_reader`] and [`chunk_file`].
///
/// Four times [`MAX_SIZE`]: the window only has to hold [`MAX_SIZE`] bytes
/// ahead of the next cut, and each refill first moves the unfinished tail
/// (less than [`MAX_SIZE`]) to the front, so a larger window means fewer,
/// larger reads and fewer bytes moved twice. A file smaller than the window
/// is read whole, in one `read`.
///
/// Files up to 8 MiB were also tried read whole into a buffer of their own
/// size: that was no faster than streaming them through this window (whose
/// bytes are still in cache when they are hashed), and it would keep 8 MiB
/// per chunking thread instead of 1 MiB.
pub const STREAM_WINDOW: usize = 4 * MAX_SIZE as usize;

/// FastCDC cut-point search with its masks selected once.
#[derive(Clone, Copy)]
struct Cutter {
    mask_s: u64,
    mask_l: u64,
}

impl Cutter {
    fn new() -> Self {
        let (mask_s, mask_l) = v2020::select_masks(AVG_SIZE as usize, NORMALIZATION);
        Cutter { mask_s, mask_l }
    }

    /// Length of the chunk that starts at `window[0]`.
    ///
    /// `window` must hold at least [`MAX_SIZE`] bytes, or all that is left of
    /// the input; then the answer is the one FastCDC would give with the
    /// whole input in view. Zero only for an empty window.
    #[inline]
    fn next_len(&self, window: &[u8]) -> usize {
        // The same call `v2020::FastCDC` makes with the default gear table
        // (seed 0); see the `matches_fastcdc_iterator` test.
        let (_gear, len) = v2020::cut(
            window,
            MIN_SIZE as usize,
            AVG_SIZE as usize,
            MAX_SIZE as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        len
    }
}

/// The chunks of `data` with their names, in order; see [`chunks`].
pub struct Chunks<'a> {
    rest: &'a [u8],
    cutter: Cutter,
}

impl<'a> Iterator for Chunks<'a> {
    type Item = (ChunkRef, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let (chunk, rest) = self.rest.split_at(self.cutter.next_len(self.rest));
        self.rest = rest;
        Some((ChunkRef::of(chunk), chunk))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let len = self.rest.len();
        (len.div_ceil(MAX_SIZE as usize), Some(len.div_ceil(MIN_SIZE as usize)))
    }
}

/// Cuts `data` (a whole file in memory) into chunks, yielding each chunk's
/// reference and bytes.
pub fn chunks(data: &[u8]) -> Chunks<'_> {
    Chunks { rest: data, cutter: Cutter::new() }
}

/// The chunk list of `data`, a whole file in memory. Empty for empty input.
pub fn chunk_bytes(data: &[u8]) -> Vec<ChunkRef> {
    let mut list = Vec::with_capacity(data.len() / AVG_SIZE as usize + 1);
    list.extend(chunks(data).map(|(chunk, _)| chunk));
    list
}

/// Cuts everything `r` yields into chunks, calling `sink` with each chunk's
/// reference and bytes in order, and returns the chunk list.
///
/// Memory stays at one [`STREAM_WINDOW`] buffer, reused across calls on the
/// same thread, plus the chunk list (36 bytes per chunk) whatever the
/// input's size. The chunk list is the one [`chunk_bytes`] gives for the
/// same bytes. An error from `r` or from `sink` stops the work and is
/// returned as it is; `Interrupted` reads are retried.
pub fn chunk_reader<R: Read>(
    mut r: R,
    sink: impl FnMut(&ChunkRef, &[u8]) -> io::Result<()>,
) -> io::Result<Vec<ChunkRef>> {
    let mut list = Vec::new();
    with_window(|window| chunk_stream(&mut r, window, sink, &mut list))?;
    Ok(list)
}

/// Cuts a file into chunks like [`chunk_reader`]; a file smaller than
/// [`STREAM_WINDOW`] is read whole in one `read`, a larger one streams.
///
/// `size_hint` (the file's size when it was last looked at) only sizes the
/// chunk list up front. The result is the chunk list of the bytes actually
/// read: a file that grew or shrank since the hint was taken is still cut
/// correctly (whether such a file is consistent is the caller's business).
pub fn chunk_file(
    file: &mut File,
    size_hint: u64,
    sink: impl FnMut(&ChunkRef, &[u8]) -> io::Result<()>,
) -> io::Result<Vec<ChunkRef>> {
    // Trust the hint only as far as a modest reservation: a chunk list
    // costs 36 bytes per chunk, and 4096 chunks is a 256 MiB file or more.
    let expected_chunks = (size_hint / u64::from(AVG_SIZE) + 1).min(4096) as usize;
    let mut list = Vec::with_capacity(expected_chunks);
    with_window(|window| chunk_stream(file, window, sink, &mut list))?;
    Ok(list)
}

thread_local! {
    /// The streaming window, kept between calls so that chunking many files
    /// allocates once per thread.
    static WINDOW: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` with this thread's [`STREAM_WINDOW`]-byte window.
fn with_window<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    // Taken out of the cell rather than borrowed, so that a sink that
    // chunks another file on this thread gets a window of its own.
    let mut window = WINDOW.take();
    window.resize(STREAM_WINDOW, 0);
    let result = f(&mut window);
    WINDOW.set(window);
    result
}

/// The streaming loop behind [`chunk_reader`] and [`chunk_file`]: reads
/// into `window` (at least [`MAX_SIZE`] bytes) and cuts chunks from it,
/// moving the unfinished tail to the front before each refill.
fn chunk_stream<R: Read + ?Sized>(
    r: &mut R,
    window: &mut [u8],
    mut sink: impl FnMut(&ChunkRef, &[u8]) -> io::Result<()>,
    list: &mut Vec<ChunkRef>,
) -> io::Result<()> {
    const MAX: usize = MAX_SIZE as usize;
    assert!(window.len() >= MAX, "chunking window smaller than MAX_SIZE");
    let cutter = Cutter::new();
    // window[start..end] holds read bytes not yet cut.
    let (mut start, mut end, mut eof) = (0, 0, false);
    loop {
        if !eof && end - start < MAX {
            window.copy_within(start..end, 0);
            end -= start;
            start = 0;
            while end < window.len() {
                match r.read(&mut window[end..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => end += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        // Here either the window is full (so at least MAX bytes are ahead)
        // or the input has ended; both let FastCDC cut as it would on the
        // whole input.
        if start == end {
            return Ok(());
        }
        let len = cutter.next_len(&window[start..end]);
        let chunk = &window[start..start + len];
        let chunk_ref = ChunkRef::of(chunk);
        sink(&chunk_ref, chunk)?;
        list.push(chunk_ref);
        start += len;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::fmt::Write as _;
    use std::io::{Seek, Write as _};

    use proptest::prelude::*;

    use super::*;
    use crate::chunk::testdata::{mixed_bytes, random_bytes};
    use crate::chunk::{content_hash, total_len};

    /// Checks the laws every chunk list of `data` obeys.
    fn check_chunk_list(data: &[u8], list: &[ChunkRef]) {
        assert_eq!(total_len(list), data.len() as u64);
        assert_eq!(list.is_empty(), data.is_empty());
        let mut offset = 0;
        for (i, chunk) in list.iter().enumerate() {
            let last = i + 1 == list.len();
            assert!(chunk.len > 0);
            assert!(chunk.len <= MAX_SIZE, "chunk {i} is {} bytes", chunk.len);
            assert!(last || chunk.len >= MIN_SIZE, "chunk {i} of {} is {} bytes", list.len(), chunk.len);
            let bytes = &data[offset..offset + chunk.len as usize];
            assert_eq!(chunk.hash, crate::hash::Hash::of(bytes));
            offset += chunk.len as usize;
        }
    }

    /// A reader that hands out `data` in reads of varying, often tiny, sizes
    /// and is interrupted now and then.
    struct JerkyReader<'a> {
        data: &'a [u8],
        sizes: Vec<usize>,
        call: usize,
    }

    impl Read for JerkyReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.call += 1;
            if self.call % 7 == 3 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let size = self.sizes[self.call % self.sizes.len()];
            let n = size.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// Runs `chunk_stream` with a window of `window_len` bytes, checking the
    /// bytes the sink sees against the chunk list.
    fn stream(r: &mut impl Read, window_len: usize) -> (Vec<ChunkRef>, Vec<u8>) {
        let mut window = vec![0; window_len];
        let mut list = Vec::new();
        let mut seen = Vec::new();
        chunk_stream(
            r,
            &mut window,
            |chunk, bytes| {
                assert_eq!(chunk.len as usize, bytes.len());
                assert_eq!(chunk.hash, crate::hash::Hash::of(bytes));
                seen.extend_from_slice(bytes);
                Ok(())
            },
            &mut list,
        )
        .unwrap();
        (list, seen)
    }

    #[test]
    fn empty_input_has_no_chunks() {
        assert!(chunk_bytes(&[]).is_empty());
        assert!(chunk_reader(&[][..], |_, _| Ok(())).unwrap().is_empty());
        let mut file = tempfile::tempfile().unwrap();
        assert!(chunk_file(&mut file, 0, |_, _| Ok(())).unwrap().is_empty());
    }

    #[test]
    fn small_input_is_one_chunk() {
        for len in [1, 100, MIN_SIZE as usize - 1, MIN_SIZE as usize] {
            let data = random_bytes(len as u64, len);
            let list = chunk_bytes(&data);
            assert_eq!(list.len(), 1, "{len} bytes");
            check_chunk_list(&data, &list);
        }
    }

    #[test]
    fn random_data_respects_sizes() {
        let data = random_bytes(1, 8 << 20);
        let list = chunk_bytes(&data);
        check_chunk_list(&data, &list);
        // The mean chunk on random data is near AVG_SIZE (about 80 KiB with
        // normalization level 1); a far-off mean means the masks are wrong.
        let mean = data.len() / list.len();
        assert!((56 << 10..112 << 10).contains(&mean), "mean chunk {mean} bytes");
    }

    #[test]
    fn uniform_data_is_cut_at_max_size() {
        let data = vec![0; 3 * MAX_SIZE as usize + 5];
        let list = chunk_bytes(&data);
        check_chunk_list(&data, &list);
        let lens: Vec<u32> = list.iter().map(|c| c.len).collect();
        assert_eq!(lens, [MAX_SIZE, MAX_SIZE, MAX_SIZE, 5]);
        assert!(list[..3].iter().all(|c| c.hash == list[0].hash));
    }

    #[test]
    fn matches_fastcdc_iterator() {
        let data = mixed_bytes(2, 6 << 20);
        let ours: Vec<(usize, u32)> = chunks(&data)
            .scan(0, |offset, (chunk, _)| {
                let at = *offset;
                *offset += chunk.len as usize;
                Some((at, chunk.len))
            })
            .collect();
        let theirs: Vec<(usize, u32)> =
            v2020::FastCDC::with_level(&data, MIN_SIZE as usize, AVG_SIZE as usize, MAX_SIZE as usize, NORMALIZATION)
                .map(|c| (c.offset, c.length as u32))
                .collect();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn one_byte_edit_changes_one_or_two_chunks() {
        let data = random_bytes(3, 8 << 20);
        let before = chunk_bytes(&data);
        let old: HashSet<_> = before.iter().map(|c| c.hash).collect();

        let mut edited = data.clone();
        edited[data.len() / 2] ^= 0x5a;
        let after = chunk_bytes(&edited);
        check_chunk_list(&edited, &after);
        let new = after.iter().filter(|c| !old.contains(&c.hash)).count();
        assert!((1..=2).contains(&new), "{new} new chunks after an edit");

        let mut inserted = data.clone();
        inserted.insert(data.len() / 2, 0x5a);
        let after = chunk_bytes(&inserted);
        check_chunk_list(&inserted, &after);
        let new = after.iter().filter(|c| !old.contains(&c.hash)).count();
        assert!((1..=2).contains(&new), "{new} new chunks after an insertion");
    }

    #[test]
    fn streaming_with_smallest_window_agrees() {
        let data = mixed_bytes(4, 3 << 20);
        let expected = chunk_bytes(&data);
        let (list, seen) = stream(&mut &data[..], MAX_SIZE as usize);
        assert_eq!(list, expected);
        assert_eq!(seen, data);
    }

    #[test]
    fn chunk_file_agrees_whole_and_streamed() {
        let data = mixed_bytes(5, 10 << 20);
        let expected = chunk_bytes(&data);
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&data).unwrap();
        // The right size hint, and wrong ones.
        for hint in [data.len() as u64, 1 << 20, 0, 1 << 40] {
            file.rewind().unwrap();
            let mut seen = Vec::new();
            let list = chunk_file(&mut file, hint, |_, bytes| {
                seen.extend_from_slice(bytes);
                Ok(())
            })
            .unwrap();
            assert_eq!(list, expected, "hint {hint}");
            assert_eq!(seen, data, "hint {hint}");
        }
    }

    #[test]
    fn input_smaller_than_window_is_read_in_one_call() {
        struct Counting<'a>(&'a [u8], usize);
        impl Read for Counting<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.1 += 1;
                self.0.read(buf)
            }
        }
        let data = random_bytes(6, STREAM_WINDOW - 1);
        let mut reader = Counting(&data, 0);
        let list = chunk_reader(&mut reader, |_, _| Ok(())).unwrap();
        assert_eq!(list, chunk_bytes(&data));
        assert_eq!(reader.1, 2, "one read for the data, one for its end");
    }

    #[test]
    fn sink_error_stops_chunking() {
        let data = random_bytes(7, 2 << 20);
        let mut calls = 0;
        let err = chunk_reader(&data[..], |_, _| {
            calls += 1;
            if calls == 3 { Err(io::Error::other("store full")) } else { Ok(()) }
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "store full");
        assert_eq!(calls, 3);
    }

    #[test]
    fn read_error_is_returned() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::PermissionDenied, "denied"))
            }
        }
        let err = chunk_reader(Failing, |_, _| Ok(())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn streaming_agrees_with_whole(
            seed in any::<u64>(),
            len in prop_oneof![0usize..70_000, 0usize..(3 << 20)],
            mixed in any::<bool>(),
            sizes in prop::collection::vec(
                prop_oneof![1usize..64, 1usize..70_000, Just(usize::MAX)], 1..8),
            window_extra in prop_oneof![Just(0usize), 0usize..(1 << 20)],
        ) {
            let data = if mixed { mixed_bytes(seed, len) } else { random_bytes(seed, len) };
            let expected = chunk_bytes(&data);
            check_chunk_list(&data, &expected);

            let mut reader = JerkyReader { data: &data, sizes, call: 0 };
            let (list, seen) = stream(&mut reader, MAX_SIZE as usize + window_extra);
            prop_assert_eq!(&list, &expected);
            prop_assert_eq!(seen, data.clone());

            let list = chunk_reader(&data[..], |_, _| Ok(())).unwrap();
            prop_assert_eq!(list, expected);
        }
    }

    /// Pins the cut points, chunk hashes and content hash of seeded data.
    /// If this fails after a dependency upgrade, the upgrade changed
    /// snapsync's content addressing: do not accept the new snapshot, keep
    /// the old behaviour (or bump the format version deliberately).
    #[test]
    fn chunk_boundaries_are_stable() {
        let data = random_bytes(0x5eed_c0de, 2 << 20);
        let list = chunk_bytes(&data);
        let mut out = String::new();
        writeln!(out, "input: xorshift64* seed 0x5eedc0de, {} bytes", data.len()).unwrap();
        writeln!(out, "content_hash: {}", content_hash(&list)).unwrap();
        writeln!(out, "chunks: {}", list.len()).unwrap();
        let mut offset = 0u64;
        for chunk in &list {
            writeln!(out, "{offset:>8} {:>6} {}", chunk.len, chunk.hash).unwrap();
            offset += u64::from(chunk.len);
        }
        insta::assert_snapshot!(out);

        // The forced cuts at MAX_SIZE, on data with long uniform runs.
        let data = mixed_bytes(0x5eed_c0de, 2 << 20);
        let list = chunk_bytes(&data);
        let mut out = String::new();
        writeln!(out, "input: mixed, seed 0x5eedc0de, {} bytes", data.len()).unwrap();
        writeln!(out, "content_hash: {}", content_hash(&list)).unwrap();
        for chunk in &list {
            writeln!(out, "{:>6} {}", chunk.len, chunk.hash.short()).unwrap();
        }
        insta::assert_snapshot!("mixed", out);
    }
}
