//! The rules every message must follow, checked by the decoder.
//!
//! [`Message::validate`] checks what one message can show on its own:
//! lengths and counts, the shape of logical paths and names, the
//! consistency of an entry (metadata against kind, chunk list against size
//! and content hash, version vector order), uniqueness and order of lists.
//! What needs the receiver's configuration (is a path inside one of the
//! group's include roots: [`check_logical_path`]; is it excluded; is the
//! peer a member of the group) or the request a reply answers
//! ([`super::check_reply`]) is checked by the caller with those in hand.

use super::ProtoError;
use super::error::show;
use super::limits::*;
use super::message::{FileChunks, Message, WireEntry};
use crate::chunk::{self, ChunkRef};
use crate::hash::Hash;
use crate::tree::Version;
use crate::tree::{self, Body, RootEntry, RootSet};

/// How the entries of a directory are named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Naming {
    /// Children of a directory: one path component each.
    Child,
    /// Children of the group's root record (the empty path): the include
    /// roots, named by their logical paths.
    Root,
}

impl Message {
    /// Checks the message against the rules of docs/protocol.md
    /// ("Validation"). The decoder calls it on every message it reads.
    pub fn validate(&self) -> Result<(), ProtoError> {
        match self {
            Message::Hello { protocol: _, host, groups } | Message::Welcome { protocol: _, host, groups } => {
                check_word("host", host, MAX_HOST_LEN)?;
                check_count("groups", groups.len(), MAX_GROUPS)?;
                let mut seen: Vec<&str> = Vec::with_capacity(groups.len());
                for g in groups {
                    check_word("group", g, MAX_GROUP_LEN)?;
                    seen.push(g);
                }
                seen.sort_unstable();
                if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
                    return Err(invalid("groups", w[0].as_bytes(), "listed twice"));
                }
                Ok(())
            }
            Message::GetRoots { group } => check_word("group", group, MAX_GROUP_LEN),
            Message::Roots { group, hash, versions: _, roots } => {
                check_word("group", group, MAX_GROUP_LEN)?;
                check_count("Roots.roots", roots.len(), MAX_ROOTS)?;
                let mut prev: Option<&str> = None;
                for (logical, entry) in roots {
                    check_path("Roots.roots", logical.as_bytes())?;
                    if prev.is_some_and(|p| p >= logical.as_str()) {
                        return Err(invalid("Roots.roots", logical.as_bytes(), "out of order or listed twice"));
                    }
                    prev = Some(logical);
                    if let Some(e) = entry {
                        if e.name != logical.as_bytes() {
                            return Err(invalid("Roots.roots.name", &e.name, "is not the root's logical path"));
                        }
                        check_entry(e, Naming::Root)?;
                    }
                }
                let set = RootSet {
                    roots: roots
                        .iter()
                        .map(|(logical, e)| {
                            let live = e.as_ref().filter(|e| !e.deleted);
                            (logical.clone(), live.map(|e| RootEntry { meta: e.meta.clone(), body: e.body.clone() }))
                        })
                        .collect(),
                };
                if set.hash() != *hash {
                    return Err(invalid("Roots.hash", hash.short().as_bytes(), "is not the hash of the roots listed"));
                }
                Ok(())
            }
            Message::GetDir { group, path, after } => {
                check_word("group", group, MAX_GROUP_LEN)?;
                let naming = check_dir_path("GetDir.path", path)?;
                if !after.is_empty() {
                    check_entry_name("GetDir.after", after, naming)?;
                }
                Ok(())
            }
            Message::Dir { group, path, last_page: _, entries } => {
                check_word("group", group, MAX_GROUP_LEN)?;
                let naming = check_dir_path("Dir.path", path)?;
                check_count("Dir.entries", entries.len(), MAX_ENTRIES_PER_PAGE)?;
                let mut prev: Option<&[u8]> = None;
                for e in entries {
                    check_entry(e, naming)?;
                    if prev.is_some_and(|p| p >= e.name.as_slice()) {
                        return Err(invalid("Dir.entries.name", &e.name, "out of order or listed twice"));
                    }
                    prev = Some(&e.name);
                }
                Ok(())
            }
            Message::GetChunkList { group, path, content: _, start } => {
                check_word("group", group, MAX_GROUP_LEN)?;
                check_path("GetChunkList.path", path)?;
                if *start >= MAX_CHUNKS_PER_ENTRY {
                    return Err(ProtoError::Limit {
                        field: "GetChunkList.start",
                        count: *start,
                        max: MAX_CHUNKS_PER_ENTRY - 1,
                    });
                }
                Ok(())
            }
            Message::ChunkList { group, path, content: _, start, total, chunks } => {
                check_word("group", group, MAX_GROUP_LEN)?;
                check_path("ChunkList.path", path)?;
                if *total > MAX_CHUNKS_PER_ENTRY {
                    return Err(ProtoError::Limit {
                        field: "ChunkList.total",
                        count: *total,
                        max: MAX_CHUNKS_PER_ENTRY,
                    });
                }
                check_count("ChunkList.chunks", chunks.len(), MAX_CHUNKS_PER_PAGE)?;
                let end = start.checked_add(chunks.len() as u64).filter(|end| end <= total);
                let Some(end) = end else {
                    return Err(invalid(
                        "ChunkList.start",
                        start.to_string().as_bytes(),
                        "page runs past the list's total",
                    ));
                };
                if chunks.is_empty() && end < *total {
                    return Err(invalid("ChunkList.chunks", b"", "empty page before the end of the list"));
                }
                check_chunk_lens(path, *start, chunks).map(|_| ())
            }
            Message::GetChunks { group, files } => {
                check_word("group", group, MAX_GROUP_LEN)?;
                check_file_chunks(files)
            }
            Message::Chunk { hash, stored } => match stored.first() {
                None => Err(invalid("Chunk.stored", hash.short().as_bytes(), "empty: no tag byte")),
                Some(_) if stored.len() > MAX_STORED_CHUNK => Err(ProtoError::TooLong {
                    field: "Chunk.stored",
                    value: hash.short(),
                    len: stored.len(),
                    max: MAX_STORED_CHUNK,
                }),
                Some(&tag) if tag != chunk::TAG_RAW && tag != chunk::TAG_ZSTD => {
                    Err(invalid("Chunk.stored", hash.short().as_bytes(), "unknown stored-form tag"))
                }
                Some(_) => Ok(()),
            },
            Message::ChunksDone { missing } => {
                check_count("ChunksDone.missing", missing.len(), MAX_CHUNKS_PER_REQUEST)?;
                check_unique_hashes("ChunksDone.missing", missing.iter())
            }
            Message::Pull { group, dry_run: _ } => check_word("group", group, MAX_GROUP_LEN),
            Message::Pulled { changes, more: _, problems, problems_total } => {
                check_count("Pulled.changes", changes.len(), MAX_REPORTED_CHANGES)?;
                changes.iter().try_for_each(|c| check_path("Pulled.changes.path", &c.path))?;
                check_count("Pulled.problems", problems.len(), MAX_REPORTED_PROBLEMS)?;
                if *problems_total < problems.len() as u64 {
                    let total = problems_total.to_string();
                    return Err(invalid("Pulled.problems_total", total.as_bytes(), "fewer than the problems listed"));
                }
                problems.iter().try_for_each(|p| {
                    if p.len() > MAX_PROBLEM_LEN {
                        return Err(ProtoError::TooLong {
                            field: "Pulled.problems",
                            value: show(p.as_bytes()),
                            len: p.len(),
                            max: MAX_PROBLEM_LEN,
                        });
                    }
                    Ok(())
                })
            }
            Message::Refused { reason: _, message } => check_text("Refused.message", message),
            Message::Error { code: _, message } => check_text("Error.message", message),
            Message::Bye | Message::Progress | Message::Done => Ok(()),
        }
    }
}

