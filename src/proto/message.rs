//! The messages of protocol version 3.
//!
//! Version 2 adds [`Message::Progress`], the heartbeat that bounds every
//! wait on a peer: a receiver of `Pull` sends it while it works, so the
//! sender can tell a long pull from a stalled one. Version 1 is no longer
//! spoken: a version-1 node cannot bound its waits on a peer, and a mixed
//! cluster would fall back to that. Version 3 adds [`Message::Done`], which
//! ends a run without ending the session, so that a session can serve the
//! next run too.
//!
//! The variant order and the field order are the wire format (postcard
//! encodes a variant by its index and a struct as its fields in order):
//! new variants go at the end, and changing a field needs a new protocol
//! version. docs/protocol.md gives every message with its schema.

use serde::{Deserialize, Serialize};

use super::bounded;
use super::limits::{MAX_PROBLEM_LEN, MAX_REPORTED_CHANGES, MAX_REPORTED_PROBLEMS, PAGE_BUDGET};
use crate::chunk::ChunkRef;
use crate::hash::Hash;
use crate::tree::Version;
use crate::tree::{Body, Meta};

pub use super::error::ErrorCode;

/// Protocol version this build speaks and prefers.
pub const PROTOCOL_VERSION: u16 = 3;

/// Oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 2;

/// The protocol version to use with a peer whose `Hello` offers `theirs`:
/// the smaller of the two sides' newest versions, or
/// [`ProtoError::Version`](super::ProtoError::Version) when that is older
/// than [`MIN_PROTOCOL_VERSION`] (answer with `Error { VersionMismatch }`).
pub fn negotiate(theirs: u16) -> Result<u16, super::ProtoError> {
    let chosen = theirs.min(PROTOCOL_VERSION);
    if chosen < MIN_PROTOCOL_VERSION {
        return Err(super::ProtoError::Version { ours: PROTOCOL_VERSION, theirs, min: MIN_PROTOCOL_VERSION });
    }
    Ok(chosen)
}

