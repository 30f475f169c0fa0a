//! Prefix references and their expansion.
//!
//! A *prefix reference* is `%NAME%` at the very start of a pattern or path
//! (a `%` anywhere else is an ordinary character, as in csync2's
//! `prefixsubst`). *Expanding* it replaces `%NAME%` with the prefix's
//! *path for the host*: the path of the first `on HOSTPATTERN: /path;` line
//! whose pattern matches the host name. csync2 has no built-in prefixes,
//! and a prefix with no matching line has no path on that host; since such
//! a pattern could then match nothing on this host while its peers sync
//! the files, resolving a group that uses it is an error here.
//!
//! When several `prefix` blocks share a name, the last one that has a line
//! for the host wins, because csync2 keeps prefixes in a list it prepends
//! to and takes the first entry with a path.

use super::model::Prefix;
use super::pattern::{HostPattern, escape_glob};
use super::{ConfigError, Location};

/// A `%NAME%` reference split from the rest of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PrefixRef<'a> {
    pub(crate) name: &'a str,
    /// What follows `%NAME%`: empty or starting with `/`.
    pub(crate) rest: &'a str,
}

/// Splits a leading prefix reference off `text`. `Ok(None)` when `text`
/// does not start with `%`.
pub(crate) fn split_ref<'a>(text: &'a str, location: &Location) -> Result<Option<PrefixRef<'a>>, ConfigError> {
    let Some(after) = text.strip_prefix('%') else {
        return Ok(None);
    };
    let bad = || ConfigError::BadPrefixReference { location: location.clone(), text: text.to_string() };
    let end = after.find('%').ok_or_else(bad)?;
    let (name, rest) = (&after[..end], &after[end + 1..]);
    if name.is_empty() || !(rest.is_empty() || rest.starts_with('/')) {
        return Err(bad());
    }
    Ok(Some(PrefixRef { name, rest }))
}

/// Joins a prefix path and the rest of a reference without doubling the
/// slash when the prefix is `/`.
fn join(path: &str, rest: &str) -> String {
    if path == "/" && !rest.is_empty() { rest.to_string() } else { format!("{path}{rest}") }
}

/// The prefixes of one config, resolved for one host.
pub(crate) struct HostPrefixes<'a> {
    prefixes: &'a [Prefix],
    host: &'a str,
}

impl<'a> HostPrefixes<'a> {
    pub(crate) fn new(prefixes: &'a [Prefix], host: &'a str) -> Self {
        HostPrefixes { prefixes, host }
    }

    /// The path of prefix `name` on this host, if a line matches.
    pub(crate) fn path(&self, name: &str) -> Result<Option<&'a str>, ConfigError> {
        for prefix in self.prefixes.iter().rev().filter(|p| p.name == name) {
            for entry in &prefix.entries {
                if HostPattern::new(&entry.host_pattern, &entry.location)?.matches(self.host) {
                    return Ok(Some(&entry.path));
                }
            }
        }
        Ok(None)
    }

    fn lookup(&self, r: PrefixRef<'_>, location: &Location) -> Result<&'a str, ConfigError> {
        if !self.prefixes.iter().any(|p| p.name == r.name) {
            return Err(ConfigError::UnknownPrefix { location: location.clone(), name: r.name.to_string() });
        }
        self.path(r.name)?.ok_or_else(|| ConfigError::PrefixUndefinedForHost {
            location: location.clone(),
            name: r.name.to_string(),
            host: self.host.to_string(),
        })
    }

    /// Expands a leading `%NAME%` in a plain path (key file, backup
    /// directory, include root).
    pub(crate) fn expand_path(&self, text: &str, location: &Location) -> Result<String, ConfigError> {
        match split_ref(text, location)? {
            None => Ok(text.to_string()),
            Some(r) => Ok(join(self.lookup(r, location)?, r.rest)),
        }
    }

    /// Expands a leading `%NAME%` in an fnmatch pattern; glob characters in
    /// the prefix path are escaped so they match literally.
    pub(crate) fn expand_pattern(&self, text: &str, location: &Location) -> Result<String, ConfigError> {
        match split_ref(text, location)? {
            None => Ok(text.to_string()),
            Some(r) => Ok(join(&escape_glob(self.lookup(r, location)?), r.rest)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::PrefixEntry;

    fn loc() -> Location {
        Location::default()
    }

    fn prefix(name: &str, lines: &[(&str, &str)]) -> Prefix {
        Prefix {
            name: name.into(),
            entries: lines
                .iter()
                .map(|(h, p)| PrefixEntry { host_pattern: (*h).into(), path: (*p).into(), location: loc() })
                .collect(),
            location: loc(),
        }
    }

    #[test]
    fn split_reference() {
        assert_eq!(split_ref("/a", &loc()).unwrap(), None);
        assert_eq!(split_ref("%home%/bob", &loc()).unwrap(), Some(PrefixRef { name: "home", rest: "/bob" }));
        assert_eq!(split_ref("%home%", &loc()).unwrap(), Some(PrefixRef { name: "home", rest: "" }));
        for bad in ["%home", "%%/x", "%home%bob"] {
            let err = split_ref(bad, &loc()).unwrap_err();
            assert!(matches!(err, ConfigError::BadPrefixReference { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn first_matching_line_wins_and_later_blocks_take_precedence() {
        let prefixes = vec![
            prefix("home", &[("host[12]", "/export/users"), ("*", "/home")]),
            prefix("app", &[("a*", "/vol/a")]),
            prefix("app", &[("ab", "/vol/ab")]),
        ];
        let h1 = HostPrefixes::new(&prefixes, "host1");
        assert_eq!(h1.path("home").unwrap(), Some("/export/users"));
        assert_eq!(h1.expand_path("%home%/bob", &loc()).unwrap(), "/export/users/bob");
        let h3 = HostPrefixes::new(&prefixes, "host3");
        assert_eq!(h3.expand_path("%home%/bob", &loc()).unwrap(), "/home/bob");
        assert_eq!(HostPrefixes::new(&prefixes, "ab").path("app").unwrap(), Some("/vol/ab"));
        assert_eq!(HostPrefixes::new(&prefixes, "ac").path("app").unwrap(), Some("/vol/a"));
        let err = HostPrefixes::new(&prefixes, "zz").expand_path("%app%/x", &loc()).unwrap_err();
        assert!(matches!(err, ConfigError::PrefixUndefinedForHost { .. }), "{err}");
        let err = h1.expand_path("%nope%/x", &loc()).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownPrefix { .. }), "{err}");
    }

    #[test]
    fn pattern_expansion_escapes_the_prefix_path() {
        let prefixes = vec![prefix("p", &[("*", "/srv/[odd]*")]), prefix("root", &[("*", "/")])];
        let h = HostPrefixes::new(&prefixes, "x");
        assert_eq!(h.expand_pattern("%p%/*.c", &loc()).unwrap(), "/srv/\\[odd]\\*/*.c");
        assert_eq!(h.expand_path("%p%/a", &loc()).unwrap(), "/srv/[odd]*/a");
        assert_eq!(h.expand_path("%root%/etc", &loc()).unwrap(), "/etc");
        assert_eq!(h.expand_path("%root%", &loc()).unwrap(), "/");
    }
}
