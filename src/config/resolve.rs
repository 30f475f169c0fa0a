//! Resolution: a parsed config as one host sees it.
//!
//! *Resolving* for a host keeps the groups whose host list names it (csync2
//! ignores the others), expands every `%NAME%` with the prefix paths for
//! that host, and compiles the patterns. The *local entry* is the group's
//! host entry for this host; when a host is listed twice the last entry
//! counts, as in csync2.
//!
//! An *include root* is where a walk of the group starts: for each include
//! path pattern, its longest leading run of components free of glob
//! characters. Its *logical* form is that run as written in the config
//! (`%app%/shared`), which every host agrees on; its *local* form is the
//! expanded directory on this host (`/vol/0/app/shared`). Paths exchanged
//! between hosts are logical; [`ResolvedGroup::to_local`] and
//! [`ResolvedGroup::to_logical`] convert.

use std::path::{Component, Path, PathBuf};

use super::model::{Action, AutoPolicy, Group, HostEntry, Ignore, Pattern, PatternKind};
use super::pattern::{ActionMatcher, Matcher};
use super::prefix::HostPrefixes;
use super::{Config, ConfigError, Location};

/// Where a walk of a group starts, named on every host and on this one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IncludeRoot {
    /// The root as written in the config, prefix reference unexpanded
    /// (`%app%/shared` or `/vol/0/app/shared`).
    pub logical: String,
    /// The directory on this host.
    pub local: PathBuf,
}

/// One group, resolved for the local host.
#[derive(Debug, Clone)]
pub struct ResolvedGroup {
    /// The group's name.
    pub name: String,
    /// Every host entry of the group, the local one included, in config
    /// order.
    pub hosts: Vec<HostEntry>,
    /// The local host's entry; `receive_only` tells whether this host only
    /// receives.
    pub local: HostEntry,
    /// The key file, prefix expanded; a relative name is joined to the
    /// config's system directory, as csync2 does.
    pub key: Option<PathBuf>,
    /// Where walks start, none inside another, sorted by `logical`.
    pub roots: Vec<IncludeRoot>,
    /// Include/exclude patterns, prefix expanded.
    pub matcher: Matcher,
    /// The same patterns with compare patterns counted as includes (csync2's
    /// compare mode), for comparing hosts.
    pub compare_matcher: Matcher,
    /// The conflict policy.
    pub auto: AutoPolicy,
    /// Attributes not synchronized (global in csync2, copied here).
    pub ignore: Ignore,
    /// The backup directory, prefix expanded.
    pub backup_directory: Option<PathBuf>,
    /// How many previous versions of each path to keep.
    pub backup_generations: u32,
    /// Generations kept by age (`backup-keep`).
    pub backup_keep: super::KeepPolicy,
    /// The group's actions, patterns prefix expanded.
    pub actions: Vec<Action>,
    /// Where the group is defined.
    pub location: Location,
    /// How many host entries precede the local host's first entry.
    left_count: usize,
    action_matchers: Vec<ActionMatcher>,
}

impl ResolvedGroup {
    /// The other hosts of the group (every entry not naming the local host).
    pub fn peers(&self) -> impl Iterator<Item = &HostEntry> {
        self.hosts.iter().filter(|h| !h.is_host(&self.local.name))
    }

    /// The entry of host `name`, if it is in the group.
    pub fn host(&self, name: &str) -> Option<&HostEntry> {
        self.hosts.iter().find(|h| h.is_host(name))
    }

    /// Whether `peer` is listed before the local host ("on the left side",
    /// as csync2's `auto left`/`auto right` use it): with `auto left` a
    /// conflict goes to the peer exactly when this is true, with `auto
    /// right` exactly when it is false. `false` for a host not in the group.
    pub fn is_left_of_local(&self, peer: &str) -> bool {
        self.hosts.iter().position(|h| h.is_host(peer)).is_some_and(|i| i < self.left_count)
    }