/// One message: the body of one frame.
///
/// Requests are sent by the side that opened the stream, replies by the
/// other; [`Message::Error`] may answer any request. [`Message::validate`]
/// lists the rules each one must follow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Variant 0: first request on a new connection: the protocol version the
    /// connecting side prefers, its host name, and the groups it wants to
    /// sync with the peer. Answered by `Welcome` or `Error`.
    Hello {
        /// Newest protocol version the sender speaks.
        protocol: u16,
        /// The sender's host name, as the group's `host` lines name it.
        host: String,
        /// Groups the sender wants to sync with this peer; no duplicates.
        #[serde(deserialize_with = "bounded::vec::<bounded::Groups, _, _>")]
        groups: Vec<String>,
    },
    /// Variant 1: answer to `Hello`: the version chosen (the smaller of the two
    /// sides' newest), the answering host's name, and the requested groups
    /// it accepts.
    Welcome {
        /// The chosen protocol version, used for the rest of the connection.
        protocol: u16,
        /// The answering side's host name.
        host: String,
        /// The subset of `Hello.groups` this side shares with the peer and
        /// lets it sync.
        #[serde(deserialize_with = "bounded::vec::<bounded::Groups, _, _>")]
        groups: Vec<String>,
    },
    /// Variant 2: asks for a group's include roots. Answered by `Roots`.
    GetRoots {
        /// The group.
        group: String,
    },
    /// Variant 3: A group's include roots, each with its record.
    Roots {
        /// The group, as requested.
        group: String,
        /// The group's root hash: the [`crate::tree::RootSet`] hash of the
        /// roots' live entries. Equal hashes mean equal trees.
        hash: Hash,
        /// The group's version digest: the XOR over every tracked entry,
        /// tombstones included, of a hash of its logical path, version
        /// vector and tombstone flag (the state's version digest).
        /// Equal trees with different digests hold versions still to merge.
        versions: Hash,
        /// `(logical path, record)` for every include root, strictly
        /// increasing by logical path. The record's name is the logical
        /// path; a tombstone records a deleted root; `None` means the
        /// sender has never seen anything there.
        #[serde(deserialize_with = "bounded::vec::<bounded::Roots, _, _>")]
        roots: Vec<(String, Option<WireEntry>)>,
    },
    /// Variant 4: asks for one page of a directory's children. Answered by `Dir`.
    GetDir {
        /// The group.
        group: String,
        /// The directory's logical path; empty for the group's root record
        /// (whose children are the include roots, named by logical path).
        #[serde(with = "bounded::bytes")]
        path: Vec<u8>,
        /// List children whose names sort after this one (by bytes); empty
        /// for the first page.
        #[serde(with = "bounded::bytes")]
        after: Vec<u8>,
    },
    /// Variant 5: one page of a directory's children, tombstones included.
    Dir {
        /// The group, as requested.
        group: String,
        /// The directory, as requested.
        #[serde(with = "bounded::bytes")]
        path: Vec<u8>,
        /// Whether this page ends the listing.
        last_page: bool,
        /// Children strictly increasing by name, all after the request's
        /// `after`.
        #[serde(deserialize_with = "bounded::vec::<bounded::Entries, _, _>")]
        entries: Vec<WireEntry>,
    },
    /// Variant 6: asks for one page of a file's chunk list, for a file whose
    /// `WireEntry` left it out. Answered by `ChunkList`.
    GetChunkList {
        /// The group.
        group: String,
        /// The file's logical path.
        #[serde(with = "bounded::bytes")]
        path: Vec<u8>,
        /// The content the list is wanted for; the peer answers `NotFound`
        /// when its file no longer has it.
        content: Hash,
        /// Index of the first chunk wanted.
        start: u64,
    },
    /// Variant 7: one page of a file's chunk list.
    ChunkList {
        /// The group, as requested.
        group: String,
        /// The file, as requested.
        #[serde(with = "bounded::bytes")]
        path: Vec<u8>,
        /// The content, as requested.
        content: Hash,
        /// Index of `chunks[0]` in the whole list, as requested.
        start: u64,
        /// Number of chunks in the whole list.
        total: u64,
        /// The chunks from `start` on; the page is the last one when
        /// `start + chunks.len() == total`.
        #[serde(deserialize_with = "bounded::vec::<bounded::PageChunks, _, _>")]
        chunks: Vec<ChunkRef>,
    },
    /// Variant 8: asks for chunks, each named with a file that holds it. Answered
    /// by `Chunk` frames, then one `ChunksDone` (or by `Error`).
    GetChunks {
        /// The group the files belong to.
        group: String,
        /// The files and the chunks wanted from each.
        #[serde(deserialize_with = "bounded::vec::<bounded::Files, _, _>")]
        files: Vec<FileChunks>,
    },
    /// Variant 9: one chunk, in its stored form ([`crate::chunk::encode`]).
    Chunk {
        /// The chunk's name (plain BLAKE3 hash of its bytes).
        hash: Hash,
        /// Tag byte and payload; the receiver decodes and verifies it
        /// against `hash` before any use.
        #[serde(with = "bounded::bytes")]
        stored: Vec<u8>,
    },
    /// Variant 10: ends the answer to `GetChunks`.
    ChunksDone {
        /// The requested chunks that were not sent (the file changed, or
        /// the chunk could not be read); no duplicates.
        #[serde(deserialize_with = "bounded::vec::<bounded::Missing, _, _>")]
        missing: Vec<Hash>,
    },
    /// Variant 11: a push, as a request to pull: "pull `group` from me now".
    /// The receiver reconciles the group against the sender over this
    /// connection, opening its own request streams to the sender
    /// (`GetRoots`, `GetDir`, `GetChunkList`, `GetChunks`), applies what it
    /// decides to take, and answers `Pulled` when done, or `Refused` or
    /// `Error`.
    Pull {
        /// The group, one the connection was welcomed for.
        group: String,
        /// Decide but change nothing (`sync --dry-run`, `status`): the
        /// receiver decides from its recorded state, records nothing (no
        /// check, conflict, version or generation) and `Pulled` lists what
        /// it would change.
        dry_run: bool,
    },
    /// Variant 12: answer to `Pull`: the receiver's pull is done.
    Pulled {
        /// The changes the receiver applied (with `dry_run`: would apply),
        /// at most [`MAX_REPORTED_CHANGES`]; [`Message::pulled`] builds a
        /// list that also fits a frame.
        #[serde(deserialize_with = "bounded::vec::<bounded::Changes, _, _>")]
        changes: Vec<Change>,
        /// How many changes were left out of `changes`.
        more: u64,
        /// What the receiver could not apply (it retries them at its next
        /// reconcile): each the path as the receiver shows it and why, at
        /// most [`MAX_REPORTED_PROBLEMS`] of at most [`MAX_PROBLEM_LEN`]
        /// bytes each. The sender's `sync` fails while any is reported.
        #[serde(deserialize_with = "bounded::vec::<bounded::Problems, _, _>")]
        problems: Vec<String>,
        /// How many problems there were in all, listed or not (at least
        /// `problems.len()`).
        problems_total: u64,
    },
    /// Variant 13: answer to `Pull`: the receiver does not pull.
    Refused {
        /// Why, in a form the sender acts on.
        reason: Refusal,
        /// Details for the log.
        message: String,
    },
    /// Variant 14: the request failed. Ends the exchange.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// Details for the log; never trusted, never interpreted.
        message: String,
    },
    /// Variant 15: the sender closes the connection after its open exchanges end.
    /// Sent alone on a stream; not answered.
    Bye,
    /// Variant 16 (protocol version 2): the sender is still working for
    /// the session. The receiver of a `Pull` sends it on the `Pull` stream
    /// at most [`super::PROGRESS_INTERVAL`] apart until its answer; each
    /// one restarts the sender's [`super::REPLY_TIMEOUT`]. A side that is
    /// busy for the session without an exchange open (an initiator applying
    /// what it took) sends it alone on a new stream, not answered, so the
    /// session is not closed as idle.
    Progress,
    /// Variant 17 (protocol version 3): the initiator's run is over; the
    /// session stays open for a later one. The receiver runs the actions
    /// of what the run changed there, then answers `Done`.
    Done,
}