/// Checks that `path` is a well-formed logical path: an include root's
/// logical path as a config writes it (`/vol/0/app/shared`, `%app%/shared`,
/// `/`), optionally followed by `/name` components.
///
/// Precisely: at most [`MAX_PATH_LEN`] bytes, no NUL, and one of `/`;
/// `//` followed by components (the children of the root `/`, as
/// [`crate::tree::join_logical`] names them); `/` followed by components;
/// `%NAME%` alone or followed by `/` and components. Every component is a
/// valid entry name ([`tree::validate_name`]): not empty, not `.` or `..`,
/// at most [`MAX_NAME_LEN`] bytes. A relative path (`a/b`, `../x`) is
/// refused: all paths are named from the root of the logical namespace.
pub fn validate_logical_path(path: &[u8]) -> Result<(), ProtoError> {
    check_path("path", path)
}

/// Checks that `path` is a well-formed logical path inside one of `roots`,
/// the logical paths of the group's include roots.
///
/// Inside means the path is a root or continues it with `/` and names;
/// the comparison is by component, not by bytes: `/a/bc` is not inside
/// `/a/b`. Under the root `/` the names follow a second `/` (`//etc`), as
/// the store joins them. The caller still applies the group's include and
/// exclude patterns, and never follows a symlink on the way to the path.
pub fn check_logical_path<S: AsRef<str>>(path: &[u8], roots: &[S]) -> Result<(), ProtoError> {
    validate_logical_path(path)?;
    let inside = roots.iter().any(|root| match path.strip_prefix(root.as_ref().as_bytes()) {
        Some([]) => true,
        Some([b'/', below @ ..]) => components_ok(below),
        _ => false,
    });
    if inside {
        return Ok(());
    }
    let roots: Vec<&str> = roots.iter().map(AsRef::as_ref).collect();
    Err(ProtoError::OutsideRoots { path: show(path), roots: roots.join(", ") })
}

/// Checks a whole chunk list of the file `name` (shown in errors) against
/// the file's size and content hash: at most [`MAX_CHUNKS_PER_ENTRY`]
/// chunks, each 1 to [`chunk::MAX_SIZE`] bytes, lengths adding up to
/// `size`, and [`chunk::content_hash`] equal to `content`.
///
/// The decoder applies it to inline chunk lists; a receiver that fetched a
/// list in `ChunkList` pages applies it to the assembled list.
pub fn check_chunk_list(name: &[u8], size: u64, content: &Hash, chunks: &[ChunkRef]) -> Result<(), ProtoError> {
    if chunks.len() as u64 > MAX_CHUNKS_PER_ENTRY {
        return Err(ProtoError::Limit { field: "chunk list", count: chunks.len() as u64, max: MAX_CHUNKS_PER_ENTRY });
    }
    let sum = check_chunk_lens(name, 0, chunks)?;
    if sum != size {
        return Err(ProtoError::ChunkSum { name: show(name), sum, size });
    }
    let actual = chunk::content_hash(chunks);
    if actual != *content {
        return Err(ProtoError::ContentMismatch { name: show(name), expected: *content, actual });
    }
    Ok(())
}

