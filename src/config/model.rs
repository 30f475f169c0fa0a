//! The parsed configuration, as written: groups, host entries, patterns,
//! actions and prefixes, before anything is resolved for a host.
//!
//! A *group* is a set of hosts that keep the same files in sync, chosen by
//! its *patterns*. A *host entry* names one member; a *receive-only* host
//! (csync2's "slave", written in parentheses) accepts changes but never
//! sends its own. A *pattern* is an include, exclude or compare pattern in
//! fnmatch syntax; a *path pattern* starts with `/` or with a prefix
//! reference `%NAME%` and is matched against whole paths, any other pattern
//! is a *basename pattern* matched against the last path component. An
//! *action* is a shell command run after matching files changed. A
//! *prefix* is a named directory whose location differs per host.
//!
//! Host names and addresses are stored in lower case, as csync2 compares
//! them case-insensitively by lower-casing everything it reads.

use std::fmt;
use std::str::FromStr;

use super::Location;

/// csync2's default for `backup-generations`.
pub const DEFAULT_BACKUP_GENERATIONS: u32 = 3;

/// `backup-keep RULE VALUE ...;`: generations kept by age, beyond the
/// previous versions of paths (restic's `forget` policies).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    /// Keep every generation younger than this many seconds.
    pub within: Option<u64>,
    /// Newest generation of each of the last N hours that have one.
    pub hourly: u32,
    /// Of each of the last N days.
    pub daily: u32,
    /// Of each of the last N weeks (Monday to Sunday).
    pub weekly: u32,
    /// Of each of the last N months.
    pub monthly: u32,
}

impl KeepPolicy {
    /// Whether the policy keeps nothing.
    pub fn is_empty(&self) -> bool {
        self.within.is_none() && self.hourly == 0 && self.daily == 0 && self.weekly == 0 && self.monthly == 0
    }
}

/// One `group NAME { ... }` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The group's name; `group_N` for the N-th unnamed group, as csync2
    /// names them.
    pub name: String,
    /// Every host entry, in the order written.
    pub hosts: Vec<HostEntry>,
    /// The `key FILE;` argument as written (may start with `%NAME%`; a
    /// relative name is relative to the system directory). The parser
    /// rejects a group without a key, as csync2 does, so this is always
    /// `Some` in a parsed config.
    pub key: Option<String>,
    /// Include, exclude and compare patterns in the order written, trailing
    /// slashes removed.
    pub patterns: Vec<Pattern>,
    /// The conflict auto-resolution policy (`auto none;` when absent).
    pub auto: AutoPolicy,
    /// `backup-directory DIR;` as written; the last one wins.
    pub backup_directory: Option<String>,
    /// `backup-generations N;`, [`DEFAULT_BACKUP_GENERATIONS`] when absent.
    pub backup_generations: u32,
    /// `backup-keep ...;`; the last one wins. Empty when absent.
    pub backup_keep: KeepPolicy,
    /// The group's `action { ... }` blocks in the order written.
    pub actions: Vec<Action>,
    /// Where the `group` keyword is.
    pub location: Location,
}

/// One host of a group: `name`, `name@addr`, `name@addr:port`,
/// `name@[v6addr]:port`, each optionally inside parentheses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostEntry {
    /// The host's name, compared with the local host name. Lower case.
    pub name: String,
    /// The address to connect to, when it differs from the name (`@addr`;
    /// without brackets for IPv6). Lower case. csync2 also uses this name
    /// as the host's identity towards its peers.
    pub addr: Option<String>,
    /// The UDP port to connect to (`@addr:port`, a snapsync extension);
    /// `None` means the config's default port.
    pub port: Option<u16>,
    /// Written in parentheses: the host receives changes but never sends.
    pub receive_only: bool,
}

impl HostEntry {
    /// A plain entry: `name` with no address, port, or parentheses.
    pub fn new(name: &str) -> Self {
        HostEntry { name: super::canonical_host(name), addr: None, port: None, receive_only: false }
    }

    /// The host name or address to connect to.
    pub fn connect_host(&self) -> &str {
        self.addr.as_deref().unwrap_or(&self.name)
    }

