//! Size and count limits of the peer protocol.
//!
//! Every length or count a peer sends is bounded by one of these constants,
//! and the decoder refuses a message that exceeds one before it allocates
//! for it (see `bounded.rs`). They are part of the protocol version
//! ([`super::PROTOCOL_VERSION`]): a peer MUST NOT send more, and raising
//! one needs a new protocol version, since an older peer refuses what
//! exceeds its limits. docs/protocol.md has the same table.
//!
//! The time limits at the end bound every wait on a peer (SPEC §6: a peer
//! that stalls costs a bounded time and never blocks the node's other
//! work). The budgets after them bound what a receiver keeps of one
//! reconcile; they are local choices, not wire rules, and live here so the
//! whole table of limits is in one place.

use std::time::Duration;

use crate::chunk;
use crate::tree;

/// Largest frame body (the postcard-encoded message after the 4-byte length).
///
/// 4 MiB holds the largest chunk (256 KiB stored, [`chunk::MAX_SIZE`] plus
/// the tag byte) many times over, a page of [`MAX_ENTRIES_PER_PAGE`] typical
/// entries (about 150 bytes each without chunk lists), or a page of
/// [`MAX_CHUNKS_PER_PAGE`] chunk references. It is small enough that a
/// receiver can hold one whole frame per open stream: what does not fit in
/// one frame (a large directory, a large file's chunk list) is paged.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

/// Extra memory, beyond the frame itself, that decoding one frame may use
/// for the lists in it (charged as element count times element size).
///
/// postcard encodes a list element in as little as 2 bytes (an empty host
/// name and a zero counter) that take 32 bytes in memory, so without a
/// budget a 4 MiB frame could decode to 64 MiB. Honest frames use about
/// twice their size; 16 MiB leaves room for that and caps a hostile frame
/// at 5 times [`MAX_FRAME`].
pub const MAX_DECODED_LISTS: usize = 16 * 1024 * 1024;

/// Most entries in one `Dir` page.
///
/// A directory of 100k files is 25 pages: few round trips, while one page
/// (about 600 KiB for entries without chunk lists) stays quick to encode,
/// send and merge. Pages are also cut by size ([`PAGE_BUDGET`]).
pub const MAX_ENTRIES_PER_PAGE: usize = 4096;

/// Bytes of encoded entries a sender puts in one `Dir` page at most.
///
/// [`MAX_FRAME`] less room for the rest of the message (group name, path,
/// flags: under 5 KiB). The largest valid entry (a 1024-host version vector
/// and [`MAX_INLINE_CHUNKS`] chunk references) encodes to about 320 KiB, so
/// every page holds at least one entry.
pub const PAGE_BUDGET: usize = MAX_FRAME - 64 * 1024;

/// Most chunk hashes one `GetChunks` request names.
///
/// 256 chunks are 16 MiB of content at the 64 KiB average chunk size,
/// enough to keep a loopback or LAN link busy per stream, while one
/// request's worth of replies (at most 64 MiB at [`chunk::MAX_SIZE`]) is
/// bounded for the receiver. Parallelism comes from several streams.
pub const MAX_CHUNKS_PER_REQUEST: usize = 256;

/// Most chunk references carried inline in a `WireEntry`.
///
/// 1024 references (36 KiB encoded) describe a file of 16 MiB at the very
/// least (all chunks at [`chunk::MIN_SIZE`]) and of about 80 MiB typically,
/// so almost every file of an asset tree travels with its listing, saving a
/// round trip per pulled file. A longer list is left out and fetched with
/// `GetChunkList`; without this bound one entry could exceed a frame.
pub const MAX_INLINE_CHUNKS: usize = 1024;

/// Most chunk references in one `ChunkList` page.
///
/// 65536 references encode to at most 2.2 MiB, inside [`MAX_FRAME`]; the
/// worst-case list of [`MAX_CHUNKS_PER_ENTRY`] is 1024 pages.
pub const MAX_CHUNKS_PER_PAGE: usize = 65536;

