//! The properties the fuzz targets check, written once for the targets
//! (`tests/fuzz`) and for the regression test that replays their corpus
//! in the normal suite (`tests/integration/fuzz_corpus.rs`).
//!
//! Terms. A *target* is one decoder fed arbitrary bytes; [`TARGETS`] names
//! them all, and `fixtures/fuzz/<target>/` holds each one's *corpus*: the
//! inputs that reach new code, minimized, with any input that once made a
//! check fail kept under `regressions/`. A *check* (`check_<target>`)
//! decodes one input and panics when a property fails; an input the
//! decoder refuses is fine as long as the refusal is an error value.
//! Every check goes beyond "no panic": what decodes must encode and decode
//! back to itself, and [`check_pattern`] compares the csync2 matcher with
//! glibc's `fnmatch`, the matcher csync2 itself uses.
//!
//! Not part of snapsync's interface: public only so that the fuzz crate,
//! which builds against the library, can call it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::chunk::{self, ChunkError};
use crate::config::{self, Class, Matcher, Pattern, PatternKind};
use crate::hash::Hash;
use crate::proto::{self, ProtoError};
use crate::store::{DirRecord, DirView};
use crate::tree::Node;

/// A target's check: panics when a property fails on the input.
pub type Check = fn(&[u8]);

/// Every target, by the name of its corpus directory and fuzz target.
pub const TARGETS: [(&str, Check); 6] = [
    ("frame", check_frame),
    ("tree_node", check_tree_node),
    ("dir_record", check_dir_record),
    ("chunk", check_chunk),
    ("config", check_config),
    ("pattern", check_pattern),
];

/// The check of the target called `name`.
pub fn check_for(name: &str) -> Option<Check> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|&(_, check)| check)
}

