//! Errors of framing, decoding and validating peer messages.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hash::Hash;

/// Why the peer refused a request: the code of an `Error` message.
///
/// Codes are few and coarse on purpose: they tell the requester what to do
/// (fix a bug, retry later, give up on this peer), and the message says
/// what exactly went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request does not decode, breaks a validation rule, or does not
    /// fit the exchange. Permanent: the same request fails again.
    BadRequest,
    /// The group, directory, file or content named is not (or no longer)
    /// there. Transient: the peer's tree changed since the requester looked;
    /// the next reconcile asks for what is there then.
    NotFound,
    /// The requester may not do this: a group it is not a member of, a path
    /// outside the group's roots. Permanent until the configuration changes.
    NotAllowed,
    /// No common protocol version. Permanent until one side is upgraded.
    VersionMismatch,
    /// A frame or a list is over a limit of `proto::limits`. Permanent.
    TooLarge,
    /// The peer failed on its side (I/O, its state database). Transient.
    Internal,
    /// The peer cannot serve now (its state is held by another process, it
    /// is shutting down). Transient: retry later.
    Busy,
}

impl ErrorCode {
    /// Whether retrying later may succeed (the peer or its tree was in the
    /// way), as opposed to a request that fails whenever it is made.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorCode::NotFound | ErrorCode::Internal | ErrorCode::Busy)
    }

    /// A short lower-case name for messages and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad request",
            ErrorCode::NotFound => "not found",
            ErrorCode::NotAllowed => "not allowed",
            ErrorCode::VersionMismatch => "version mismatch",
            ErrorCode::TooLarge => "too large",
            ErrorCode::Internal => "internal error",
            ErrorCode::Busy => "busy",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A frame or message that cannot be read, or breaks a rule of the protocol.
