//! Matching replies to their requests.
//!
//! A reply that is valid on its own may still not answer the request it
//! follows: another group or directory, names before the cursor, a chunk
//! that was not asked for. The requester checks each reply with
//! [`check_reply`]; for `GetChunks`, whose answer spans many frames,
//! [`PendingChunks`] also checks that every chunk comes at most once and
//! that `ChunksDone` accounts for exactly the rest.

use std::collections::HashSet;

use super::ProtoError;
use super::error::show;
use super::message::{FileChunks, MIN_PROTOCOL_VERSION, Message};
use crate::hash::Hash;

/// Checks that `reply`, received on the stream where `request` was sent,
/// answers it. An `Error` reply becomes [`ProtoError::Remote`].
///
/// Both messages are assumed valid ([`Message::validate`]; the decoder has
/// checked the reply). For `GetChunks`, only that each `Chunk` or
/// `ChunksDone` concerns requested chunks; see [`PendingChunks`].
pub fn check_reply(request: &Message, reply: &Message) -> Result<(), ProtoError> {
    if let Message::Error { code, message } = reply {
        return Err(ProtoError::Remote { code: *code, message: message.clone() });
    }
    let mismatch = |why: String| Err(ProtoError::Mismatch { why });
    match (request, reply) {
        (Message::Hello { protocol, groups, .. }, Message::Welcome { protocol: chosen, groups: accepted, .. }) => {
            if *chosen > *protocol || *chosen < MIN_PROTOCOL_VERSION {
                return Err(ProtoError::Version { ours: *protocol, theirs: *chosen, min: MIN_PROTOCOL_VERSION });
            }
            match accepted.iter().find(|g| !groups.contains(g)) {
                Some(g) => mismatch(format!("Welcome accepts group {g:?}, which Hello did not ask for")),
                None => Ok(()),
            }
        }
        (Message::GetRoots { group }, Message::Roots { group: g, .. }) => same_group(group, g),
        (Message::GetDir { group, path, after }, Message::Dir { group: g, path: p, entries, .. }) => {
            same_group(group, g)?;
            if path != p {
                return mismatch(format!("Dir lists {:?}, GetDir asked for {:?}", show(p), show(path)));
            }
            match entries.first() {
                Some(e) if !after.is_empty() && e.name <= *after => {
                    mismatch(format!("Dir page starts at {:?}, not after {:?}", show(&e.name), show(after)))
                }
                _ => Ok(()),
            }
        }
        (
            Message::GetChunkList { group, path, content, start },
            Message::ChunkList { group: g, path: p, content: c, start: s, .. },
        ) => {
            same_group(group, g)?;
            if path != p || content != c || start != s {
                return mismatch(format!(
                    "ChunkList for {:?} {} from {s}, asked for {:?} {} from {start}",
                    show(p),
                    c.short(),
                    show(path),
                    content.short()
                ));
            }
            Ok(())
        }
        (Message::GetChunks { files, .. }, Message::Chunk { hash, .. }) => {
            if requested(files).any(|h| h == hash) {
                Ok(())
            } else {
                mismatch(format!("chunk {} was not asked for", hash.short()))
            }
        }
        (Message::GetChunks { files, .. }, Message::ChunksDone { missing }) => {
            match missing.iter().find(|m| !requested(files).any(|h| h == *m)) {
                Some(m) => mismatch(format!("ChunksDone reports chunk {} missing, which was not asked for", m.short())),
                None => Ok(()),
            }
        }
        // Progress frames come before the answer, any number of them.
        (Message::Pull { .. }, Message::Progress | Message::Pulled { .. } | Message::Refused { .. }) => Ok(()),
        (Message::Done, Message::Done) => Ok(()),
        _ => Err(ProtoError::Unexpected { request: request.kind(), expected: expected(request), found: reply.kind() }),
    }
}

/// What may answer `request` (besides `Error`).
fn expected(request: &Message) -> &'static str {
    match request {
        Message::Hello { .. } => "Welcome",
        Message::GetRoots { .. } => "Roots",
        Message::GetDir { .. } => "Dir",
        Message::GetChunkList { .. } => "ChunkList",
        Message::GetChunks { .. } => "Chunk or ChunksDone",
        Message::Pull { .. } => "Progress, Pulled or Refused",
        Message::Done => "Done",
        _ => "no reply",
    }
}