/// Cuts `text` to at most [`MAX_TEXT_LEN`] bytes, at a character boundary.
/// `text` cut to at most `max` bytes, at a character boundary.
pub(super) fn cut_text(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

pub(super) fn truncate_text(text: &mut String) {
    if text.len() > MAX_TEXT_LEN {
        let mut end = MAX_TEXT_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// Checks each chunk's length (chunk `start` is the first given) and
/// returns their sum.
fn check_chunk_lens(name: &[u8], start: u64, chunks: &[ChunkRef]) -> Result<u64, ProtoError> {
    let mut sum = 0u64;
    for (i, c) in chunks.iter().enumerate() {
        if c.len == 0 || c.len > chunk::MAX_SIZE {
            return Err(ProtoError::ChunkLen {
                name: show(name),
                index: start + i as u64,
                len: c.len,
                max: chunk::MAX_SIZE,
            });
        }
        sum += u64::from(c.len);
    }
    Ok(sum)
}

fn check_file_chunks(files: &[FileChunks]) -> Result<(), ProtoError> {
    if files.is_empty() {
        return Err(invalid("GetChunks.files", b"", "asks for nothing"));
    }
    check_count("GetChunks.files", files.len(), MAX_CHUNKS_PER_REQUEST)?;
    let mut total = 0usize;
    for f in files {
        check_path("GetChunks.files.path", &f.path)?;
        if f.hashes.is_empty() {
            return Err(invalid("GetChunks.files.hashes", &f.path, "asks for no chunk of this file"));
        }
        total += f.hashes.len();
    }
    check_count("GetChunks.files.hashes", total, MAX_CHUNKS_PER_REQUEST)?;
    check_unique_hashes("GetChunks.files.hashes", files.iter().flat_map(|f| &f.hashes))
}

fn check_unique_hashes<'a>(field: &'static str, hashes: impl Iterator<Item = &'a Hash>) -> Result<(), ProtoError> {
    let mut all: Vec<&Hash> = hashes.collect();
    all.sort_unstable();
    match all.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(invalid(field, w[0].short().as_bytes(), "listed twice")),
        None => Ok(()),
    }
}

/// Checks one entry, named as `naming` says.
fn check_entry(e: &WireEntry, naming: Naming) -> Result<(), ProtoError> {
    check_entry_name("entry.name", &e.name, naming)?;
    let name = e.name.as_slice();
    let kind = e.body.kind();
    if let Some(mode) = e.meta.mode {
        if mode > 0o7777 {
            return Err(invalid("entry.meta.mode", name, "has bits outside 0o7777"));
        }
        if kind == tree::Kind::Symlink {
            return Err(invalid("entry.meta.mode", name, "set on a symlink"));
        }
    }
    if let Some(t) = e.meta.mtime {
        if kind != tree::Kind::File {
            return Err(invalid("entry.meta.mtime", name, "set on a directory or symlink"));
        }
        if t.nanos >= 1_000_000_000 {
            return Err(invalid("entry.meta.mtime", name, "nanoseconds of a second or more"));
        }
    }
    match &e.body {
        Body::Symlink { target } => {
            if target.is_empty() {
                return Err(invalid("entry.body.target", name, "empty symlink target"));
            }
            if target.len() > MAX_LINK_LEN {
                return Err(ProtoError::TooLong {
                    field: "entry.body.target",
                    value: show(target),
                    len: target.len(),
                    max: MAX_LINK_LEN,
                });
            }
            if target.contains(&0) {
                return Err(invalid("entry.body.target", name, "symlink target contains NUL"));
            }
        }
        Body::File { size: 0, content } => {
            let empty = chunk::content_hash(&[]);
            if *content != empty {
                return Err(ProtoError::ContentMismatch { name: show(name), expected: *content, actual: empty });
            }
        }
        Body::File { .. } | Body::Dir { .. } => {}
    }
    check_version(name, &e.version)?;
    if !e.chunks.is_empty() {
        match &e.body {
            Body::File { size, content } if !e.deleted => {
                check_count("entry.chunks", e.chunks.len(), MAX_INLINE_CHUNKS)?;
                check_chunk_list(name, *size, content, &e.chunks)?;
            }
            _ => return Err(invalid("entry.chunks", name, "chunk list on a tombstone or on something not a file")),
        }
    }
    Ok(())
}

/// Checks a version vector: at most [`MAX_VERSION_HOSTS`] hosts, valid host
/// names, strictly increasing by host.
fn check_version(name: &[u8], v: &Version) -> Result<(), ProtoError> {
    check_count("entry.version", v.0.len(), MAX_VERSION_HOSTS)?;
    let bad = |host: &str, why| ProtoError::BadVersion { name: show(name), host: show(host.as_bytes()), why };
    let mut prev: Option<&str> = None;
    for (host, _) in &v.0 {
        if let Err(why) = word_rule(host, MAX_HOST_LEN) {
            return Err(bad(host, why));
        }
        match prev {
            Some(p) if p == host => return Err(bad(host, "names a host twice")),
            Some(p) if p > host.as_str() => return Err(bad(host, "is not sorted by host")),
            _ => {}
        }
        prev = Some(host);
    }
    Ok(())
}

/// Checks the `path` of a directory request or listing; says how its
/// entries are named.
fn check_dir_path(field: &'static str, path: &[u8]) -> Result<Naming, ProtoError> {
    if path.is_empty() {
        return Ok(Naming::Root);
    }
    check_path(field, path)?;
    Ok(Naming::Child)
}

fn check_entry_name(field: &'static str, name: &[u8], naming: Naming) -> Result<(), ProtoError> {
    match naming {
        Naming::Root => check_path(field, name),
        Naming::Child => match tree::validate_name(name) {
            Ok(()) => Ok(()),
            Err(tree::TreeError::Name { why, .. }) => Err(ProtoError::BadName { field, name: show(name), why }),
            Err(_) => Err(ProtoError::BadName { field, name: show(name), why: "invalid" }),
        },
    }
}

fn check_path(field: &'static str, path: &[u8]) -> Result<(), ProtoError> {
    if path.len() > MAX_PATH_LEN {
        return Err(ProtoError::TooLong { field, value: show(path), len: path.len(), max: MAX_PATH_LEN });
    }
    path_rule(path).map_err(|why| ProtoError::BadPath { field, path: show(path), why })
}

/// The shape of a logical path (see [`validate_logical_path`]).
fn path_rule(path: &[u8]) -> Result<(), &'static str> {
    if path.contains(&0) {
        return Err("contains NUL");
    }
    let below = match path {
        [] => return Err("empty"),
        b"/" => return Ok(()),
        [b'/', b'/', rest @ ..] => rest,
        [b'/', rest @ ..] => rest,
        [b'%', rest @ ..] => {
            let end = rest.iter().position(|&b| b == b'%').ok_or("unterminated %prefix%")?;
            let prefix = &rest[..end];
            if prefix.is_empty() || prefix.contains(&b'/') {
                return Err("%prefix% name is empty or contains /");
            }
            match &rest[end + 1..] {
                [] => return Ok(()),
                [b'/', rest @ ..] => rest,
                _ => return Err("%prefix% not followed by /"),
            }
        }
        _ => return Err("relative: a logical path starts with / or %prefix%"),
    };
    below.split(|&b| b == b'/').try_for_each(component_rule)
}