    /// The port to connect to, given the config's default port.
    pub fn port_or(&self, default: u16) -> u16 {
        self.port.unwrap_or(default)
    }

    /// Whether this entry names the host `host` (compared as csync2 does:
    /// ASCII case-insensitively).
    pub fn is_host(&self, host: &str) -> bool {
        self.name.eq_ignore_ascii_case(host)
    }
}

impl fmt::Display for HostEntry {
    /// The entry in config syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.receive_only {
            f.write_str("(")?;
        }
        f.write_str(&self.name)?;
        if let Some(addr) = &self.addr {
            match (addr.contains(':'), self.port) {
                (true, Some(port)) => write!(f, "@[{addr}]:{port}")?,
                (_, Some(port)) => write!(f, "@{addr}:{port}")?,
                (_, None) => write!(f, "@{addr}")?,
            }
        } else if let Some(port) = self.port {
            write!(f, "@{}:{port}", self.name)?;
        }
        if self.receive_only {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// Conflict auto-resolution policy (`auto ...;`), with csync2's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AutoPolicy {
    /// Conflicts wait for `force` (the default).
    #[default]
    None,
    /// The version that reaches the other host first wins.
    First,
    /// The version with the newer modification time wins.
    Younger,
    /// The version with the older modification time wins.
    Older,
    /// The larger file wins.
    Bigger,
    /// The smaller file wins.
    Smaller,
    /// The host listed further left in the group's host list wins.
    Left,
    /// The host listed further right in the group's host list wins.
    Right,
}

impl AutoPolicy {
    /// Every policy, in csync2's order.
    pub const ALL: [AutoPolicy; 8] = [
        AutoPolicy::None,
        AutoPolicy::First,
        AutoPolicy::Younger,
        AutoPolicy::Older,
        AutoPolicy::Bigger,
        AutoPolicy::Smaller,
        AutoPolicy::Left,
        AutoPolicy::Right,
    ];

    /// The policy's config keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            AutoPolicy::None => "none",
            AutoPolicy::First => "first",
            AutoPolicy::Younger => "younger",
            AutoPolicy::Older => "older",
            AutoPolicy::Bigger => "bigger",
            AutoPolicy::Smaller => "smaller",
            AutoPolicy::Left => "left",
            AutoPolicy::Right => "right",
        }
    }
}

impl fmt::Display for AutoPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not one of the `auto` policy keywords.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown auto policy {0:?} (use none, first, younger, older, bigger, smaller, left or right)")]
pub struct UnknownAutoPolicy(pub String);

impl FromStr for AutoPolicy {
    type Err = UnknownAutoPolicy;

    /// Parses a policy keyword; case-sensitive, as in csync2.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AutoPolicy::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| UnknownAutoPolicy(s.to_string()))
    }
}

/// Which file attributes are not synchronized (`ignore uid gid mod;`,
/// top level only). The flags accumulate over several statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Ignore {
    /// Owner user ids are neither compared nor applied.
    pub uid: bool,
    /// Owner group ids are neither compared nor applied.
    pub gid: bool,
    /// Permission bits are neither compared nor applied (`mod`).
    pub mode: bool,
}

/// One `action { ... }` block.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Action {
    /// `pattern P...;` arguments, in order. Matched against whole paths
    /// (there are no basename patterns here); no patterns means every file
    /// of the group.
    pub patterns: Vec<String>,
    /// `exec "cmd";` commands, in order; `%%` in a command stands for the
    /// changed paths.
    pub exec: Vec<String>,
    /// Where command output is appended; `None` means `/dev/null`, csync2's
    /// default.
    pub logfile: Option<String>,
    /// Also run on the host where the change was made (`do-local;`).
    pub do_local: bool,
    /// Run only on the host where the change was made (`do-local-only;`,
    /// which implies `do_local`).
    pub do_local_only: bool,
}

/// Whether a pattern includes, excludes, or includes only in compare mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PatternKind {
    /// `include`.
    Include,
    /// `exclude`.
    Exclude,
    /// `compare`: an include pattern that only counts when comparing hosts
    /// (csync2's `-o`/`-T` compare mode); ignored when synchronizing.
    Compare,
}