fn same_group(asked: &str, got: &str) -> Result<(), ProtoError> {
    if asked == got {
        Ok(())
    } else {
        Err(ProtoError::Mismatch { why: format!("reply for group {got:?}, request for {asked:?}") })
    }
}

fn requested(files: &[FileChunks]) -> impl Iterator<Item = &Hash> {
    files.iter().flat_map(|f| &f.hashes)
}

/// The chunks of one `GetChunks` request not yet answered.
#[derive(Debug)]
pub struct PendingChunks {
    wanted: HashSet<Hash>,
}

impl PendingChunks {
    /// Starts tracking the answer to a request for `files`.
    pub fn new(files: &[FileChunks]) -> Self {
        PendingChunks { wanted: requested(files).copied().collect() }
    }

    /// Checks one reply frame. `Ok(false)` after a `Chunk` that was wanted
    /// and not yet received (more frames follow); `Ok(true)` after a
    /// `ChunksDone` whose `missing` is exactly what was not received (the
    /// exchange is over). Anything else is an error: an unrequested or
    /// repeated chunk, a `ChunksDone` that does not add up, another kind of
    /// message, or an `Error` from the peer.
    pub fn accept(&mut self, reply: &Message) -> Result<bool, ProtoError> {
        match reply {
            Message::Chunk { hash, .. } => {
                if self.wanted.remove(hash) {
                    Ok(false)
                } else {
                    Err(ProtoError::Mismatch { why: format!("chunk {} not asked for, or sent twice", hash.short()) })
                }
            }
            Message::ChunksDone { missing } => {
                let accounted = missing.len() == self.wanted.len() && missing.iter().all(|m| self.wanted.contains(m));
                if accounted {
                    self.wanted.clear();
                    Ok(true)
                } else {
                    Err(ProtoError::Mismatch {
                        why: format!(
                            "ChunksDone reports {} chunks missing, but {} were neither sent nor reported",
                            missing.len(),
                            self.wanted.len()
                        ),
                    })
                }
            }
            Message::Error { code, message } => Err(ProtoError::Remote { code: *code, message: message.clone() }),
            other => Err(ProtoError::Unexpected {
                request: "GetChunks",
                expected: "Chunk or ChunksDone",
                found: other.kind(),
            }),
        }
    }