fn component_rule(c: &[u8]) -> Result<(), &'static str> {
    match c {
        [] => Err("empty component (doubled or trailing /)"),
        b"." | b".." => Err("has a . or .. component"),
        _ if c.len() > MAX_NAME_LEN => Err("component longer than 255 bytes"),
        _ => Ok(()),
    }
}

fn components_ok(below: &[u8]) -> bool {
    below.split(|&b| b == b'/').all(|c| component_rule(c).is_ok() && !c.contains(&0))
}

/// Host and group names: not empty, bounded, no whitespace or control
/// characters (csync2's config language cannot write them either).
fn word_rule(s: &str, max: usize) -> Result<(), &'static str> {
    if s.is_empty() {
        Err("empty")
    } else if s.len() > max {
        Err("too long")
    } else if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("contains whitespace or a control character")
    } else {
        Ok(())
    }
}

fn check_word(field: &'static str, s: &str, max: usize) -> Result<(), ProtoError> {
    match word_rule(s, max) {
        Ok(()) => Ok(()),
        Err("too long") => Err(ProtoError::TooLong { field, value: show(s.as_bytes()), len: s.len(), max }),
        Err(why) => Err(invalid(field, s.as_bytes(), why)),
    }
}

fn check_text(field: &'static str, s: &str) -> Result<(), ProtoError> {
    if s.len() > MAX_TEXT_LEN {
        return Err(ProtoError::TooLong { field, value: show(s.as_bytes()), len: s.len(), max: MAX_TEXT_LEN });
    }
    Ok(())
}

fn check_count(field: &'static str, count: usize, max: usize) -> Result<(), ProtoError> {
    if count > max {
        return Err(ProtoError::Limit { field, count: count as u64, max: max as u64 });
    }
    Ok(())
}

fn invalid(field: &'static str, value: &[u8], why: &'static str) -> ProtoError {
    ProtoError::Invalid { field, value: show(value), why }
}

#[cfg(test)]
mod tests {
    use super::super::frame::{decode_frame, encode_frame};
    use super::super::testutil::file_entry;
    use super::super::{Change, ChangeAction, ErrorCode, PROTOCOL_VERSION, Refusal};
    use super::*;
    use crate::tree::Timestamp;

    /// What the decoder says about `msg` sent over the wire.
    fn decoded(msg: &Message) -> Result<Message, ProtoError> {
        decode_frame(&encode_frame(msg)).map(|(m, _)| m)
    }

    fn refused(msg: &Message) -> ProtoError {
        match decoded(msg) {
            Ok(m) => panic!("decoder accepted {m:?}"),
            Err(e) => e,
        }
    }

    fn get_dir(path: &[u8]) -> Message {
        Message::GetDir { group: "app".into(), path: path.to_vec(), after: Vec::new() }
    }

    fn dir_with(entry: WireEntry) -> Message {
        Message::Dir { group: "app".into(), path: b"/srv/www".to_vec(), last_page: true, entries: vec![entry] }
    }

    fn pulled(paths: &[&[u8]]) -> Message {
        let changes = paths.iter().map(|p| Change { action: ChangeAction::Update, path: p.to_vec() }).collect();
        Message::Pulled { changes, more: 0, problems: vec![], problems_total: 0 }
    }

    #[test]
    fn dot_dot_paths_are_refused() {
        for p in [&b"../x"[..], b"/srv/../etc", b"/srv/..", b"%app%/..", b"//.."] {
            let e = refused(&get_dir(p));
            assert!(matches!(e, ProtoError::BadPath { .. }), "{p:?}: {e}");
        }
        let e = refused(&get_dir(b"../x"));
        assert!(e.to_string().contains("relative"), "{e}");
        assert!(matches!(refused(&get_dir(b"/srv/./x")), ProtoError::BadPath { why: "has a . or .. component", .. }));
    }