/// [`proto::decode_frame`]: what decodes is a valid message that takes no
/// more bytes than the frame declared, re-encodes to a frame no longer
/// than the one read (the encoding is the shortest) and decodes back to
/// itself; every cut of a decoded frame is refused as truncated.
pub fn check_frame(data: &[u8]) {
    let (msg, used) = match proto::decode_frame(data) {
        Ok(ok) => ok,
        Err(ProtoError::Truncated { needed, have }) => {
            assert_eq!(have, data.len(), "Truncated names the bytes at hand");
            assert!(needed > have, "Truncated asks for more than it has: {needed} <= {have}");
            return;
        }
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert!(used <= data.len() && used >= proto::FRAME_HEADER_LEN);
    msg.validate().expect("a decoded message is valid");
    let again = proto::encode_frame(&msg);
    assert!(again.len() <= used, "re-encoded frame is longer ({} > {used}): {msg:?}", again.len());
    let (back, back_used) = proto::decode_frame(&again).expect("a re-encoded frame decodes");
    assert_eq!(back, msg, "message changed through encode/decode");
    assert_eq!(back_used, again.len());
    for cut in [0, 1, proto::FRAME_HEADER_LEN, used - 1] {
        if cut < used {
            assert!(
                matches!(proto::decode_frame(&data[..cut]), Err(ProtoError::Truncated { .. })),
                "a frame cut at {cut} of {used} bytes is not refused as truncated"
            );
        }
    }
}

/// [`Node::decode`]: a node that decodes is canonical: it encodes to
/// exactly the bytes it was decoded from, so its hash is the hash of those
/// bytes.
pub fn check_tree_node(data: &[u8]) {
    let Ok(node) = Node::decode(data).map_err(|e| e.to_string()) else {
        return;
    };
    assert_eq!(node.encode(), data, "a decoded node is not in canonical form: {node:?}");
    assert_eq!(node.hash(), Node::hash_encoded(data));
}

/// [`DirRecord::decode`]: what decodes encodes (no longer) and decodes
/// back to itself, and is refused with a byte after it; a scan's
/// [`DirView`] of the same bytes parses exactly when the record decodes,
/// and agrees with it child by child.
pub fn check_dir_record(data: &[u8]) {
    let view = DirView::decode(data.to_vec());
    let Ok(record) = DirRecord::decode(data) else {
        assert!(view.is_err(), "a view of bytes that do not decode as a record");
        return;
    };
    let view = view.expect("a record that decodes parses as a view");
    assert_eq!(view.len(), record.children.len());
    for (i, (name, rec)) in record.children.iter().enumerate() {
        assert_eq!(view.name(i), name.as_slice());
        assert_eq!((view.brief(i).stat.clone(), view.brief(i).deleted), (rec.stat.clone(), rec.deleted));
        assert_eq!(view.full(i), rec);
    }
    let again = record.encode();
    assert!(again.len() <= data.len(), "re-encoded record is longer");
    assert_eq!(DirRecord::decode(&again).expect("a re-encoded record decodes"), record);
    let mut longer = data.to_vec();
    longer.push(0);
    assert!(DirRecord::decode(&longer).is_err(), "a record with a byte after it decodes");
}

/// [`chunk::decode`] of a stored form: checked against a hash it cannot
/// match, it is refused with an error that names that hash and, when the
/// payload decodes, the hash it does have; under that hash it decodes to
/// at most [`chunk::MAX_SIZE`] bytes (the payload itself when raw), and
/// those bytes encode to a stored form that decodes back to them.
pub fn check_chunk(data: &[u8]) {
    let wrong = Hash([0; 32]);
    let actual = match chunk::decode(&wrong, data) {
        Ok(bytes) => panic!("{} bytes hash to the all-zero hash", bytes.len()),
        Err(ChunkError::HashMismatch { expected, actual }) => {
            assert_eq!(expected, wrong);
            actual
        }
        Err(e) => {
            assert_eq!(*e.hash(), wrong, "the error names another chunk: {e}");
            return;
        }
    };
    let bytes = chunk::decode(&actual, data).expect("the stored form decodes under the hash it reported");
    assert!(bytes.len() <= chunk::MAX_SIZE as usize, "decoded {} bytes", bytes.len());
    if data[0] == chunk::TAG_RAW {
        assert_eq!(bytes, &data[1..]);
    }
    let stored = chunk::encode(&bytes);
    assert!(stored.len() <= bytes.len() + 1, "the stored form is larger than raw");
    assert_eq!(chunk::decode(&actual, &stored).expect("a re-encoded chunk decodes"), bytes);
}

/// Where config text under test claims to come from. Relative
/// `config FILE;` includes are read from beside it: the directory does not
/// exist, so they fail the same way on every machine.
const CONFIG_FILE: &str = "/nonexistent/snapsync-fuzz/snapsync.cfg";

/// [`config::parse_str`] (lexer and parser) and [`config::Config::resolve`]:
/// parsing the same text twice gives the same result; an error or warning
/// that points into the text names a line and column that exist; a parsed
/// config resolves (or is refused) for each of its hosts, and a resolved
/// group's matcher classifies its include roots.
pub fn check_config(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new(CONFIG_FILE);
    let lines: Vec<&str> = src.split('\n').collect();
    let in_text = |l: &config::Location| {
        if l.file == file {
            assert!(l.line >= 1 && l.line as usize <= lines.len(), "line {} of {}", l.line, lines.len());
            let width = lines[l.line as usize - 1].chars().count();
            assert!(
                l.column >= 1 && l.column as usize <= width + 1,
                "column {} of {width} at line {}",
                l.column,
                l.line
            );
        }
    };
    let parsed = config::parse_str(src, file);
    match &parsed {
        Err(e) => {
            let _ = e.to_string();
            if let Some(l) = e.location() {
                in_text(l);
            }
        }
        Ok(c) => {
            for w in &c.warnings {
                in_text(&w.location);
                let _ = w.to_string();
            }
            let hosts: Vec<&str> = c.groups.iter().flat_map(|g| &g.hosts).map(|h| h.name.as_str()).collect();
            for host in hosts.iter().take(8) {
                match c.resolve(host) {
                    Ok(groups) => {
                        assert!(!groups.is_empty(), "{host} resolves to no group");
                        for g in &groups {
                            for root in &g.roots {
                                let _ = g.matcher.classify(&root.local);
                            }
                        }
                    }
                    Err(e) => {
                        let _ = e.to_string();
                    }
                }
            }
        }
    }
    let again = config::parse_str(src, file);
    match (&parsed, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "parsing is not deterministic"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "parsing is not deterministic"),
        _ => panic!("parsing is not deterministic"),
    }
}

