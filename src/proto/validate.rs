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
use crate::store::Version;
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
            Message::Roots { group, hash, roots } => {
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
            Message::Offer { group, path, entry, dry_run: _ } => {
                check_word("group", group, MAX_GROUP_LEN)?;
                let naming = check_dir_path("Offer.path", path)?;
                check_entry(entry, naming)
            }
            Message::Refused { reason: _, message } => check_text("Refused.message", message),
            Message::Error { code: _, message } => check_text("Error.message", message),
            Message::Accepted | Message::Bye => Ok(()),
        }
    }
}

/// Checks that `path` is a well-formed logical path: an include root's
/// logical path as a config writes it (`/vol/0/app/shared`, `%app%/shared`,
/// `/`), optionally followed by `/name` components.
///
/// Precisely: at most [`MAX_PATH_LEN`] bytes, no NUL, and one of `/`;
/// `//` followed by components (the children of the root `/`, as
/// [`crate::store::join_logical`] names them); `/` followed by components;
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
pub fn check_logical_path(path: &[u8], roots: &[String]) -> Result<(), ProtoError> {
    validate_logical_path(path)?;
    let inside = roots.iter().any(|root| match path.strip_prefix(root.as_bytes()) {
        Some([]) => true,
        Some([b'/', below @ ..]) => components_ok(below),
        _ => false,
    });
    if inside { Ok(()) } else { Err(ProtoError::OutsideRoots { path: show(path), roots: roots.join(", ") }) }
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
    for c in below.split(|&b| b == b'/') {
        if let Err(why) = component_rule(c) {
            return Err(why);
        }
    }
    Ok(())
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