impl PatternKind {
    /// Whether a match of this kind selects the file (compare patterns do,
    /// in compare mode).
    pub fn is_include(self) -> bool {
        self != PatternKind::Exclude
    }
}

/// One include, exclude or compare pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// What a match means.
    pub kind: PatternKind,
    /// The fnmatch pattern, trailing slashes removed.
    pub text: String,
    /// Where the pattern is written.
    pub location: Location,
}

impl Pattern {
    /// A pattern with no source location, for building matchers in code.
    pub fn new(kind: PatternKind, text: &str) -> Self {
        Pattern { kind, text: strip_trailing_slashes(text).to_string(), location: Location::default() }
    }

    /// Matched against whole paths (starts with `/` or `%`), rather than
    /// against basenames.
    pub fn is_path_pattern(&self) -> bool {
        self.text.starts_with('/') || self.text.starts_with('%')
    }

    /// csync2's rule: once `**` appears anywhere in a pattern, every `*` in
    /// it matches `/` too.
    pub fn star_matches_slashes(&self) -> bool {
        self.text.contains("**")
    }
}

/// Removes trailing slashes but never the first character (`/` stays `/`),
/// as csync2 does for patterns and prefix paths.
pub(crate) fn strip_trailing_slashes(s: &str) -> &str {
    let mut end = s.len();
    while end > 1 && s.as_bytes()[end - 1] == b'/' {
        end -= 1;
    }
    &s[..end]
}

/// One `prefix NAME { on HOSTPATTERN: /path; ... }` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix {
    /// The name used as `%NAME%`.
    pub name: String,
    /// The `on` lines in order; the first whose pattern matches the host
    /// gives the prefix's path on that host.
    pub entries: Vec<PrefixEntry>,
    /// Where the `prefix` keyword is.
    pub location: Location,
}

/// One `on HOSTPATTERN: /path;` line of a prefix block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixEntry {
    /// fnmatch pattern over host names (`*` also matches `/` and `.`).
    pub host_pattern: String,
    /// The absolute directory, trailing slashes removed.
    pub path: String,
    /// Where the `on` keyword is.
    pub location: Location,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_policy_round_trips_through_its_keyword() {
        for p in AutoPolicy::ALL {
            assert_eq!(p.as_str().parse::<AutoPolicy>().unwrap(), p);
            assert_eq!(p.to_string(), p.as_str());
        }
        assert_eq!(AutoPolicy::default(), AutoPolicy::None);
        let err = "newest".parse::<AutoPolicy>().unwrap_err();
        assert!(err.to_string().contains("\"newest\""));
        assert!("None".parse::<AutoPolicy>().is_err());
    }

    #[test]
    fn trailing_slashes_are_stripped_except_the_root() {
        assert_eq!(strip_trailing_slashes("/a/b//"), "/a/b");
        assert_eq!(strip_trailing_slashes("/"), "/");
        assert_eq!(strip_trailing_slashes("//"), "/");
        assert_eq!(strip_trailing_slashes("a/"), "a");
        assert_eq!(strip_trailing_slashes(""), "");
    }

    #[test]
    fn pattern_classes() {
        assert!(Pattern::new(PatternKind::Include, "/a").is_path_pattern());
        assert!(Pattern::new(PatternKind::Include, "%p%/a").is_path_pattern());
        assert!(!Pattern::new(PatternKind::Exclude, "*.tmp").is_path_pattern());
        assert!(Pattern::new(PatternKind::Include, "/a/**/b").star_matches_slashes());
        assert!(!Pattern::new(PatternKind::Include, "/a/*/b").star_matches_slashes());
        assert!(PatternKind::Compare.is_include());
        assert!(!PatternKind::Exclude.is_include());
    }

    #[test]
    fn host_entry_display_is_config_syntax() {
        let mut h = HostEntry::new("Node1");
        assert_eq!(h.to_string(), "node1");
        h.addr = Some("::1".into());
        h.port = Some(4000);
        h.receive_only = true;
        assert_eq!(h.to_string(), "(node1@[::1]:4000)");
        assert_eq!(h.connect_host(), "::1");
        assert_eq!(h.port_or(30865), 4000);
        assert!(h.is_host("NODE1"));
    }
}