/// Why a `Pull` was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Refusal {
    /// The sender is a receive-only host of the group: it may never push.
    ReceiveOnly,
    /// The group is not one this connection was welcomed for.
    NotShared,
    /// The receiver cannot pull now (it is shutting down, or already
    /// pulling the group). Retry on the next run.
    Busy,
}

impl Refusal {
    /// A short lower-case name for messages and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::ReceiveOnly => "receive-only",
            Refusal::NotShared => "not-shared",
            Refusal::Busy => "busy",
        }
    }
}

/// One change a `Pull` made on its receiver (with `dry_run`: would make).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// What was done.
    pub action: ChangeAction,
    /// The entry's logical path.
    #[serde(with = "bounded::bytes")]
    pub path: Vec<u8>,
}

/// What a [`Change`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChangeAction {
    /// Created an entry the receiver did not have live.
    Create,
    /// Replaced a live entry's content, kind or metadata.
    Update,
    /// Deleted a live entry.
    Delete,
    /// Found the two states concurrent and different, and recorded a
    /// conflict.
    Conflict,
    /// Merged only version information: nothing on disk changed.
    Merge,
}

impl ChangeAction {
    /// A short lower-case name for messages and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeAction::Create => "create",
            ChangeAction::Update => "update",
            ChangeAction::Delete => "delete",
            ChangeAction::Conflict => "conflict",
            ChangeAction::Merge => "merge",
        }
    }
}

/// One entry as peers exchange it: what the tree holds, plus what the
/// reconcile needs (version vector, tombstone flag, chunk list).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEntry {
    /// The name in its parent directory; for an include root, its logical
    /// path.
    #[serde(with = "bounded::bytes")]
    pub name: Vec<u8>,
    /// Kept metadata; for a tombstone, the last seen.
    pub meta: Meta,
    /// Content; for a tombstone, the last seen.
    pub body: Body,
    /// Version vector of the entry's last change (its deletion, for a
    /// tombstone).
    #[serde(deserialize_with = "bounded::version")]
    pub version: Version,
    /// The entry was deleted.
    pub deleted: bool,
    /// A live file's chunk list when it has at most [`MAX_INLINE_CHUNKS`](super::limits::MAX_INLINE_CHUNKS)
    /// chunks; empty otherwise (then fetched with `GetChunkList` if the file
    /// is not empty) and for every other kind and for tombstones.
    #[serde(deserialize_with = "bounded::vec::<bounded::InlineChunks, _, _>")]
    pub chunks: Vec<ChunkRef>,
}