    #[test]
    fn relative_paths_are_refused_where_a_logical_path_is_expected() {
        for p in [&b"srv/www"[..], b"x", b"./x"] {
            let msg = Message::GetChunkList { group: "app".into(), path: p.to_vec(), content: Hash::of(b""), start: 0 };
            assert!(matches!(refused(&msg), ProtoError::BadPath { .. }), "{p:?}");
        }
    }

    #[test]
    fn absolute_path_where_a_name_is_expected_is_refused() {
        // A child's name is one component: a peer may not smuggle a path
        // (absolute or not) into it.
        for name in [&b"/etc/passwd"[..], b"/abs", b"a/b", b"a/../../b"] {
            let e = refused(&dir_with(file_entry(name, 1, 10)));
            assert!(matches!(e, ProtoError::BadName { why: "contains /", .. }), "{name:?}: {e}");
        }
        for name in [&b"."[..], b"..", b""] {
            assert!(matches!(refused(&dir_with(file_entry(name, 1, 10))), ProtoError::BadName { .. }), "{name:?}");
        }
    }

    #[test]
    fn name_of_256_bytes_is_refused_and_255_accepted() {
        decoded(&dir_with(file_entry(&[b'n'; 255], 1, 10))).unwrap();
        let e = refused(&dir_with(file_entry(&[b'n'; 256], 1, 10)));
        assert!(matches!(e, ProtoError::BadName { why: "longer than 255 bytes", .. }), "{e}");
    }

    #[test]
    fn paths_over_the_length_limit_are_refused() {
        let long = [b"/".as_slice(), &[b'p'; 200]].concat().repeat(21);
        assert!(long.len() > MAX_PATH_LEN);
        assert!(matches!(refused(&get_dir(&long)), ProtoError::TooLong { max: MAX_PATH_LEN, .. }));
        let component = [b"/".as_slice(), &[b'p'; 256]].concat();
        assert!(matches!(refused(&get_dir(&component)), ProtoError::BadPath { .. }));
    }

    #[test]
    fn nul_is_refused_in_paths_names_targets_and_hosts() {
        assert!(matches!(refused(&get_dir(b"/srv/a\0b")), ProtoError::BadPath { why: "contains NUL", .. }));
        assert!(matches!(refused(&dir_with(file_entry(b"a\0", 1, 1))), ProtoError::BadName { .. }));
        let mut link = file_entry(b"l", 0, 1);
        link.body = Body::Symlink { target: b"/etc/\0".to_vec() };
        link.meta = crate::tree::Meta::default();
        assert!(matches!(refused(&dir_with(link)), ProtoError::Invalid { field: "entry.body.target", .. }));
        let hello = Message::Hello { protocol: 1, host: "a\0b".into(), groups: vec![] };
        assert!(matches!(refused(&hello), ProtoError::Invalid { field: "host", .. }));
    }

    #[test]
    fn doubled_and_trailing_slashes_are_refused() {
        for p in [&b"/srv//www"[..], b"/srv/", b"///srv", b"//", b"%app%//x", b"%app%x", b"%%/x", b"%app"] {
            assert!(matches!(refused(&get_dir(p)), ProtoError::BadPath { .. }), "{p:?}");
        }
    }

    #[test]
    fn every_shape_of_logical_path_is_accepted() {
        for p in [&b"/"[..], b"//etc", b"//etc/x", b"/srv", b"/srv/www/a b/\xff", b"%app%", b"%app%/shared/x"] {
            validate_logical_path(p).unwrap();
            decoded(&get_dir(p)).unwrap();
        }
        // The empty path is the root record, whose children are named by
        // logical path.
        let root = Message::Dir {
            group: "app".into(),
            path: Vec::new(),
            last_page: true,
            // `%` sorts before `/`.
            entries: vec![file_entry(b"/etc/hosts", 1, 5), file_entry(b"%app%/shared", 1, 5)],
        };
        assert!(matches!(refused(&root), ProtoError::Invalid { .. }), "entries out of order");
        let Message::Dir { mut entries, .. } = root else { unreachable!() };
        entries.reverse();
        decoded(&Message::Dir { group: "app".into(), path: Vec::new(), last_page: true, entries }).unwrap();
        let bad_root = Message::Dir {
            group: "app".into(),
            path: Vec::new(),
            last_page: true,
            entries: vec![file_entry(b"etc", 1, 5)],
        };
        assert!(matches!(refused(&bad_root), ProtoError::BadPath { .. }));
    }

    #[test]
    fn chunk_lengths_must_add_up_to_the_file_size() {
        let mut e = file_entry(b"f", 3, 100);
        e.body = Body::File { size: 301, content: chunk::content_hash(&e.chunks) };
        let err = refused(&dir_with(e));
        assert!(matches!(err, ProtoError::ChunkSum { sum: 300, size: 301, .. }), "{err}");
    }

    #[test]
    fn chunk_list_must_hash_to_the_content_hash() {
        let mut e = file_entry(b"f", 3, 100);
        e.chunks.swap(0, 2);
        assert!(matches!(refused(&dir_with(e)), ProtoError::ContentMismatch { .. }));
    }

    #[test]
    fn chunks_of_zero_or_over_max_size_are_refused() {
        for len in [0, chunk::MAX_SIZE + 1] {
            let mut e = file_entry(b"f", 2, 10);
            e.chunks[1].len = len;
            e.body = Body::File { size: chunk::total_len(&e.chunks), content: chunk::content_hash(&e.chunks) };
            assert!(matches!(refused(&dir_with(e)), ProtoError::ChunkLen { index: 1, .. }), "{len}");
        }
        decoded(&dir_with(file_entry(b"f", 2, chunk::MAX_SIZE))).unwrap();
    }

