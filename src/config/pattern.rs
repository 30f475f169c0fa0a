//! Include/exclude matching with csync2's semantics, on top of globset.
//!
//! csync2 matches with libc `fnmatch`. A *path pattern* is matched against
//! the whole path with `FNM_PATHNAME | FNM_LEADING_DIR`: `*`, `?` and
//! bracket expressions never match `/`, and a pattern that matches a
//! leading run of whole components matches everything below it (`/a/b`
//! matches `/a/b/c`). A pattern that contains `**` anywhere is in *star
//! mode*: it drops `FNM_PATHNAME`, so every `*` in it matches `/` too. A
//! *basename pattern* is matched against the last path component alone,
//! with no flags.
//!
//! A path's *class* follows csync2's `csync_match_file`. Patterns are
//! looked at in order and the last match wins, separately for path
//! patterns (default: not included) and basename patterns (default:
//! included); the path is [`Class::Included`] when both end up "include".
//! Otherwise it is an [`Class::Ancestor`] when the walk must still descend
//! into it because an include path pattern, cut at one of its `/`, matches
//! it (csync2's `csync_step_into`; excludes play no part there), and
//! [`Class::Excluded`] when it can be pruned.
//!
//! The fnmatch syntax is translated to globset's: runs of `*` collapse to
//! one `*` (globset's `**` means something else), `{` and `}` are literal,
//! backslash escapes stay escapes, bracket expressions keep their fnmatch
//! meaning (`!` or `^` negation, leading `]`, ranges, POSIX classes), and an
//! unterminated `[` is a literal `[`. `FNM_LEADING_DIR` is had by also
//! matching `PATTERN/**`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use globset::{Candidate, Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use super::model::{Pattern, PatternKind};
use super::{ConfigError, Location};

/// What a walk does with a path, given a group's patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// The path belongs to the group: it is synchronized, and if it is a
    /// directory the walk descends into it.
    Included,
    /// The path is not synchronized itself, but an include pattern can
    /// match below it, so a walk must descend into it (`/srv` for
    /// `include /srv/www`, `/a/x` for `include /a/*/c`).
    Ancestor,
    /// Neither: a walk prunes the path and everything below it.
    Excluded,
}

/// A group's compiled include/exclude (and, in compare mode, compare)
/// patterns.
#[derive(Debug, Clone)]
pub struct Matcher {
    patterns: Vec<Pattern>,
    paths: GlobSet,
    path_rule: Vec<usize>,
    bases: GlobSet,
    base_rule: Vec<usize>,
    ancestors: GlobSet,
    /// No pattern excludes ([`Matcher::excludes_nothing`]).
    excludes_nothing: bool,
}

impl Matcher {
    /// Compiles `patterns` (prefix references already expanded, or matched
    /// literally). Compare patterns count as includes when `compare_mode`
    /// is set and are ignored otherwise, as in csync2.
    pub fn new(patterns: &[Pattern], compare_mode: bool) -> Result<Matcher, ConfigError> {
        let patterns: Vec<Pattern> =
            patterns.iter().filter(|p| compare_mode || p.kind != PatternKind::Compare).cloned().collect();
        let mut paths = GlobSetBuilder::new();
        let mut path_rule = Vec::new();
        let mut bases = GlobSetBuilder::new();
        let mut base_rule = Vec::new();
        let mut ancestors = GlobSetBuilder::new();
        for (rule, p) in patterns.iter().enumerate() {
            let invalid =
                |source| ConfigError::InvalidPattern { location: p.location.clone(), pattern: p.text.clone(), source };
            let star = p.star_matches_slashes();
            if p.is_path_pattern() {
                for glob in leading_dir_globs(&p.text, star).map_err(invalid)? {
                    paths.add(glob);
                    path_rule.push(rule);
                }
                if p.kind.is_include() {
                    // Every cut of the pattern at a '/' (csync2 cuts the raw
                    // text, even inside brackets).
                    for (i, _) in p.text.match_indices('/').filter(|&(i, _)| i > 0) {
                        ancestors.add(glob(&p.text[..i], !star).map_err(invalid)?);
                    }
                }
            } else {
                bases.add(glob(&p.text, false).map_err(invalid)?);
                base_rule.push(rule);
            }
        }
        let build = |b: GlobSetBuilder| {
            b.build().map_err(|source| ConfigError::InvalidPattern {
                location: Location::default(),
                pattern: String::new(),
                source,
            })
        };
        Ok(Matcher {
            excludes_nothing: patterns.iter().all(|p| p.kind.is_include()),
            paths: build(paths)?,
            path_rule,
            bases: build(bases)?,
            base_rule,
            ancestors: build(ancestors)?,
            patterns,
        })
    }