    /// Chunks neither received nor reported missing yet.
    pub fn remaining(&self) -> usize {
        self.wanted.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{file_entry, sample_hello};
    use super::super::{ErrorCode, Refusal};
    use super::*;

    fn get_chunks(hashes: &[Hash]) -> Message {
        Message::GetChunks {
            group: "app".into(),
            files: vec![FileChunks { path: b"/srv/a".to_vec(), content: Hash::of(b"c"), hashes: hashes.to_vec() }],
        }
    }

    #[test]
    fn done_is_answered_by_done_alone() {
        check_reply(&Message::Done, &Message::Done).unwrap();
        let roots =
            Message::Roots { group: "app".into(), hash: Hash::of(b"r"), versions: Hash::of(b"v"), roots: vec![] };
        assert!(matches!(
            check_reply(&Message::Done, &roots),
            Err(ProtoError::Unexpected { request: "Done", expected: "Done", found: "Roots" })
        ));
        assert!(check_reply(&Message::GetRoots { group: "app".into() }, &Message::Done).is_err());
    }

    #[test]
    fn welcome_must_not_choose_a_newer_version_or_unasked_groups() {
        let hello = sample_hello();
        let welcome = |protocol, groups: &[&str]| Message::Welcome {
            protocol,
            host: "app1".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        check_reply(&hello, &welcome(2, &["app"])).unwrap();
        assert!(matches!(check_reply(&hello, &welcome(3, &["app"])), Err(ProtoError::Version { theirs: 3, .. })));
        // Version 1 has no Progress: its waits cannot be bounded.
        assert!(matches!(check_reply(&hello, &welcome(1, &["app"])), Err(ProtoError::Version { theirs: 1, .. })));
        assert!(matches!(check_reply(&hello, &welcome(0, &[])), Err(ProtoError::Version { theirs: 0, .. })));
        assert!(matches!(check_reply(&hello, &welcome(2, &["other"])), Err(ProtoError::Mismatch { .. })));
    }

    #[test]
    fn dir_pages_must_answer_the_directory_and_cursor_asked_for() {
        let req = Message::GetDir { group: "app".into(), path: b"/srv".to_vec(), after: b"m".to_vec() };
        let dir = |group: &str, path: &[u8], first: &[u8]| Message::Dir {
            group: group.into(),
            path: path.to_vec(),
            last_page: true,
            entries: vec![file_entry(first, 1, 10)],
        };
        check_reply(&req, &dir("app", b"/srv", b"n")).unwrap();
        assert!(check_reply(&req, &dir("app", b"/srv", b"m")).is_err());
        assert!(check_reply(&req, &dir("app", b"/srv", b"a")).is_err());
        assert!(check_reply(&req, &dir("etc", b"/srv", b"n")).is_err());
        assert!(check_reply(&req, &dir("app", b"/srv/x", b"n")).is_err());
    }

    #[test]
    fn an_error_reply_becomes_a_remote_error() {
        let req = Message::GetRoots { group: "app".into() };
        let err = Message::Error { code: ErrorCode::NotAllowed, message: "not a member".into() };
        assert!(matches!(check_reply(&req, &err), Err(ProtoError::Remote { code: ErrorCode::NotAllowed, .. })));
        let pulled = Message::Pulled { changes: vec![], more: 0, problems: vec![], problems_total: 0 };
        assert!(matches!(check_reply(&req, &pulled), Err(ProtoError::Unexpected { found: "Pulled", .. })));
    }

    #[test]
    fn a_pull_is_answered_by_pulled_refused_or_error() {
        let pull = Message::Pull { group: "app".into(), dry_run: false };
        check_reply(&pull, &Message::Progress).unwrap();
        check_reply(&pull, &Message::Pulled { changes: vec![], more: 0, problems: vec![], problems_total: 0 }).unwrap();
        check_reply(&pull, &Message::Refused { reason: Refusal::Busy, message: "shutting down".into() }).unwrap();
        let err = Message::Error { code: ErrorCode::Internal, message: "disk full".into() };
        assert!(matches!(check_reply(&pull, &err), Err(ProtoError::Remote { code: ErrorCode::Internal, .. })));
        let roots = Message::Roots { group: "app".into(), hash: Hash::of(b""), versions: Hash::of(b""), roots: vec![] };
        let e = check_reply(&pull, &roots).unwrap_err();
        assert!(
            matches!(
                e,
                ProtoError::Unexpected { request: "Pull", expected: "Progress, Pulled or Refused", found: "Roots" }
            ),
            "{e}"
        );
        let other = Message::Pulled { changes: vec![], more: 0, problems: vec![], problems_total: 0 };
        assert!(check_reply(&Message::GetRoots { group: "app".into() }, &other).is_err());
        // Progress answers only a Pull.
        assert!(check_reply(&Message::GetRoots { group: "app".into() }, &Message::Progress).is_err());
    }

    #[test]
    fn chunks_must_be_asked_for_and_come_once() {
        let (a, b, c) = (Hash::of(b"a"), Hash::of(b"b"), Hash::of(b"c"));
        let req = get_chunks(&[a, b]);
        let chunk = |hash| Message::Chunk { hash, stored: vec![0] };
        check_reply(&req, &chunk(a)).unwrap();
        assert!(check_reply(&req, &chunk(c)).is_err());

        let Message::GetChunks { files, .. } = &req else { unreachable!() };
        let mut pending = PendingChunks::new(files);
        assert!(!pending.accept(&chunk(a)).unwrap());
        assert!(pending.accept(&chunk(a)).is_err(), "a chunk sent twice");
        assert!(pending.accept(&Message::ChunksDone { missing: vec![] }).is_err(), "b unaccounted for");
        assert!(pending.accept(&Message::ChunksDone { missing: vec![b] }).unwrap());
        assert_eq!(pending.remaining(), 0);
    }
}