    /// The include root that contains the local path `path`.
    pub fn root_of_local(&self, path: &Path) -> Option<&IncludeRoot> {
        self.roots.iter().find(|r| path.starts_with(&r.local))
    }

    /// The logical name of a local path inside one of the roots.
    pub fn to_logical(&self, path: &Path) -> Option<PathBuf> {
        let root = self.root_of_local(path)?;
        let rest = path.strip_prefix(&root.local).ok()?;
        Some(join_rest(Path::new(&root.logical), rest))
    }

    /// The local path of a logical name inside one of the roots; `None`
    /// outside the roots, or when the part below the root is not a plain
    /// relative path (`..`, `.`, a second root).
    pub fn to_local(&self, logical: &Path) -> Option<PathBuf> {
        let root = self.roots.iter().find(|r| logical.starts_with(&r.logical))?;
        let rest = logical.strip_prefix(&root.logical).ok()?;
        if !rest.components().all(|c| matches!(c, Component::Normal(_))) {
            return None;
        }
        Some(join_rest(&root.local, rest))
    }

    /// The actions to run for a change of the local path `path`, as csync2
    /// schedules them: on the host where the change was made
    /// (`local_change`) only `do-local` actions run, elsewhere all but
    /// `do-local-only` ones; an action without patterns matches every path.
    pub fn actions_for(&self, path: &Path, local_change: bool) -> Vec<&Action> {
        self.actions
            .iter()
            .zip(&self.action_matchers)
            .filter(|(a, m)| {
                let runs_here = if local_change { a.do_local } else { !a.do_local_only };
                runs_here && m.matches(path)
            })
            .map(|(a, _)| a)
            .collect()
    }
}

fn join_rest(base: &Path, rest: &Path) -> PathBuf {
    if rest.as_os_str().is_empty() { base.to_path_buf() } else { base.join(rest) }
}

impl Config {
    /// The groups that list `host`, resolved for it (csync2 ignores groups
    /// not listing the local host). Host names compare ASCII
    /// case-insensitively. Fails, as csync2 does, when no group lists the
    /// host, and when a group of the host uses a prefix that has no line
    /// for it.
    pub fn resolve(&self, host: &str) -> Result<Vec<ResolvedGroup>, ConfigError> {
        let host = super::canonical_host(host);
        let prefixes = HostPrefixes::new(&self.prefixes, &host);
        let mut out = Vec::new();
        for g in &self.groups {
            if let Some(local) = g.hosts.iter().rev().find(|h| h.is_host(&host)) {
                out.push(self.resolve_group(g, local, &prefixes)?);
            }
        }
        if out.is_empty() {
            return Err(ConfigError::NotAMember { host, file: self.files.first().cloned().unwrap_or_default() });
        }
        Ok(out)
    }

    /// The path of prefix `name` on `host`, if the prefix is declared and
    /// one of its lines matches the host.
    pub fn prefix_path(&self, name: &str, host: &str) -> Result<Option<String>, ConfigError> {
        let host = super::canonical_host(host);
        Ok(HostPrefixes::new(&self.prefixes, &host).path(name)?.map(str::to_string))
    }