    /// The patterns this matcher applies, in order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// The class of `path` on its own, exactly as csync2 decides it for one
    /// name. Paths are absolute; a trailing `/` is ignored.
    ///
    /// This looks at `path` alone: below a directory that a basename
    /// pattern excludes, files can still classify as included, although a
    /// walk never reaches them. Use [`Matcher::admits`] for paths that do
    /// not come from a walk (for example from a peer).
    pub fn classify(&self, path: &Path) -> Class {
        let bytes = trim_trailing_slashes(path.as_os_str().as_bytes());
        let whole = Path::new(OsStr::from_bytes(bytes));
        let base = match bytes.iter().rposition(|&b| b == b'/') {
            Some(i) => &bytes[i + 1..],
            None => bytes,
        };
        let whole = Candidate::new(whole);
        // The last matching pattern of a class decides it. A walk asks for
        // every entry: the matches go into a buffer of the thread's.
        thread_local! {
            static MATCHES: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let last_rule = |set: &GlobSet, map: &[usize], c: &Candidate<'_>| {
            if set.is_empty() {
                return None;
            }
            MATCHES.with_borrow_mut(|m| {
                set.matches_candidate_into(c, m);
                m.iter().map(|&g| map[g]).max()
            })
        };
        let path_included =
            last_rule(&self.paths, &self.path_rule, &whole).is_some_and(|rule| self.patterns[rule].kind.is_include());
        let base_included = path_included
            && (self.bases.is_empty()
                || last_rule(&self.bases, &self.base_rule, &Candidate::new(OsStr::from_bytes(base)))
                    .is_none_or(|rule| self.patterns[rule].kind.is_include()));
        if path_included && base_included {
            Class::Included
        } else if bytes == b"/" || self.ancestors.is_match_candidate(&whole) {
            Class::Ancestor
        } else {
            Class::Excluded
        }
    }

    /// Whether no pattern excludes. Then everything below an included path
    /// is included too: the include pattern that matches the path matches
    /// everything below it (`FNM_LEADING_DIR`), and no later pattern can
    /// exclude. A walk then classifies nothing below an included directory.
    pub fn excludes_nothing(&self) -> bool {
        self.excludes_nothing
    }

    /// Whether `path` is synchronized: [`Class::Included`].
    pub fn is_included(&self, path: &Path) -> bool {
        self.classify(path) == Class::Included
    }

    /// Whether a walk from `/` reaches `path` and finds it included: the
    /// path is [`Class::Included`] and none of its ancestors is
    /// [`Class::Excluded`].
    pub fn admits(&self, path: &Path) -> bool {
        if !self.is_included(path) {
            return false;
        }
        let bytes = trim_trailing_slashes(path.as_os_str().as_bytes());
        bytes.iter().enumerate().filter(|&(_, &b)| b == b'/').all(|(i, _)| {
            let ancestor = if i == 0 { &b"/"[..] } else { &bytes[..i] };
            self.classify(Path::new(OsStr::from_bytes(ancestor))) != Class::Excluded
        })
    }
}

fn trim_trailing_slashes(mut bytes: &[u8]) -> &[u8] {
    while bytes.len() > 1 && bytes.ends_with(b"/") {
        bytes = &bytes[..bytes.len() - 1];
    }
    bytes
}

/// The patterns of one action, matched as csync2 does: against the whole
/// path, with `FNM_LEADING_DIR`, never against the basename.
#[derive(Debug, Clone)]
pub(crate) struct ActionMatcher {
    /// `None` when the action has no patterns and so matches every file.
    set: Option<GlobSet>,
}

impl ActionMatcher {
    pub(crate) fn new(patterns: &[String], location: &Location) -> Result<Self, ConfigError> {
        if patterns.is_empty() {
            return Ok(ActionMatcher { set: None });
        }
        let mut set = GlobSetBuilder::new();
        let invalid = |text: &str, source| ConfigError::InvalidPattern {
            location: location.clone(),
            pattern: text.to_string(),
            source,
        };
        for p in patterns {
            for g in leading_dir_globs(p, p.contains("**")).map_err(|e| invalid(p, e))? {
                set.add(g);
            }
        }
        let set = set.build().map_err(|e| invalid("", e))?;
        Ok(ActionMatcher { set: Some(set) })
    }

