//! The peer protocol: messages, framing, limits and validation.
//!
//! Terms (docs/protocol.md is the full specification):
//! - A *connection* joins two nodes (QUIC with TLS 1.3, built in
//!   [`crate::net`]). Either side may open *streams* on it; each stream
//!   carries one *exchange*: a *request* and its *reply* (several frames for
//!   `GetChunks`), then the stream ends.
//! - A *frame* is a big-endian `u32` length and that many bytes of *body*,
//!   the postcard encoding of one [`Message`] ([`read_frame`],
//!   [`write_frame`], [`encode_frame`], [`decode_frame`]).
//! - A *logical path* names a path the same way on every host: an include
//!   root's logical path as the config writes it (`/vol/0/app/shared`,
//!   `%app%/shared`), then `/name` components. The empty path names the
//!   group's *root record*, whose children are the include roots, named by
//!   their logical paths (the store keeps them the same way).
//! - A [`WireEntry`] is one entry as sent: metadata and body as in the tree,
//!   plus the version vector, the tombstone flag and, for a file with at
//!   most [`MAX_INLINE_CHUNKS`] chunks, its *inline chunk list*. Longer
//!   lists are *left out* and fetched in `ChunkList` pages.
//! - A *page* is one `Dir` reply: children in name order, cut by count and
//!   size ([`PageBuilder`]); the next is asked for with a name *cursor*.
//! - A chunk travels in its *stored form* ([`crate::chunk::encode`]) and is
//!   used only after its bytes are checked against its hash.
//! - A *wait* is the time a node spends expecting a frame from a peer (or
//!   the peer taking one). Every wait is bounded ([`Deadlines`],
//!   [`REPLY_TIMEOUT`]); a long `Pull` stays alive through the `Progress`
//!   frames its receiver sends ([`PROGRESS_INTERVAL`]).
//!
//! Nothing a peer sends is trusted: the decoder refuses frames over
//! [`MAX_FRAME`] from their header, bounds every list while decoding, and
//! validates every message ([`Message::validate`]). What needs the
//! receiver's configuration or the request is checked by the caller with
//! [`check_logical_path`] and [`check_reply`].

mod bounded;
mod deadline;
mod error;
mod frame;
pub mod limits;
mod message;
mod page;
mod reply;
#[cfg(test)]
pub(crate) mod testutil;
mod validate;

pub use deadline::Deadlines;
pub use error::{ErrorCode, ProtoError, SHOWN};
pub use frame::{
    FRAME_HEADER_LEN, chunk_frame_head, decode_frame, encode_frame, read_frame, read_frame_within, write_chunk_frame,
    write_encoded, write_frame,
};
pub use limits::*;
pub use message::{
    Change, ChangeAction, FileChunks, MIN_PROTOCOL_VERSION, Message, PROTOCOL_VERSION, Refusal, WireEntry, negotiate,
};
pub use page::PageBuilder;
pub use reply::{PendingChunks, check_reply};
pub use validate::{check_chunk_list, check_logical_path, validate_logical_path};