    /// The group named `name`.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    fn resolve_group(
        &self,
        g: &Group,
        local: &HostEntry,
        prefixes: &HostPrefixes<'_>,
    ) -> Result<ResolvedGroup, ConfigError> {
        let patterns = g
            .patterns
            .iter()
            .map(|p| {
                Ok(Pattern {
                    kind: p.kind,
                    text: prefixes.expand_pattern(&p.text, &p.location)?,
                    location: p.location.clone(),
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;

        let mut roots = Vec::new();
        for p in g.patterns.iter().filter(|p| p.kind == PatternKind::Include && p.is_path_pattern()) {
            let logical = literal_root(&p.text);
            roots.push(IncludeRoot {
                logical: logical.to_string(),
                local: PathBuf::from(prefixes.expand_path(logical, &p.location)?),
            });
        }

        let key = match &g.key {
            Some(k) => {
                let k = PathBuf::from(prefixes.expand_path(k, &g.location)?);
                Some(if k.is_relative() { self.system_dir.join(k) } else { k })
            }
            None => None,
        };
        let backup_directory = match &g.backup_directory {
            Some(d) => Some(PathBuf::from(prefixes.expand_path(d, &g.location)?)),
            None => None,
        };
        let mut actions = Vec::with_capacity(g.actions.len());
        let mut action_matchers = Vec::with_capacity(g.actions.len());
        for a in &g.actions {
            let mut a = a.clone();
            for p in &mut a.patterns {
                *p = prefixes.expand_pattern(p, &g.location)?;
            }
            action_matchers.push(ActionMatcher::new(&a.patterns, &g.location)?);
            actions.push(a);
        }
        let left_count = g.hosts.iter().position(|h| h.is_host(&local.name)).unwrap_or(0);

        Ok(ResolvedGroup {
            name: g.name.clone(),
            hosts: g.hosts.clone(),
            local: local.clone(),
            key,
            roots: outermost(roots),
            matcher: Matcher::new(&patterns, false)?,
            compare_matcher: Matcher::new(&patterns, true)?,
            auto: g.auto,
            ignore: self.ignore,
            backup_directory,
            backup_generations: g.backup_generations,
            backup_keep: g.backup_keep.clone(),
            actions,
            location: g.location.clone(),
            left_count,
            action_matchers,
        })
    }
}

/// The longest leading run of whole components of a path pattern without
/// glob characters (`*?[`, or a `\` escape); a leading `%NAME%` always
/// counts as literal. `/` when even the first component is a glob.
pub(crate) fn literal_root(pattern: &str) -> &str {
    let mut end = 0;
    let mut offset = 0;
    for (i, segment) in pattern.split('/').enumerate() {
        let literal = (i == 0 && segment.starts_with('%')) || !segment.contains(['*', '?', '[', '\\']);
        if !literal {
            break;
        }
        end = offset + segment.len();
        offset = end + 1;
    }
    if end == 0 { "/" } else { &pattern[..end] }
}

/// Drops every root that lies inside (or equals) another, comparing local
/// directories, and sorts the rest by logical name.
fn outermost(mut roots: Vec<IncludeRoot>) -> Vec<IncludeRoot> {
    roots.sort_by(|a, b| {
        a.local.components().count().cmp(&b.local.components().count()).then_with(|| a.logical.cmp(&b.logical))
    });
    let mut kept: Vec<IncludeRoot> = Vec::new();
    for r in roots {
        if !kept.iter().any(|k| r.local.starts_with(&k.local)) {
            kept.push(r);
        }
    }
    kept.sort_by(|a, b| a.logical.cmp(&b.logical));
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_roots() {
        assert_eq!(literal_root("/vol/0/app/shared"), "/vol/0/app/shared");
        assert_eq!(literal_root("/a/*/c"), "/a");
        assert_eq!(literal_root("/a/b*"), "/a");
        assert_eq!(literal_root("/*"), "/");
        assert_eq!(literal_root("/"), "/");
        assert_eq!(literal_root("%app%/shared/[ab]"), "%app%/shared");
        assert_eq!(literal_root("%app%"), "%app%");
        assert_eq!(literal_root("/a/b\\*c/d"), "/a");
        assert_eq!(literal_root("/a/**/x"), "/a");
    }

    #[test]
    fn nested_roots_are_dropped() {
        let r = |l: &str, p: &str| IncludeRoot { logical: l.into(), local: p.into() };
        let roots = outermost(vec![
            r("/srv/www/htdocs", "/srv/www/htdocs"),
            r("/srv/www", "/srv/www"),
            r("%p%/x", "/srv/www/x"),
            r("/etc", "/etc"),
            r("/srv/www2", "/srv/www2"),
            r("/etc", "/etc"),
        ]);
        assert_eq!(roots, vec![r("/etc", "/etc"), r("/srv/www", "/srv/www"), r("/srv/www2", "/srv/www2")]);
    }
}