/// The csync2 pattern matcher against csync2's own rules over glibc's
/// `fnmatch` ([`fnmatch::classify`]).
///
/// The input is text: each line but the last is a pattern whose first
/// character says its kind (`+` include, `-` exclude, `=` compare, `~`
/// include with compare mode on), the last line is the path. The path is
/// made clean as csync2 names paths (absolute, no empty component, no
/// trailing `/`). Input that is not printable ASCII is skipped: glibc
/// matches bytes in the C locale and globset matches characters, which
/// only agree on ASCII.
pub fn check_pattern(data: &[u8]) {
    if data.len() > 512 || !data.iter().all(|&b| b == b'\n' || (b' '..=b'~').contains(&b)) {
        return;
    }
    let text = std::str::from_utf8(data).expect("ASCII");
    let mut lines: Vec<&str> = text.split('\n').collect();
    let raw_path = lines.pop().unwrap_or_default();
    let mut compare_mode = false;
    let mut patterns = Vec::new();
    for line in lines.iter().take(8) {
        let kind = match line.as_bytes().first() {
            Some(b'+') => PatternKind::Include,
            Some(b'-') => PatternKind::Exclude,
            Some(b'=') => PatternKind::Compare,
            Some(b'~') => {
                compare_mode = true;
                PatternKind::Include
            }
            _ => return,
        };
        patterns.push(Pattern::new(kind, &line[1..]));
    }
    let parts: Vec<&str> = raw_path.split('/').filter(|p| !p.is_empty()).collect();
    let path = format!("/{}", parts.join("/"));

    // csync2 accepts every pattern, so the translation must too.
    let m =
        Matcher::new(&patterns, compare_mode).unwrap_or_else(|e| panic!("patterns {patterns:?} do not compile: {e}"));
    let active: Vec<Pattern> =
        patterns.iter().filter(|p| compare_mode || p.kind != PatternKind::Compare).cloned().collect();
    let class = m.classify(Path::new(&path));
    assert_eq!(m.is_included(Path::new(&path)), class == Class::Included);
    // Collating symbols and equivalence classes (`[.a.]`, `[=a=]`) are
    // compared only in the forms the matcher follows glibc in: glibc fails
    // the whole match at an unterminated `[.` or a symbol of several
    // characters, even after a member that matched, which the translation
    // to one character class cannot express. No csync2 config is known to
    // use them.
    if patterns.iter().any(|p| p.text.contains("[.") || p.text.contains("[=")) {
        return;
    }
    assert_eq!(class, fnmatch::classify(&active, &path), "patterns {active:?} on {path:?}");
    let reached = path
        .match_indices('/')
        .all(|(i, _)| fnmatch::classify(&active, if i == 0 { "/" } else { &path[..i] }) != Class::Excluded);
    assert_eq!(
        m.admits(Path::new(OsStr::from_bytes(path.as_bytes()))),
        class == Class::Included && reached,
        "admits: patterns {active:?} on {path:?}"
    );
}

/// csync2's matching written directly over glibc's `fnmatch`: the
/// reference the matcher is compared with, here and in its unit tests.
pub mod fnmatch {
    use std::ffi::{CString, c_char, c_int};

    use crate::config::{Class, Pattern};

    /// glibc's `FNM_PATHNAME`.
    pub const FNM_PATHNAME: c_int = 1;
    /// glibc's `FNM_LEADING_DIR`.
    pub const FNM_LEADING_DIR: c_int = 1 << 3;

    unsafe extern "C" {
        fn fnmatch(pattern: *const c_char, string: *const c_char, flags: c_int) -> c_int;
    }

    /// Whether glibc's `fnmatch` matches `string` with `pattern`.
    ///
    /// # Panics
    ///
    /// When either holds a NUL byte.
    pub fn matches(pattern: &str, string: &str, flags: c_int) -> bool {
        let p = CString::new(pattern).expect("pattern without NUL");
        let s = CString::new(string).expect("string without NUL");
        // SAFETY: both are valid NUL-terminated strings that outlive the call.
        unsafe { fnmatch(p.as_ptr(), s.as_ptr(), flags) == 0 }
    }

    /// csync2's `csync_match_file` (and `csync_step_into` for
    /// [`Class::Ancestor`]) for one group's active patterns.
    pub fn classify(patterns: &[Pattern], path: &str) -> Class {
        let base = path.rsplit('/').next().unwrap_or(path);
        let (mut in_path, mut in_base) = (false, true);
        for p in patterns {
            let pathname = if p.star_matches_slashes() { 0 } else { FNM_PATHNAME };
            if !p.is_path_pattern() {
                if matches(&p.text, base, 0) {
                    in_base = p.kind.is_include();
                }
            } else if matches(&p.text, path, FNM_LEADING_DIR | pathname) {
                in_path = p.kind.is_include();
            }
        }
        if in_path && in_base {
            return Class::Included;
        }
        if path == "/" {
            return Class::Ancestor;
        }
        for p in patterns.iter().filter(|p| p.is_path_pattern() && p.kind.is_include()) {
            let pathname = if p.star_matches_slashes() { 0 } else { FNM_PATHNAME };
            let mut cut = p.text.as_str();
            while let Some(i) = cut.rfind('/') {
                cut = &cut[..i];
                if matches(cut, path, pathname) {
                    return Class::Ancestor;
                }
            }
        }
        Class::Excluded
    }
}

#[cfg(test)]
mod seeds;