    pub(crate) fn matches(&self, path: &Path) -> bool {
        self.set.as_ref().is_none_or(|s| s.is_match(path))
    }
}

/// A host name pattern of a prefix line, matched as csync2 does
/// (`fnmatch` with no flags), but ASCII case-insensitively: csync2
/// lower-cases the host name and not the pattern, so a capital letter in a
/// pattern silently never matches there.
pub(crate) struct HostPattern(globset::GlobMatcher);

impl HostPattern {
    pub(crate) fn new(pattern: &str, location: &Location) -> Result<Self, ConfigError> {
        GlobBuilder::new(&fnmatch_to_glob(pattern))
            .literal_separator(false)
            .backslash_escape(true)
            .case_insensitive(true)
            .build()
            .map(|g| HostPattern(g.compile_matcher()))
            .map_err(|source| ConfigError::InvalidPattern {
                location: location.clone(),
                pattern: pattern.to_string(),
                source,
            })
    }

    pub(crate) fn matches(&self, host: &str) -> bool {
        self.0.is_match(host)
    }
}

/// The globs that together match like `fnmatch(pattern, path,
/// FNM_LEADING_DIR | (star ? 0 : FNM_PATHNAME))`.
fn leading_dir_globs(pattern: &str, star: bool) -> Result<[Glob; 2], globset::Error> {
    let exact = glob(pattern, !star)?;
    let translated = fnmatch_to_glob(pattern);
    // In star mode `*` already crosses '/', so `/*` is "anything below".
    let below = format!("{translated}{}", if star { "/*" } else { "/**" });
    let below = GlobBuilder::new(&below).literal_separator(!star).backslash_escape(true).build()?;
    Ok([exact, below])
}

/// One fnmatch pattern as a glob; `pathname` is `FNM_PATHNAME`.
fn glob(pattern: &str, pathname: bool) -> Result<Glob, globset::Error> {
    GlobBuilder::new(&fnmatch_to_glob(pattern)).literal_separator(pathname).backslash_escape(true).build()
}

/// Escapes fnmatch's special characters so `s` matches only itself.
pub(crate) fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Pushes `c` so that globset reads it literally.
fn push_literal(out: &mut String, c: char) {
    if matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\' | ',') {
        out.push('\\');
    }
    out.push(c);
}

/// Translates an fnmatch pattern (without `FNM_NOESCAPE`) to globset
/// syntax for a builder with `backslash_escape(true)`.
pub(crate) fn fnmatch_to_glob(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => match chars.get(i + 1) {
                Some(&c) => {
                    push_literal(&mut out, c);
                    i += 2;
                }
                None => {
                    // glibc matches nothing with a trailing backslash; NUL
                    // never occurs in a path or host name.
                    out.push('\0');
                    i += 1;
                }
            },
            '*' => {
                out.push('*');
                while chars.get(i).is_some_and(|&c| c == '*') {
                    i += 1;
                }
            }
            '?' => {
                out.push('?');
                i += 1;
            }
            '[' => match parse_bracket(&chars, i + 1) {
                Some(b) => {
                    push_class(&mut out, b.negated, &b.ranges);
                    i = b.end;
                }
                None => {
                    push_literal(&mut out, '[');
                    i += 1;
                }
            },
            c => {
                push_literal(&mut out, c);
                i += 1;
            }
        }
    }
    out
}

/// A parsed bracket expression.
struct Bracket {
    negated: bool,
    /// Inclusive character ranges.
    ranges: Vec<(char, char)>,
    /// The index just after the closing `]`.
    end: usize,
}