/// Most chunks in one file's chunk list: 2^26.
///
/// Every chunk but a file's last is at least [`chunk::MIN_SIZE`] (16 KiB),
/// so this admits every file up to 1 TiB (2^40 / 2^14) however its content
/// cuts, and a typical file (80 KiB mean chunks) up to about 5 TiB. The
/// list itself is then at most 2.25 GiB (36 bytes per chunk), which is why
/// it travels in pages and a receiver checks it incrementally.
pub const MAX_CHUNKS_PER_ENTRY: u64 = 1 << 26;

/// Longest logical path, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;

/// Longest entry name, in bytes (Linux's `NAME_MAX`), as the tree stores it.
pub const MAX_NAME_LEN: usize = tree::MAX_NAME_LEN;

/// Longest symlink target, in bytes (Linux's `PATH_MAX`), as the tree
/// stores it. The tree's own constant is not exported; a test below keeps
/// the two equal.
pub const MAX_LINK_LEN: usize = 4096;

/// Longest host name, in bytes.
///
/// A DNS name is at most 253 bytes; csync2 host names are DNS names or
/// short names, so 255 covers both.
pub const MAX_HOST_LEN: usize = 255;

/// Longest group name, in bytes.
pub const MAX_GROUP_LEN: usize = 255;

/// Most groups in `Hello` or `Welcome`.
///
/// Configurations in the field have a handful of groups; 256 is far above
/// any of them.
pub const MAX_GROUPS: usize = 256;

/// Most include roots of one group in `Roots`.
///
/// One root per `include` path pattern of the group; 1024 is far above any
/// hand-written configuration.
pub const MAX_ROOTS: usize = 1024;

/// Most hosts in one version vector.
///
/// A vector holds a counter for every host that ever changed the entry,
/// including hosts since removed from the group. Clusters have 2 to 50
/// hosts; 1024 leaves room for decades of turnover.
pub const MAX_VERSION_HOSTS: usize = 1024;

/// Most changes listed in one `Pulled` answer.
///
/// A pull may change a whole tree; its answer is a report for the
/// initiator's log and `--dry-run` output, not the record of the changes
/// (each host keeps its own), so it lists the first 4096 and counts the
/// rest in `Pulled.more`. 4096 changes with typical paths (about 60 bytes)
/// encode to about 256 KiB; a list of long paths is cut earlier, at
/// [`PAGE_BUDGET`] bytes, so the frame fits [`MAX_FRAME`] (see
/// `Message::pulled`).
pub const MAX_REPORTED_CHANGES: usize = 4096;

/// Most problems listed in one `Pulled` answer: paths the receiver could
/// not apply, each with the reason (SPEC §3: the initiator says which peer,
/// path and why). More are counted in `Pulled.problems_total`. 32 problems
/// of at most [`MAX_PROBLEM_LEN`] bytes take at most 32 KiB, within the
/// room [`PAGE_BUDGET`] leaves in the frame besides the listed changes.
pub const MAX_REPORTED_PROBLEMS: usize = 32;

/// Longest text of one problem in `Pulled.problems`, in bytes: the path as
/// the receiver shows it and why it was not applied. Longer ones are cut.
pub const MAX_PROBLEM_LEN: usize = 1024;

/// Longest human-readable text (`Error.message`, `Refused.message`), in bytes.
pub const MAX_TEXT_LEN: usize = 4096;

/// Longest stored form of one chunk: the tag byte and [`chunk::MAX_SIZE`]
/// raw bytes (zstd is used only where it is smaller).
pub const MAX_STORED_CHUNK: usize = 1 + chunk::MAX_SIZE as usize;