    #[test]
    fn chunk_lists_only_on_live_files() {
        let mut tomb = file_entry(b"f", 2, 10);
        tomb.deleted = true;
        assert!(matches!(refused(&dir_with(tomb.clone())), ProtoError::Invalid { field: "entry.chunks", .. }));
        tomb.chunks.clear();
        decoded(&dir_with(tomb)).unwrap();
        let mut dir = file_entry(b"d", 1, 10);
        dir.body = Body::Dir { tree: Hash::of(b"") };
        dir.meta.mtime = None;
        assert!(matches!(refused(&dir_with(dir)), ProtoError::Invalid { field: "entry.chunks", .. }));
    }

    #[test]
    fn a_large_file_may_leave_its_chunk_list_out() {
        let mut e = file_entry(b"big", 2, 10);
        e.chunks.clear();
        assert!(e.chunks_left_out());
        decoded(&dir_with(e)).unwrap();
    }

    #[test]
    fn an_empty_file_has_the_empty_content_hash() {
        let mut e = file_entry(b"empty", 0, 1);
        decoded(&dir_with(e.clone())).unwrap();
        e.body = Body::File { size: 0, content: Hash::of(b"") };
        assert!(matches!(refused(&dir_with(e)), ProtoError::ContentMismatch { .. }));
    }

    #[test]
    fn unsorted_version_vectors_are_refused() {
        let mut e = file_entry(b"f", 1, 1);
        e.version = Version(vec![("b".into(), 1), ("a".into(), 2)]);
        let err = refused(&dir_with(e.clone()));
        assert!(matches!(err, ProtoError::BadVersion { why: "is not sorted by host", .. }), "{err}");
        e.version = Version(vec![("a".into(), 1), ("a".into(), 2)]);
        assert!(matches!(refused(&dir_with(e.clone())), ProtoError::BadVersion { why: "names a host twice", .. }));
        e.version = Version(vec![("".into(), 1)]);
        assert!(matches!(refused(&dir_with(e.clone())), ProtoError::BadVersion { why: "empty", .. }));
        e.version = Version((0..=MAX_VERSION_HOSTS).map(|i| (format!("h{i:05}"), 1)).collect());
        assert!(matches!(refused(&dir_with(e)), ProtoError::Limit { field: "entry.version", .. }));
    }

    #[test]
    fn metadata_must_fit_the_kind() {
        let mut e = file_entry(b"f", 1, 1);
        e.meta.mode = Some(0o10644);
        assert!(matches!(refused(&dir_with(e.clone())), ProtoError::Invalid { field: "entry.meta.mode", .. }));
        e.meta.mode = Some(0o644);
        e.meta.mtime = Some(Timestamp { secs: 0, nanos: 1_000_000_000 });
        assert!(matches!(refused(&dir_with(e.clone())), ProtoError::Invalid { field: "entry.meta.mtime", .. }));
        let mut link = file_entry(b"l", 0, 1);
        link.body = Body::Symlink { target: b"x".to_vec() };
        link.meta.mtime = None;
        assert!(matches!(refused(&dir_with(link.clone())), ProtoError::Invalid { field: "entry.meta.mode", .. }));
        link.meta.mode = None;
        decoded(&dir_with(link.clone())).unwrap();
        link.body = Body::Symlink { target: vec![b'x'; MAX_LINK_LEN + 1] };
        assert!(matches!(refused(&dir_with(link)), ProtoError::TooLong { field: "entry.body.target", .. }));
    }

    #[test]
    fn dir_entries_must_be_sorted_and_unique() {
        let msg = |names: &[&[u8]]| Message::Dir {
            group: "app".into(),
            path: b"/srv".to_vec(),
            last_page: false,
            entries: names.iter().map(|n| file_entry(n, 1, 1)).collect(),
        };
        decoded(&msg(&[b"a", b"b"])).unwrap();
        assert!(matches!(refused(&msg(&[b"b", b"a"])), ProtoError::Invalid { .. }));
        assert!(matches!(refused(&msg(&[b"a", b"a"])), ProtoError::Invalid { .. }));
    }

    #[test]
    fn roots_must_match_their_hash_and_names() {
        let e = file_entry(b"/etc/hosts", 1, 9);
        let live = RootSet {
            roots: vec![("/etc/hosts".to_owned(), Some(RootEntry { meta: e.meta.clone(), body: e.body.clone() }))],
        };
        let roots = |hash, entry: WireEntry| Message::Roots {
            group: "etc".into(),
            hash,
            versions: Hash::of(b"v"),
            roots: vec![("/etc/hosts".into(), Some(entry))],
        };
        decoded(&roots(live.hash(), e.clone())).unwrap();
        assert!(matches!(refused(&roots(Hash::of(b"x"), e.clone())), ProtoError::Invalid { field: "Roots.hash", .. }));
        // A deleted root counts as absent in the root hash.
        let mut tomb = e.clone();
        tomb.deleted = true;
        tomb.chunks.clear();
        let absent = RootSet { roots: vec![("/etc/hosts".to_owned(), None)] };
        decoded(&roots(absent.hash(), tomb)).unwrap();
        let renamed = WireEntry { name: b"/etc/passwd".to_vec(), ..e };
        assert!(matches!(refused(&roots(live.hash(), renamed)), ProtoError::Invalid { field: "Roots.roots.name", .. }));
    }

