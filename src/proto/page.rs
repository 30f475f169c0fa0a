//! Cutting a directory listing into `Dir` pages.
//!
//! A page ends at [`MAX_ENTRIES_PER_PAGE`] entries or when the next entry
//! would take its encoded entries over [`PAGE_BUDGET`] bytes, whichever
//! comes first, so that every `Dir` frame fits in [`super::MAX_FRAME`]
//! whatever the entries hold. The requester asks for the next page with
//! the last name it got as `GetDir.after`: a cursor rather than a page
//! number, so that a directory changing between two requests neither
//! skips nor repeats the entries that did not change.

use super::limits::{MAX_ENTRIES_PER_PAGE, PAGE_BUDGET};
use super::message::{Message, WireEntry};

/// The entries of one `Dir` page, as a server collects them.
#[derive(Debug, Default)]
pub struct PageBuilder {
    entries: Vec<WireEntry>,
    bytes: usize,
}

impl PageBuilder {
    /// An empty page.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `entry` (the next in name order) and returns `None`, or gives it
    /// back when the page is full; it then starts the next page. An empty
    /// page takes any entry.
    #[must_use = "an entry given back must start the next page"]
    pub fn push(&mut self, entry: WireEntry) -> Option<WireEntry> {
        let size = postcard::experimental::serialized_size(&entry).expect("sizing cannot fail");
        let full = self.entries.len() >= MAX_ENTRIES_PER_PAGE || self.bytes + size > PAGE_BUDGET;
        if full && !self.entries.is_empty() {
            return Some(entry);
        }
        self.bytes += size;
        self.entries.push(entry);
        None
    }

    /// Entries on the page.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the page holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The name a `GetDir` for the next page gives as `after`.
    pub fn last_name(&self) -> Option<&[u8]> {
        self.entries.last().map(|e| e.name.as_slice())
    }

    /// The `Dir` message for this page.
    pub fn finish(self, group: String, path: Vec<u8>, last_page: bool) -> Message {
        Message::Dir { group, path, last_page, entries: self.entries }
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::{FRAME_HEADER_LEN, decode_frame, encode_frame};
    use super::super::limits::*;
    use super::super::testutil::file_entry;
    use super::*;
    use crate::tree::Body;
    use crate::tree::Version;

    /// The largest entry validation lets through: longest name, a full
    /// version vector of longest host names, a full inline chunk list.
    fn largest_entry(name: &[u8]) -> WireEntry {
        let mut e = file_entry(name, MAX_INLINE_CHUNKS, crate::chunk::MAX_SIZE);
        e.version = Version(
            (0..MAX_VERSION_HOSTS).map(|i| (format!("{i:04}{}", "h".repeat(MAX_HOST_LEN - 4)), u64::MAX)).collect(),
        );
        e
    }

    #[test]
    fn the_largest_valid_entry_fits_a_page_with_the_longest_path() {
        let name = vec![b'n'; MAX_NAME_LEN];
        let e = largest_entry(&name);
        let size = postcard::experimental::serialized_size(&e).unwrap();
        assert!(size < PAGE_BUDGET / 8, "{size}");
        let mut page = PageBuilder::new();
        assert!(page.push(e).is_none());
        let path = [b"/".as_slice(), &vec![b'p'; MAX_NAME_LEN]].concat().repeat(MAX_PATH_LEN / (MAX_NAME_LEN + 1));
        let msg = page.finish("g".repeat(MAX_GROUP_LEN), path, true);
        let frame = encode_frame(&msg);
        assert!(frame.len() - FRAME_HEADER_LEN <= MAX_FRAME);
        assert_eq!(decode_frame(&frame).unwrap().0, msg);
    }

    #[test]
    fn pages_are_cut_by_size_before_they_overflow_a_frame() {
        let mut page = PageBuilder::new();
        let mut n = 0usize;
        let overflow = loop {
            let name = format!("f{n:06}");
            match page.push(largest_entry(name.as_bytes())) {
                None => n += 1,
                Some(e) => break e,
            }
        };
        assert_eq!(overflow.name, format!("f{n:06}").as_bytes());
        assert!(n > 1 && n < MAX_ENTRIES_PER_PAGE);
        let frame = encode_frame(&page.finish("app".into(), b"/srv".to_vec(), false));
        assert!(frame.len() - FRAME_HEADER_LEN <= MAX_FRAME);
        decode_frame(&frame).unwrap();
    }

    #[test]
    fn pages_are_cut_by_count() {
        let mut page = PageBuilder::new();
        let small = |i: usize| WireEntry {
            body: Body::Dir { tree: crate::hash::Hash::of(b"") },
            meta: Default::default(),
            ..file_entry(format!("d{i:05}").as_bytes(), 0, 1)
        };
        for i in 0..MAX_ENTRIES_PER_PAGE {
            assert!(page.push(small(i)).is_none());
        }
        assert!(page.push(small(MAX_ENTRIES_PER_PAGE)).is_some());
        assert_eq!(page.last_name(), Some(format!("d{:05}", MAX_ENTRIES_PER_PAGE - 1).as_bytes()));
        let frame = encode_frame(&page.finish("app".into(), b"/srv".to_vec(), false));
        // A page of small entries is far below the frame limit: about 150
        // bytes per entry, as limits.rs says.
        assert!(frame.len() < 200 * MAX_ENTRIES_PER_PAGE, "{}", frame.len());
        decode_frame(&frame).unwrap();
    }
}