impl WireEntry {
    /// Whether this is a live, non-empty file sent without its chunk list,
    /// which the receiver fetches with `GetChunkList` before pulling it.
    pub fn chunks_left_out(&self) -> bool {
        !self.deleted && self.chunks.is_empty() && matches!(self.body, Body::File { size, .. } if size > 0)
    }
}

/// Chunks wanted from one file.
///
/// A chunk is asked for together with a file that holds it because a node
/// without a chunk store (no `backup-directory`) keeps no index from chunk
/// to file: it reads the chunk from that file, at the offset its chunk list
/// gives, and checks it against its hash. The group and path also let it
/// refuse chunks of a group the requester is not a member of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChunks {
    /// The file's logical path.
    #[serde(with = "bounded::bytes")]
    pub path: Vec<u8>,
    /// The file's content hash: the version the chunks are wanted from.
    pub content: Hash,
    /// The chunks wanted, at least one.
    #[serde(deserialize_with = "bounded::vec::<bounded::Hashes, _, _>")]
    pub hashes: Vec<Hash>,
}

impl Message {
    /// The variant's name, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Welcome { .. } => "Welcome",
            Message::GetRoots { .. } => "GetRoots",
            Message::Roots { .. } => "Roots",
            Message::GetDir { .. } => "GetDir",
            Message::Dir { .. } => "Dir",
            Message::GetChunkList { .. } => "GetChunkList",
            Message::ChunkList { .. } => "ChunkList",
            Message::GetChunks { .. } => "GetChunks",
            Message::Chunk { .. } => "Chunk",
            Message::ChunksDone { .. } => "ChunksDone",
            Message::Pull { .. } => "Pull",
            Message::Pulled { .. } => "Pulled",
            Message::Refused { .. } => "Refused",
            Message::Error { .. } => "Error",
            Message::Bye => "Bye",
            Message::Progress => "Progress",
            Message::Done => "Done",
        }
    }

    /// Whether the message opens an exchange (is sent first on a stream).
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            Message::Hello { .. }
                | Message::GetRoots { .. }
                | Message::GetDir { .. }
                | Message::GetChunkList { .. }
                | Message::GetChunks { .. }
                | Message::Pull { .. }
                | Message::Bye
                | Message::Progress
                | Message::Done
        )
    }

    /// The `Error` message that answers a request which failed with `err`.
    pub fn error(err: &super::ProtoError) -> Message {
        let mut message = err.to_string();
        super::validate::truncate_text(&mut message);
        Message::Error { code: err.code(), message }
    }

    /// The `Pulled` answer reporting `changes`, in the order given, and
    /// `unlisted` more: the first ones while there are at most
    /// [`MAX_REPORTED_CHANGES`] and their encoding stays within
    /// [`PAGE_BUDGET`] bytes (so the frame fits [`super::MAX_FRAME`] however
    /// long the paths), the rest counted in `more` with `unlisted`; and the
    /// first [`MAX_REPORTED_PROBLEMS`] `problems`, each cut to
    /// [`MAX_PROBLEM_LEN`] bytes, with their total.
    pub fn pulled<'p>(
        changes: impl IntoIterator<Item = Change>,
        unlisted: u64,
        problems: impl IntoIterator<Item = &'p String>,
    ) -> Message {
        let mut listed = Vec::new();
        let mut bytes = 0usize;
        let (mut more, mut cut) = (unlisted, false);
        for change in changes {
            if !cut && listed.len() < MAX_REPORTED_CHANGES {
                let size = postcard::experimental::serialized_size(&change).expect("sizing cannot fail");
                if bytes + size <= PAGE_BUDGET {
                    bytes += size;
                    listed.push(change);
                    continue;
                }
            }
            cut = true;
            more += 1;
        }
        let mut shown = Vec::new();
        let mut problems_total = 0u64;
        for p in problems {
            problems_total += 1;
            if shown.len() < MAX_REPORTED_PROBLEMS {
                shown.push(super::validate::cut_text(p, MAX_PROBLEM_LEN));
            }
        }
        Message::Pulled { changes: listed, more, problems: shown, problems_total }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_picks_the_older_version_and_refuses_below_the_minimum() {
        assert_eq!(negotiate(PROTOCOL_VERSION).unwrap(), PROTOCOL_VERSION);
        assert_eq!(negotiate(u16::MAX).unwrap(), PROTOCOL_VERSION);
        let err = negotiate(MIN_PROTOCOL_VERSION - 1).unwrap_err();
        assert_eq!(err.code(), ErrorCode::VersionMismatch);
    }

    #[test]
    fn pulled_lists_what_fits_and_counts_the_rest() {
        let change = |path: Vec<u8>| Change { action: ChangeAction::Update, path };
        let short = |n: usize| (0..n).map(|i| change(format!("/srv/f{i}").into_bytes()));
        assert_eq!(
            Message::pulled(short(3), 0, &[]),
            Message::Pulled { changes: short(3).collect(), more: 0, problems: vec![], problems_total: 0 }
        );
        let Message::Pulled { changes, more, .. } = Message::pulled(short(MAX_REPORTED_CHANGES + 10), 5, &[]) else {
            unreachable!()
        };
        assert_eq!((changes.len(), more), (MAX_REPORTED_CHANGES, 15));
        assert_eq!(changes.last(), short(MAX_REPORTED_CHANGES).next_back().as_ref());

        // The longest valid paths: the list is cut by size, and the frame
        // still fits and decodes.
        let component = [b"/".as_slice(), &[b'p'; super::super::MAX_NAME_LEN]].concat();
        let longest = |i: usize| {
            let mut p = format!("/{i:05}").into_bytes();
            while p.len() + component.len() <= super::super::MAX_PATH_LEN {
                p.extend_from_slice(&component);
            }
            change(p)
        };
        // With as many problems as are listed, each as long as allowed.
        let problems: Vec<String> =
            (0..MAX_REPORTED_PROBLEMS + 5).map(|i| format!("{i}{}", "é".repeat(MAX_PROBLEM_LEN))).collect();
        let msg = Message::pulled((0..MAX_REPORTED_CHANGES).map(longest), 0, &problems);
        let Message::Pulled { changes, more, problems: listed, problems_total } = &msg else { unreachable!() };
        assert_eq!((listed.len(), *problems_total), (MAX_REPORTED_PROBLEMS, problems.len() as u64));
        assert!(listed.iter().all(|p| p.len() <= MAX_PROBLEM_LEN && p.len() > MAX_PROBLEM_LEN - 4));
        msg.validate().unwrap();
        assert!(changes.len() > 1 && more > &0, "{} listed, {more} more", changes.len());
        assert_eq!(changes.len() as u64 + more, MAX_REPORTED_CHANGES as u64);
        let frame = super::super::encode_frame(&msg);
        assert!(frame.len() - super::super::FRAME_HEADER_LEN <= super::super::MAX_FRAME);
        assert_eq!(super::super::decode_frame(&frame).unwrap().0, msg);
    }

    #[test]
    fn refusals_and_actions_have_short_names() {
        let names: Vec<_> = [Refusal::ReceiveOnly, Refusal::NotShared, Refusal::Busy].map(Refusal::as_str).into();
        assert_eq!(names, ["receive-only", "not-shared", "busy"]);
        let actions = [
            ChangeAction::Create,
            ChangeAction::Update,
            ChangeAction::Delete,
            ChangeAction::Conflict,
            ChangeAction::Merge,
        ];
        assert_eq!(actions.map(ChangeAction::as_str), ["create", "update", "delete", "conflict", "merge"]);
    }

    #[test]
    fn variant_indices_are_the_documented_ones() {
        // docs/protocol.md numbers the messages; postcard writes the index
        // as the first byte.
        let first = |m: &Message| postcard::to_stdvec(m).unwrap()[0];
        assert_eq!(first(&Message::Hello { protocol: 1, host: "a".into(), groups: vec![] }), 0);
        assert_eq!(first(&Message::ChunksDone { missing: vec![] }), 10);
        assert_eq!(first(&Message::Pull { group: "a".into(), dry_run: false }), 11);
        assert_eq!(first(&Message::Pulled { changes: vec![], more: 0, problems: vec![], problems_total: 0 }), 12);
        assert_eq!(first(&Message::Refused { reason: Refusal::Busy, message: String::new() }), 13);
        assert_eq!(first(&Message::Error { code: ErrorCode::Busy, message: String::new() }), 14);
        assert_eq!(first(&Message::Bye), 15);
        assert_eq!(first(&Message::Progress), 16);
        assert_eq!(first(&Message::Done), 17);
    }
}