    #[test]
    fn chunk_requests_are_bounded_and_unique() {
        let req = |hashes: Vec<Hash>| Message::GetChunks {
            group: "app".into(),
            files: vec![FileChunks { path: b"/srv/f".to_vec(), content: Hash::of(b"c"), hashes }],
        };
        let many: Vec<Hash> = (0..=MAX_CHUNKS_PER_REQUEST).map(|i| Hash::of(&i.to_le_bytes())).collect();
        decoded(&req(many[..MAX_CHUNKS_PER_REQUEST].to_vec())).unwrap();
        assert!(matches!(refused(&req(many.clone())), ProtoError::Limit { .. }));
        assert!(matches!(refused(&req(vec![many[0], many[0]])), ProtoError::Invalid { why: "listed twice", .. }));
        assert!(matches!(refused(&req(vec![])), ProtoError::Invalid { .. }));
        let none = Message::GetChunks { group: "app".into(), files: vec![] };
        assert!(matches!(refused(&none), ProtoError::Invalid { why: "asks for nothing", .. }));
        // The bound is on the request's total, not per file.
        let split = Message::GetChunks {
            group: "app".into(),
            files: many
                .chunks(200)
                .map(|h| FileChunks { path: b"/srv/f".to_vec(), content: Hash::of(b"c"), hashes: h.to_vec() })
                .collect(),
        };
        assert!(matches!(refused(&split), ProtoError::Limit { field: "GetChunks.files.hashes", count: 257, .. }));
    }

    #[test]
    fn chunk_frames_are_bounded_and_tagged() {
        let chunk = |stored: Vec<u8>| Message::Chunk { hash: Hash::of(b""), stored };
        assert!(matches!(refused(&chunk(vec![])), ProtoError::Invalid { .. }));
        assert!(matches!(refused(&chunk(vec![7, 1, 2])), ProtoError::Invalid { why: "unknown stored-form tag", .. }));
        assert!(matches!(refused(&chunk(vec![0; MAX_STORED_CHUNK + 1])), ProtoError::TooLong { .. }));
        decoded(&chunk(vec![0; MAX_STORED_CHUNK])).unwrap();
    }

    #[test]
    fn chunk_list_pages_stay_inside_their_total() {
        let page = |start, total, n| Message::ChunkList {
            group: "app".into(),
            path: b"/srv/big".to_vec(),
            content: Hash::of(b"c"),
            start,
            total,
            chunks: file_entry(b"x", n, 5).chunks,
        };
        decoded(&page(0, 10, 4)).unwrap();
        decoded(&page(6, 10, 4)).unwrap();
        assert!(matches!(refused(&page(8, 10, 4)), ProtoError::Invalid { field: "ChunkList.start", .. }));
        assert!(matches!(refused(&page(u64::MAX, u64::MAX, 1)), ProtoError::Limit { .. }));
        assert!(matches!(refused(&page(2, 10, 0)), ProtoError::Invalid { field: "ChunkList.chunks", .. }));
        assert!(matches!(refused(&page(0, MAX_CHUNKS_PER_ENTRY + 1, 1)), ProtoError::Limit { .. }));
    }