/// Parses a bracket expression whose body starts at `chars[start]` (just
/// after `[`), with glibc's rules; `None` when the expression is
/// unterminated, in which case the `[` is literal.
fn parse_bracket(chars: &[char], start: usize) -> Option<Bracket> {
    let mut i = start;
    let negated = matches!(chars.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    // Set at a class name glibc does not know (`[:foo:]`): glibc fails the
    // match when it gets there, so members after it never match and a
    // negated bracket matches nothing.
    let mut invalid = false;
    let mut first = true;
    loop {
        let c = *chars.get(i)?;
        if c == ']' && !first {
            if invalid && negated {
                return Some(Bracket { negated: false, ranges: Vec::new(), end: i + 1 });
            }
            return Some(Bracket { negated, ranges, end: i + 1 });
        }
        first = false;
        // One item: a class, an escaped or a plain character.
        let lo = if c == '[' && chars.get(i + 1) == Some(&':') {
            // glibc reads a class name of the letters `a` to `y` (sic) up
            // to `:]`; with any other character in it, the `[` is a plain
            // member (`[[:a-b:]` is the set of `[`, `:`, `a` to `b`).
            let body_start = i + 2;
            let len = chars[body_start.min(chars.len())..].iter().take_while(|c| ('a'..='y').contains(*c)).count();
            let end = body_start + len;
            if chars.get(end) == Some(&':') && chars.get(end + 1) == Some(&']') {
                let name: String = chars[body_start..end].iter().collect();
                i = end + 2;
                let class = posix_class(&name);
                // glibc also refuses names of CHAR_CLASS_MAX_LENGTH (256) or more.
                invalid |= class.is_empty() || len >= 256;
                if !invalid {
                    ranges.extend_from_slice(class);
                }
                continue;
            }
            i += 1;
            '['
        } else if c == '[' && matches!(chars.get(i + 1), Some('=' | '.')) {
            let kind = chars[i + 1];
            let body_start = i + 2;
            let close = (body_start..chars.len().saturating_sub(1)).find(|&j| chars[j] == kind && chars[j + 1] == ']');
            match close {
                Some(end) => {
                    let name: String = chars[body_start..end].iter().collect();
                    i = end + 2;
                    // `[=c=]` and `[.c.]` with one character stand for it.
                    let mut it = name.chars();
                    match (it.next(), it.next()) {
                        (Some(c), None) => c,
                        _ => continue,
                    }
                }
                None => {
                    i += 1;
                    '['
                }
            }
        } else if c == '\\' {
            let escaped = *chars.get(i + 1)?;
            i += 2;
            escaped
        } else {
            i += 1;
            c
        };
        // A range `lo-hi`, unless the '-' is the last thing before ']'.
        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|&c| c != ']') {
            let mut hi = chars[i + 1];
            i += 2;
            if hi == '\\' {
                hi = *chars.get(i)?;
                i += 1;
            }
            if lo <= hi && !invalid {
                ranges.push((lo, hi));
            }
        } else if !invalid {
            ranges.push((lo, lo));
        }
    }
}

/// The ASCII ranges of a POSIX character class in the C locale; none for
/// an unknown name (glibc then matches nothing).
fn posix_class(name: &str) -> &'static [(char, char)] {
    match name {
        "alpha" => &[('A', 'Z'), ('a', 'z')],
        "digit" => &[('0', '9')],
        "alnum" => &[('0', '9'), ('A', 'Z'), ('a', 'z')],
        "upper" => &[('A', 'Z')],
        "lower" => &[('a', 'z')],
        "space" => &[('\t', '\r'), (' ', ' ')],
        "blank" => &[('\t', '\t'), (' ', ' ')],
        "cntrl" => &[('\0', '\x1f'), ('\x7f', '\x7f')],
        "punct" => &[('!', '/'), (':', '@'), ('[', '`'), ('{', '~')],
        "xdigit" => &[('0', '9'), ('A', 'F'), ('a', 'f')],
        "print" => &[(' ', '~')],
        "graph" => &[('!', '~')],
        _ => &[],
    }
}

/// Characters that globset's class parser treats specially somewhere in a
/// class; they are emitted as single characters in safe positions.
const CLASS_SPECIALS: [char; 5] = [']', '[', '!', '^', '-'];