///
/// Field names are written as `Message.field` (`Dir.entries.name`); values
/// from the peer are shown lossily decoded and cut to [`SHOWN`] characters.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// Reading or writing the stream failed.
    #[error("stream I/O failed: {0}")]
    Io(std::io::Error),
    /// A wait on the peer outlasted its bound ([`super::REPLY_TIMEOUT`],
    /// [`super::MIN_TRANSFER_RATE`]): the peer stalled, or the network
    /// between the two is down. The text says what was awaited.
    #[error("{0}")]
    TimedOut(String),
    /// The stream ended cleanly where a frame should have started.
    #[error("stream ended before a frame")]
    Closed,
    /// The bytes end inside a frame: a stream closed mid-frame, or a buffer
    /// that does not hold the whole frame yet.
    #[error("frame truncated: {have} of {needed} bytes")]
    Truncated {
        /// Bytes of header and body the frame needs.
        needed: usize,
        /// Bytes there were.
        have: usize,
    },
    /// The frame's length prefix is over [`super::MAX_FRAME`]; nothing was
    /// allocated for it.
    #[error("frame of {len} bytes, over the {max}-byte limit")]
    FrameTooLarge {
        /// The declared (or, when sending, encoded) length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A request frame the reader's budget for the peer's requests cannot
    /// hold now: its other requests being read fill it
    /// ([`super::read_frame_within`]). Nothing was allocated for it.
    #[error(
        "frame of {len} bytes refused: the peer's requests being read fill their budget of {} bytes",
        super::REQUEST_BUDGET
    )]
    Busy {
        /// The declared length.
        len: usize,
    },
    /// The frame body does not decode as a message.
    #[error("frame does not decode as a message: {0}")]
    Decode(#[source] postcard::Error),
    /// The message ends before its frame does.
    #[error("{extra} bytes left over after the message in its frame")]
    TrailingBytes {
        /// Bytes after the message.
        extra: usize,
    },
    /// A list holds more items than its limit.
    #[error("{field}: {count} items, over the limit of {max}")]
    Limit {
        /// The list.
        field: &'static str,
        /// Items declared or found.
        count: u64,
        /// The limit.
        max: u64,
    },
    /// The lists of one frame would take more memory than
    /// [`super::MAX_DECODED_LISTS`].
    #[error("{field}: the frame's lists decode to more than {max} bytes")]
    DecodeBudget {
        /// The list being decoded when the budget ran out.
        field: &'static str,
        /// The budget.
        max: usize,
    },
    /// A string or byte string is longer than its limit.
    #[error("{field} {value:?} is {len} bytes long, over the limit of {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// The value, shown.
        value: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A logical path that is malformed.
    #[error("{field} {path:?} is not a valid logical path: {why}")]
    BadPath {
        /// The field.
        field: &'static str,
        /// The path, shown.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// An entry name that is not one valid path component.
    #[error("{field} {name:?} is not a valid entry name: {why}")]
    BadName {
        /// The field.
        field: &'static str,
        /// The name, shown.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A value breaks another rule of its field (order, uniqueness, a
    /// combination of fields, a format).
    #[error("{field} {value:?}: {why}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// The value, shown (for an entry, its name).
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A file's chunk lengths do not add up to its size.
    #[error("entry {name:?}: chunk lengths add up to {sum} bytes, but the file has {size}")]
    ChunkSum {
        /// The entry, shown.
        name: String,
        /// Sum of the chunk lengths.
        sum: u64,
        /// The file's size.
        size: u64,
    },
    /// A chunk reference with a length of 0 or over [`crate::chunk::MAX_SIZE`].
    #[error("entry {name:?}: chunk {index} is {len} bytes, outside 1..={max}")]
    ChunkLen {
        /// The entry, shown.
        name: String,
        /// Position of the chunk in the list.
        index: u64,
        /// The length given.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// A file's chunk list does not hash to its content hash.
    #[error("entry {name:?}: chunk list hashes to {actual}, but the content hash is {expected}")]
    ContentMismatch {
        /// The entry, shown.
        name: String,
        /// The content hash in the entry.
        expected: Hash,
        /// What the chunk list hashes to.
        actual: Hash,
    },
    /// A version vector that is not sorted by host, has a host twice, or
    /// names an invalid host.
    #[error("entry {name:?}: version vector {why} at host {host:?}")]
    BadVersion {
        /// The entry, shown.
        name: String,
        /// The host where the rule breaks, shown.
        host: String,
        /// What is wrong.
        why: &'static str,
    },
    /// No protocol version both sides speak.
    #[error("peer speaks protocol version {theirs}; this side speaks {min} to {ours}")]
    Version {
        /// The newest version this side speaks.
        ours: u16,
        /// The version the peer offered or chose.
        theirs: u16,
        /// The oldest version this side speaks.
        min: u16,
    },
    /// A logical path outside every include root of its group.
    #[error("{path:?} is not inside an include root of the group (roots: {roots})")]
    OutsideRoots {
        /// The path, shown.
        path: String,
        /// The group's roots, comma-separated.
        roots: String,
    },
    /// A reply of the wrong kind for its request.
    #[error("expected {expected} in reply to {request}, got {found}")]
    Unexpected {
        /// The request's kind.
        request: &'static str,
        /// What may answer it.
        expected: &'static str,
        /// The reply's kind.
        found: &'static str,
    },
    /// A reply of the right kind that does not answer its request (another
    /// group or path, a chunk not asked for, a chunk sent twice).
    #[error("reply does not match its request: {why}")]
    Mismatch {
        /// What differs.
        why: String,
    },
    /// The peer answered with an `Error` message.
    #[error("peer refused the request ({code}): {message}")]
    Remote {
        /// The peer's error code.
        code: ErrorCode,
        /// The peer's explanation.
        message: String,
    },
}

/// Peer-sent values in errors are cut to this many characters.
pub const SHOWN: usize = 96;

/// A peer-sent byte string for an error message: lossily decoded, cut to
/// [`SHOWN`] characters.
pub(crate) fn show(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut chars = text.chars();
    let mut out: String = chars.by_ref().take(SHOWN).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

impl From<std::io::Error> for ProtoError {
    /// An I/O error; a timed-out wait ([`std::io::ErrorKind::TimedOut`],
    /// as [`super::Deadlines`] reports it) becomes [`ProtoError::TimedOut`].
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::TimedOut { ProtoError::TimedOut(e.to_string()) } else { ProtoError::Io(e) }
    }
}

impl ProtoError {
    /// The `Error` code to answer with when a request fails this way.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtoError::Io(_) | ProtoError::TimedOut(_) | ProtoError::Closed | ProtoError::Truncated { .. } => {
                ErrorCode::Internal
            }
            ProtoError::FrameTooLarge { .. }
            | ProtoError::Limit { .. }
            | ProtoError::DecodeBudget { .. }
            | ProtoError::TooLong { .. } => ErrorCode::TooLarge,
            ProtoError::Version { .. } => ErrorCode::VersionMismatch,
            ProtoError::OutsideRoots { .. } => ErrorCode::NotAllowed,
            ProtoError::Remote { code, .. } => *code,
            ProtoError::Busy { .. } => ErrorCode::Busy,
            ProtoError::Decode(_)
            | ProtoError::TrailingBytes { .. }
            | ProtoError::BadPath { .. }
            | ProtoError::BadName { .. }
            | ProtoError::Invalid { .. }
            | ProtoError::ChunkSum { .. }
            | ProtoError::ChunkLen { .. }
            | ProtoError::ContentMismatch { .. }
            | ProtoError::BadVersion { .. }
            | ProtoError::Unexpected { .. }
            | ProtoError::Mismatch { .. } => ErrorCode::BadRequest,
        }
    }

    /// Whether the same exchange may succeed later: the connection broke,
    /// or the peer said so. Everything else is a malformed or hostile
    /// message, which fails the same way every time.
    pub fn is_transient(&self) -> bool {
        match self {
            ProtoError::Io(_)
            | ProtoError::TimedOut(_)
            | ProtoError::Closed
            | ProtoError::Truncated { .. }
            | ProtoError::Busy { .. } => true,
            ProtoError::Remote { code, .. } => code.is_transient(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_values_are_cut_and_lossy() {
        assert_eq!(show(b"a\xffb"), "a\u{fffd}b");
        let long = show(&[b'x'; 300]);
        assert_eq!(long.chars().count(), SHOWN + 1);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn codes_say_whether_to_retry() {
        assert!(ErrorCode::Busy.is_transient());
        assert!(!ErrorCode::BadRequest.is_transient());
        let remote = ProtoError::Remote { code: ErrorCode::NotFound, message: "gone".into() };
        assert!(remote.is_transient());
        assert_eq!(remote.code(), ErrorCode::NotFound);
        assert!(!ProtoError::TrailingBytes { extra: 1 }.is_transient());
        assert_eq!(ProtoError::FrameTooLarge { len: 1 << 30, max: 1 }.code(), ErrorCode::TooLarge);
    }
}