    #[test]
    fn hello_names_and_groups_are_checked() {
        let hello = |host: &str, groups: &[&str]| Message::Hello {
            protocol: PROTOCOL_VERSION,
            host: host.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        decoded(&hello("app0.example.com", &["app", "etc"])).unwrap();
        assert!(matches!(refused(&hello("app0", &["app", "app"])), ProtoError::Invalid { why: "listed twice", .. }));
        assert!(matches!(refused(&hello("app 0", &[])), ProtoError::Invalid { field: "host", .. }));
        assert!(matches!(refused(&hello("", &[])), ProtoError::Invalid { field: "host", .. }));
        assert!(matches!(refused(&hello(&"h".repeat(256), &[])), ProtoError::TooLong { field: "host", .. }));
        let many: Vec<String> = (0..=MAX_GROUPS).map(|i| format!("g{i}")).collect();
        let msg = Message::Welcome { protocol: 1, host: "a".into(), groups: many };
        assert!(matches!(refused(&msg), ProtoError::Limit { field: "groups", .. }));
    }

    #[test]
    fn long_error_text_is_refused_and_our_own_is_cut() {
        let msg = Message::Error { code: ErrorCode::Internal, message: "é".repeat(MAX_TEXT_LEN) };
        assert!(matches!(refused(&msg), ProtoError::TooLong { field: "Error.message", .. }));
        let err = ProtoError::OutsideRoots { path: "x".into(), roots: "é".repeat(MAX_TEXT_LEN) };
        decoded(&Message::error(&err)).unwrap();
    }

    #[test]
    fn logical_paths_are_inside_a_root_by_component() {
        let roots = vec!["/a/b".to_owned(), "%app%/shared".to_owned()];
        for inside in [&b"/a/b"[..], b"/a/b/c", b"/a/b/c/d", b"%app%/shared", b"%app%/shared/img/x.png"] {
            check_logical_path(inside, &roots).unwrap_or_else(|e| panic!("{inside:?}: {e}"));
        }
        for outside in [&b"/a/bc"[..], b"/a", b"/a/c", b"/etc/passwd", b"%app%", b"%app%/sharedx", b"%other%/shared/x"]
        {
            let e = check_logical_path(outside, &roots).unwrap_err();
            assert!(matches!(e, ProtoError::OutsideRoots { .. }), "{outside:?}: {e}");
            assert_eq!(e.code(), ErrorCode::NotAllowed);
        }
        for malformed in [&b"/a/b/"[..], b"/a/b//c", b"/a/b/../../etc", b"/a/b/./c", b"a/b/c", b"/a/b/c\0"] {
            let e = check_logical_path(malformed, &roots).unwrap_err();
            assert!(matches!(e, ProtoError::BadPath { .. }), "{malformed:?}: {e}");
        }
    }

    #[test]
    fn below_the_root_slash_names_follow_a_second_slash() {
        // The store joins the root `/` and a name as `//name`.
        let roots = vec!["/".to_owned()];
        check_logical_path(b"/", &roots).unwrap();
        check_logical_path(&crate::tree::join_logical(b"/", b"etc"), &roots).unwrap();
        check_logical_path(b"//etc/x", &roots).unwrap();
        assert!(check_logical_path(b"/etc", &roots).is_err());
    }

    #[test]
    fn no_roots_means_nothing_is_inside() {
        let none: [&str; 0] = [];
        assert!(matches!(check_logical_path(b"/a", &none), Err(ProtoError::OutsideRoots { .. })));
    }

    #[test]
    fn pulled_paths_must_be_logical_paths() {
        decoded(&pulled(&[b"/srv/www/a", b"%app%/shared", b"/", b"//etc/hosts"])).unwrap();
        for p in [&b"../x"[..], b"x/y", b"/srv/../etc", b"", b"//", b"/srv/", b"/srv//x", b"/srv/a\0"] {
            let msg = pulled(&[b"/srv/ok", p]);
            let e = msg.validate().unwrap_err();
            assert!(matches!(e, ProtoError::BadPath { field: "Pulled.changes.path", .. }), "{p:?}: {e}");
            assert!(matches!(refused(&msg), ProtoError::BadPath { .. }), "{p:?}");
        }
        let e = pulled(&[b"../x"]).validate().unwrap_err();
        assert!(e.to_string().contains("relative"), "{e}");
        let e = pulled(&[b""]).validate().unwrap_err();
        assert!(matches!(e, ProtoError::BadPath { why: "empty", .. }), "{e}");
    }

    #[test]
    fn pulled_lists_at_most_the_reported_changes() {
        let change = |i: usize| Change { action: ChangeAction::Create, path: format!("/srv/f{i}").into_bytes() };
        let full = Message::Pulled {
            changes: (0..MAX_REPORTED_CHANGES).map(change).collect(),
            more: u64::MAX,
            problems: vec![],
            problems_total: 0,
        };
        decoded(&full).unwrap();
        let over = Message::Pulled {
            changes: (0..=MAX_REPORTED_CHANGES).map(change).collect(),
            more: 0,
            problems: vec![],
            problems_total: 0,
        };
        let limit = ProtoError::Limit {
            field: "Pulled.changes",
            count: MAX_REPORTED_CHANGES as u64 + 1,
            max: MAX_REPORTED_CHANGES as u64,
        };
        // Refused by the decoder from the declared length, and by
        // validation on its own.
        assert_eq!(refused(&over).to_string(), limit.to_string());
        assert_eq!(over.validate().unwrap_err().to_string(), limit.to_string());
    }

    #[test]
    fn pulled_problems_are_bounded_in_count_and_length_and_total() {
        let pulled = |problems: Vec<String>, problems_total: u64| Message::Pulled {
            changes: vec![],
            more: 0,
            problems,
            problems_total,
        };
        let full = pulled((0..MAX_REPORTED_PROBLEMS).map(|_| "x".repeat(MAX_PROBLEM_LEN)).collect(), u64::MAX);
        decoded(&full).unwrap();
        let over = pulled((0..=MAX_REPORTED_PROBLEMS).map(|i| i.to_string()).collect(), 1000);
        assert!(matches!(refused(&over), ProtoError::Limit { field: "Pulled.problems", .. }), "{}", refused(&over));
        let long = pulled(vec!["x".repeat(MAX_PROBLEM_LEN + 1)], 1);
        assert!(matches!(long.validate().unwrap_err(), ProtoError::TooLong { field: "Pulled.problems", .. }));
        let short_total = pulled(vec!["a".into(), "b".into()], 1);
        assert!(matches!(
            short_total.validate().unwrap_err(),
            ProtoError::Invalid { field: "Pulled.problems_total", .. }
        ));
    }

    #[test]
    fn pull_names_a_valid_group_and_refusals_bound_their_text() {
        decoded(&Message::Pull { group: "app".into(), dry_run: true }).unwrap();
        for group in ["", "a b", "a\n"] {
            let msg = Message::Pull { group: group.into(), dry_run: false };
            assert!(matches!(refused(&msg), ProtoError::Invalid { field: "group", .. }), "{group:?}");
        }
        let long = Message::Pull { group: "g".repeat(MAX_GROUP_LEN + 1), dry_run: false };
        assert!(matches!(refused(&long), ProtoError::TooLong { field: "group", .. }));
        let msg = Message::Refused { reason: Refusal::ReceiveOnly, message: "x".repeat(MAX_TEXT_LEN + 1) };
        assert!(matches!(refused(&msg), ProtoError::TooLong { field: "Refused.message", .. }));
    }

    #[test]
    fn check_chunk_list_bounds_the_count() {
        let e = file_entry(b"f", 2, 10);
        let Body::File { size, content } = e.body else { unreachable!() };
        check_chunk_list(b"f", size, &content, &e.chunks).unwrap();
        assert!(matches!(check_chunk_list(b"f", size + 1, &content, &e.chunks), Err(ProtoError::ChunkSum { .. })));
    }
}