/// Emits a character class in globset syntax.
fn push_class(out: &mut String, negated: bool, ranges: &[(char, char)]) {
    let mut plain: Vec<(char, char)> = Vec::new();
    let mut specials: Vec<char> = Vec::new();
    for &(lo, hi) in ranges {
        // Cut the specials out of the range; the pieces between them have
        // ordinary end points.
        let mut from = lo;
        let mut cuts: Vec<char> = CLASS_SPECIALS.iter().copied().filter(|&s| lo <= s && s <= hi).collect();
        cuts.sort_unstable();
        for s in cuts {
            if from < s {
                plain.push((from, char::from_u32(s as u32 - 1).unwrap_or(from)));
            }
            specials.push(s);
            from = char::from_u32(s as u32 + 1).unwrap_or(s);
        }
        if from <= hi && !CLASS_SPECIALS.contains(&from) {
            plain.push((from, hi));
        } else if from <= hi && !specials.contains(&from) {
            specials.push(from);
        }
    }
    let has = |c: char| specials.contains(&c);
    if plain.is_empty() && specials.is_empty() {
        // An empty class matches nothing (NUL never occurs in a path), and
        // an empty negated class matches any one character.
        out.push_str(if negated { "?" } else { "\\\0" });
        return;
    }
    if !negated && plain.is_empty() && !has(']') && !has('[') && !has('-') {
        // Only '!' and/or '^': either would read as a negation first.
        let alts: Vec<String> = specials.iter().map(|c| format!("\\{c}")).collect();
        if alts.len() == 1 {
            out.push_str(&alts[0]);
        } else {
            out.push('{');
            out.push_str(&alts.join(","));
            out.push('}');
        }
        return;
    }
    out.push('[');
    if negated {
        out.push('!');
    }
    let dash_first = !negated && !has(']') && plain.is_empty() && !has('[') && has('-');
    if dash_first {
        out.push('-');
    }
    if has(']') {
        out.push(']');
    }
    for (lo, hi) in plain {
        out.push(lo);
        if hi != lo {
            out.push('-');
            out.push(hi);
        }
    }
    for c in ['[', '!', '^'] {
        if has(c) {
            out.push(c);
        }
    }
    if has('-') && !dash_first {
        out.push('-');
    }
    out.push(']');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn m(patterns: &[(PatternKind, &str)]) -> Matcher {
        let ps: Vec<Pattern> = patterns.iter().map(|(k, t)| Pattern::new(*k, t)).collect();
        Matcher::new(&ps, false).unwrap()
    }

    use PatternKind::{Compare, Exclude, Include};

    fn class(m: &Matcher, p: &str) -> Class {
        m.classify(Path::new(p))
    }

    #[test]
    fn path_patterns_match_leading_directories() {
        let m = m(&[(Include, "/etc/apache")]);
        assert_eq!(class(&m, "/etc/apache"), Class::Included);
        assert_eq!(class(&m, "/etc/apache/conf/httpd.conf"), Class::Included);
        assert_eq!(class(&m, "/etc/apache2"), Class::Excluded);
        assert_eq!(class(&m, "/etc"), Class::Ancestor);
        assert_eq!(class(&m, "/"), Class::Ancestor);
        assert_eq!(class(&m, "/var"), Class::Excluded);
        assert_eq!(class(&m, "/etc/apache/"), Class::Included);
    }

    /// With no exclude pattern, everything below an included path is
    /// included: what lets a walk skip matching there.
    #[test]
    fn without_excludes_everything_below_an_included_path_is_included() {
        let sets: &[&[(PatternKind, &str)]] = &[
            &[(Include, "/srv")],
            &[(Include, "/srv/*/www"), (Include, "/etc/a?c")],
            &[(Include, "/srv/**/x"), (Include, "*.html")],
            &[(Include, "/s[a-r]v"), (Include, "/srv/[!c]*")],
        ];
        let paths = ["/srv", "/srv/a", "/srv/a/www", "/srv/b/www", "/etc/abc", "/srv/q/x", "/srv/dir", "/x/y.html"];
        let below = ["f", "sub/g", ".hidden", "a~", "deep/er/h.c"];
        for set in sets {
            let m = m(set);
            assert!(m.excludes_nothing());
            for p in paths.iter().filter(|p| class(&m, p) == Class::Included) {
                for b in below {
                    assert_eq!(class(&m, &format!("{p}/{b}")), Class::Included, "{p}/{b} under {set:?}");
                }
            }
        }
        assert!(!m(&[(Include, "/srv"), (Exclude, "*~")]).excludes_nothing());
    }

    #[test]
    fn default_path_class_is_exclude_and_default_basename_class_is_include() {
        let m = m(&[(Exclude, "*.tmp")]);
        assert_eq!(class(&m, "/a/b"), Class::Excluded);
        let m = self::m(&[(Include, "*.html")]);
        assert_eq!(class(&m, "/a/b.html"), Class::Excluded, "no path pattern includes it");
        let m = self::m(&[(Include, "/srv")]);
        assert_eq!(class(&m, "/srv/a.tmp"), Class::Included);
    }

    #[test]
    fn both_classes_must_include() {
        // csync2's sample: all of /etc/apache except dot files and backups.
        let m = m(&[(Include, "/etc/apache"), (Exclude, "*~"), (Exclude, ".*")]);
        assert_eq!(class(&m, "/etc/apache/httpd.conf"), Class::Included);
        assert_eq!(class(&m, "/etc/apache/httpd.conf~"), Class::Excluded);
        assert_eq!(class(&m, "/etc/apache/.htpasswd"), Class::Excluded);
    }

    #[test]
    fn last_match_wins_within_each_class() {
        let m = m(&[(Include, "/srv"), (Exclude, "/srv/cache"), (Include, "/srv/cache/keep")]);
        assert_eq!(class(&m, "/srv/a"), Class::Included);
        assert_eq!(class(&m, "/srv/cache/x"), Class::Excluded);
        assert_eq!(class(&m, "/srv/cache/keep/y"), Class::Included);
        // Not included, but an include lies below it.
        assert_eq!(class(&m, "/srv/cache"), Class::Ancestor);
        // Order matters: here the exclude comes last and wins.
        let m = self::m(&[(Include, "/srv/cache/keep"), (Exclude, "/srv")]);
        assert_eq!(class(&m, "/srv/cache/keep/y"), Class::Excluded);

        let m = self::m(&[(Include, "/srv"), (Exclude, "*.log"), (Include, "keep.*")]);
        assert_eq!(class(&m, "/srv/keep.log"), Class::Included);
        assert_eq!(class(&m, "/srv/other.log"), Class::Excluded);
    }

    #[test]
    fn star_does_not_cross_slashes_unless_the_pattern_has_a_double_star() {
        let m = m(&[(Include, "/a/*/c")]);
        assert_eq!(class(&m, "/a/x/c"), Class::Included);
        assert_eq!(class(&m, "/a/x/c/d"), Class::Included);
        assert_eq!(class(&m, "/a/x/y/c"), Class::Excluded);
        assert_eq!(class(&m, "/a/x"), Class::Ancestor);
        assert_eq!(class(&m, "/a"), Class::Ancestor);

        // One `**` makes every `*` cross slashes, including the single one.
        let m = self::m(&[(Include, "/a/**/c*.txt")]);
        assert_eq!(class(&m, "/a/x/y/c1.txt"), Class::Included);
        assert_eq!(class(&m, "/a/x/c/y/z.txt"), Class::Included, "`c*` swallows `c/y/z`");
        // `/**/` needs at least "//" between: fnmatch, unlike globset, has no
        // zero-directory `**`.
        assert_ne!(class(&m, "/a/c1.txt"), Class::Included);
        let m = self::m(&[(Include, "/a/*.txt/**")]);
        assert_eq!(class(&m, "/a/b/c.txt/d"), Class::Included);
    }

    #[test]
    fn ancestors_ignore_excludes_and_basename_patterns() {
        let m = m(&[(Include, "/srv/www/htdocs"), (Exclude, "/srv")]);
        assert_eq!(class(&m, "/srv"), Class::Ancestor);
        assert_eq!(class(&m, "/srv/www"), Class::Ancestor);
        assert_eq!(class(&m, "/srv/www/htdocs"), Class::Excluded);
        let m = self::m(&[(Include, "/srv/*/htdocs")]);
        assert_eq!(class(&m, "/srv/anything"), Class::Ancestor);
        assert_eq!(class(&m, "/srv/a/b"), Class::Excluded);
        // Excludes make no ancestors.
        let m = self::m(&[(Exclude, "/x/y")]);
        assert_eq!(class(&m, "/x"), Class::Excluded);
    }

    #[test]
    fn admits_requires_a_walk_to_reach_the_path() {
        let m = m(&[(Include, "/srv"), (Exclude, "cache")]);
        // csync_match_file alone says yes ...
        assert_eq!(class(&m, "/srv/cache/x"), Class::Included);
        assert_eq!(class(&m, "/srv/cache"), Class::Excluded);
        // ... but a walk prunes /srv/cache.
        assert!(!m.admits(Path::new("/srv/cache/x")));
        assert!(m.admits(Path::new("/srv/www/x")));
        assert!(!m.admits(Path::new("/etc/x")));
    }

    #[test]
    fn compare_patterns_only_count_in_compare_mode() {
        let ps = vec![Pattern::new(Include, "/a"), Pattern::new(Compare, "/b")];
        let normal = Matcher::new(&ps, false).unwrap();
        let compare = Matcher::new(&ps, true).unwrap();
        assert_eq!(normal.classify(Path::new("/b/x")), Class::Excluded);
        assert_eq!(compare.classify(Path::new("/b/x")), Class::Included);
        assert_eq!(normal.patterns().len(), 1);
    }

    #[test]
    fn trailing_slashes_in_patterns_are_ignored() {
        let m = m(&[(Include, "/srv/www/")]);
        assert_eq!(class(&m, "/srv/www/a"), Class::Included);
    }

    #[test]
    fn braces_and_commas_are_literal() {
        let m = m(&[(Include, "/srv/{a,b}")]);
        assert_eq!(class(&m, "/srv/{a,b}/x"), Class::Included);
        assert_eq!(class(&m, "/srv/a"), Class::Excluded);
    }

    #[test]
    fn translation() {
        assert_eq!(fnmatch_to_glob("/a/*.c"), "/a/*.c");
        assert_eq!(fnmatch_to_glob("/a/**/b"), "/a/*/b");
        assert_eq!(fnmatch_to_glob("{x,y}"), "\\{x\\,y\\}");
        assert_eq!(fnmatch_to_glob("a\\*b\\"), "a\\*b\0");
        assert_eq!(fnmatch_to_glob("[!a-c]"), "[!a-c]");
        assert_eq!(fnmatch_to_glob("[^a]"), "[!a]");
        assert_eq!(fnmatch_to_glob("[]a]"), "[]a]");
        assert_eq!(fnmatch_to_glob("[a-]"), "[a-]");
        assert_eq!(fnmatch_to_glob("[!]"), "\\[!\\]");
        assert_eq!(fnmatch_to_glob("[[:digit:]x]"), "[0-9x]");
        assert_eq!(fnmatch_to_glob("[\\!]"), "\\!");
        assert_eq!(fnmatch_to_glob("[Z-a]"), "[]Z\\_-a[^]");
        assert_eq!(fnmatch_to_glob("[ab"), "\\[ab");
    }

    #[test]
    fn host_patterns_ignore_case() {
        let p = HostPattern::new("Host[12]", &Location::default()).unwrap();
        assert!(p.matches("host1"));
        assert!(!p.matches("host3"));
        assert!(HostPattern::new("*", &Location::default()).unwrap().matches("a.b/c"));
    }

    #[test]
    fn action_patterns_match_whole_paths_with_leading_dir() {
        let a = ActionMatcher::new(&["/etc/apache/sites-available/*".into()], &Location::default()).unwrap();
        assert!(a.matches(Path::new("/etc/apache/sites-available/x")));
        assert!(a.matches(Path::new("/etc/apache/sites-available/x/y")));
        assert!(!a.matches(Path::new("/etc/apache/httpd.conf")));
        let basename = ActionMatcher::new(&["*.conf".into()], &Location::default()).unwrap();
        assert!(!basename.matches(Path::new("/etc/a.conf")));
        assert!(ActionMatcher::new(&[], &Location::default()).unwrap().matches(Path::new("/x")));
    }

    /// Differential tests against glibc's `fnmatch`, the matcher csync2
    /// uses (the flag values below are glibc's).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    mod against_glibc {
        use super::*;
        use proptest::prelude::*;

        use crate::fuzzing::fnmatch as reference;

        fn ours(pattern: &str, string: &str, path_flags: bool) -> bool {
            if path_flags {
                let star = pattern.contains("**");
                let globs = leading_dir_globs(pattern, star).unwrap();
                globs.iter().any(|g| g.compile_matcher().is_match(string))
            } else {
                glob(pattern, false).unwrap().compile_matcher().is_match(string)
            }
        }

        fn theirs(pattern: &str, string: &str, path_flags: bool) -> bool {
            use reference::{FNM_LEADING_DIR, FNM_PATHNAME, matches};
            let flags = match (path_flags, pattern.contains("**")) {
                (false, _) => 0,
                (true, true) => FNM_LEADING_DIR,
                (true, false) => FNM_LEADING_DIR | FNM_PATHNAME,
            };
            matches(pattern, string, flags)
        }

        #[test]
        fn agrees_with_glibc_fnmatch_on_known_cases() {
            let cases = [
                ("/a/b", "/a/b/c"),
                ("/a/*", "/a/b/c"),
                ("/a/*c", "/a/x/yc/z"),
                ("/a/**c", "/a/x/yc/z"),
                ("/a/**/b", "/a/b"),
                ("/a/**/b", "/a//b"),
                ("/a/[!b]", "/a//"),
                ("/a[/]b", "/a/b"),
                ("/[]]", "/]"),
                ("/[!]]", "/a"),
                ("/[a-]", "/-"),
                ("/[[:alpha:]]", "/q"),
                ("/[[:alpha:]", "/["),
                ("/\\*", "/*"),
                ("/{a}", "/{a}"),
                ("/[z-a]", "/m"),
                ("/[Z-a]", "/\\"),
                ("/[Z-a]", "/]"),
                ("/[Z-a]", "/^"),
                ("/[Z-a]", "/`"),
                ("/[!Z-a]", "/Y"),
                ("/[\\]]", "/]"),
                ("/[[]", "/["),
                ("/", "/etc"),
                ("/?", "//"),
                // Not a class name: the `[` is a member.
                ("/[[:aap`ha:]", "/["),
                // An unknown class ends what the bracket can match.
                ("/[a[:foo:]b]", "/a"),
                ("/[a[:foo:]b]", "/b"),
                ("/[!a[:foo:]]", "/c"),
            ];
            for (p, s) in cases {
                assert_eq!(ours(p, s, true), theirs(p, s, true), "pattern {p:?} on {s:?}");
            }
        }

        fn pattern_piece() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("a".to_string()),
                Just("b".to_string()),
                Just("/".to_string()),
                Just("*".to_string()),
                Just("**".to_string()),
                Just("?".to_string()),
                Just("[ab]".to_string()),
                Just("[!a]".to_string()),
                Just("[a-c]".to_string()),
                Just("[]/]".to_string()),
                Just("[^-]".to_string()),
                Just("\\*".to_string()),
                Just("{".to_string()),
                Just(",".to_string()),
                Just(".".to_string()),
            ]
        }

        fn pattern() -> impl Strategy<Value = String> {
            proptest::collection::vec(pattern_piece(), 0..7).prop_map(|v| format!("/{}", v.concat()))
        }

        fn path() -> impl Strategy<Value = String> {
            "(/[abc.*{,\\]\\-]{0,3}){1,4}"
        }

        /// Paths as csync2 names them: no empty components, no trailing '/'.
        fn clean_path() -> impl Strategy<Value = String> {
            prop_oneof![Just("/".to_string()), "(/[abc.*{,\\]\\-]{1,3}){1,4}"]
        }

        proptest! {
            #[test]
            fn path_matching_agrees_with_glibc(p in pattern(), s in path()) {
                prop_assert_eq!(ours(&p, &s, true), theirs(&p, &s, true), "pattern {:?} on {:?}", p, s);
            }

            #[test]
            fn basename_matching_agrees_with_glibc(
                p in proptest::collection::vec(pattern_piece(), 0..5).prop_map(|v| v.concat()),
                s in "[abc.*{,\\]\\-]{0,4}",
            ) {
                prop_assert_eq!(ours(&p, &s, false), theirs(&p, &s, false), "pattern {:?} on {:?}", p, s);
            }

            #[test]
            fn classify_agrees_with_csync2_over_glibc(
                ps in proptest::collection::vec(
                    (0..3u8, prop_oneof![pattern(), "[ab.*?]{1,3}"]),
                    0..5,
                ),
                s in clean_path(),
            ) {
                let patterns: Vec<Pattern> = ps
                    .iter()
                    .map(|(k, t)| Pattern::new([Include, Exclude, Compare][*k as usize], t))
                    .collect();
                let active: Vec<Pattern> = patterns.iter().filter(|p| p.kind != Compare).cloned().collect();
                let m = Matcher::new(&patterns, false).unwrap();
                prop_assert_eq!(m.classify(Path::new(&s)), reference::classify(&active, &s), "{:?} on {:?}", patterns, s);
            }
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn classify_never_panics(
                ps in proptest::collection::vec((any::<bool>(), "[/%a-c*?\\[\\]!{}\\\\]{0,8}"), 0..6),
                path in proptest::collection::vec(any::<u8>(), 0..24),
            ) {
                let patterns: Vec<Pattern> = ps
                    .iter()
                    .map(|(inc, t)| Pattern::new(if *inc { Include } else { Exclude }, t))
                    .collect();
                if let Ok(m) = Matcher::new(&patterns, false) {
                    let path = PathBuf::from(OsStr::from_bytes(&path));
                    let c = m.classify(&path);
                    prop_assert_eq!(m.is_included(&path), c == Class::Included);
                    if m.admits(&path) {
                        prop_assert_eq!(c, Class::Included);
                    }
                }
            }

            #[test]
            fn everything_below_a_plain_include_is_included(
                root in "(/[a-z]{1,4}){1,3}",
                rest in "(/[a-z.]{1,4}){0,3}",
            ) {
                let m = Matcher::new(&[Pattern::new(Include, &root)], false).unwrap();
                let p = format!("{root}{rest}");
                prop_assert!(m.admits(Path::new(&p)));
            }
        }
    }
}