/// Longest a node waits for a frame from a peer to begin: the reply to a
/// request, the next frame of a reply that spans several (`GetChunks`,
/// `Pull`), or the request on a stream the peer opened. The same bound
/// applies to the peer taking a frame this node sends (flow control), to
/// opening a stream, and to a stream's orderly end.
///
/// Every honest answer starts within milliseconds to a few seconds (a
/// directory record read from the state, a chunk read from a file); 30 s
/// leaves a loaded machine ample room while a stalled peer costs little.
/// A request that took longer fails with the peer's name, and what it
/// concerned is left for the next run.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Slowest transfer rate, in bytes per second, at which a frame is still
/// being received (or sent): once its length is known, a frame of `len`
/// bytes must complete within [`REPLY_TIMEOUT`] plus `len /
/// MIN_TRANSFER_RATE` seconds of its wait starting. A frame that keeps
/// arriving is progress; one that trickles in slower than this is a stall.
///
/// 32 KiB/s (256 kbit/s) is far below any link a cluster syncs over, and
/// gives the largest frame ([`MAX_FRAME`]) 128 s on top of
/// [`REPLY_TIMEOUT`].
pub const MIN_TRANSFER_RATE: u64 = 32 * 1024;

/// How often the receiver of a `Pull` sends `Progress` on the `Pull`
/// stream while it works (walking, fetching, applying), and how often an
/// initiator busy with its own side of a session (applying what it took)
/// sends `Progress` alone on a new stream.
///
/// A third of [`REPLY_TIMEOUT`]: two lost or late frames in a row still
/// do not time the wait out. The `Pull` itself is bounded only by this
/// heartbeat: a pull lasts as long as its transfer, and a peer that stops
/// working for the session (killed, wedged, or on the other side of a
/// broken network) is noticed within [`REPLY_TIMEOUT`].
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// A session in which the peer has opened no stream for this long, while
/// none of its requests is being served, is closed by the side that
/// accepted it. An initiator busy for the session sends `Progress` every
/// [`PROGRESS_INTERVAL`] instead of relying on QUIC keep-alives, which
/// would keep a connection to a wedged peer open forever.
pub const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Bytes of request frames a node reads at once from one listed peer
/// host, all its connections and streams together (hosts no group lists
/// share one such budget for their `Hello`).
///
/// A local choice, not a wire rule. Honest requests are small (a `GetDir`
/// or `Pull` is under 5 KiB, a `GetChunks` rarely over 64 KiB), so 16 MiB
/// (four frames of [`MAX_FRAME`]) never refuses one; it bounds what a key
/// holder that floods the node with unfinished frames costs it, whatever
/// the number of its connections, to 16 MiB per listed host.
pub const REQUEST_BUDGET: usize = 4 * MAX_FRAME;

/// Most entries one directory listing may have, all `Dir` pages together.
///
/// A directory can legitimately hold a million entries; twice that is the
/// bound. A receiver merges the listing page by page against its own
/// record and keeps no more than one page of it at a time, so this bounds
/// the time a peer that never sets `last_page` can take, not memory.
/// A listing over it fails the reconcile with that peer, naming the
/// directory.
pub const MAX_DIR_ENTRIES: u64 = 1 << 21;

/// Most memory, in bytes, a receiver spends at once on what one reconcile
/// decided and has not applied yet (the plans of the paths to change, the
/// conflicts to record, the directories still to list), as estimated by
/// the reconcile (heap and inline size of each record it keeps).
///
/// The reconcile applies its plans every 32 MiB as it walks, so what counts
/// against this is mostly what waits for the walk's end: deletions, and
/// files or links that replace a directory (about 1 KiB each, so a million
/// of them fit), and the directories still to list. A peer that offers more
/// (an endless tree of deletions, say) makes the reconcile fail with a
/// message instead of exhausting the node's memory; what it had not
/// applied yet is not applied.
pub const MAX_PLAN_BYTES: usize = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Body, Meta, Node, NodeEntry};

    #[test]
    fn link_target_limit_is_the_trees() {
        let node = |len| Node {
            entries: vec![NodeEntry {
                name: b"l".to_vec(),
                meta: Meta::default(),
                body: Body::Symlink { target: vec![b'x'; len] },
            }],
        };
        assert!(Node::decode(&node(MAX_LINK_LEN).encode()).is_ok());
        assert!(Node::decode(&node(MAX_LINK_LEN + 1).encode()).is_err());
    }
}
