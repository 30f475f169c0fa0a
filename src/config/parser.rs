//! The grammar of csync2's configuration language, over the tokens of
//! [`super::lexer`].
//!
//! A config is a sequence of *top-level directives*: `group`, `prefix`,
//! `ignore`, `nossl`, `database`, `tempdir`, `lock-timeout`,
//! `no-cygwin-lowercase`, and snapsync's `port`. A group's body holds
//! *group directives*, each ended by `;` (`host`, `key`, `include`,
//! `exclude`, `compare`, `auto`, `backup-directory`, `backup-generations`)
//! and `action { ... }` blocks, which are not. Lists (hosts, patterns,
//! commands, ignore properties) may be empty, as in csync2.
//!
//! Two csync2 behaviours are reproduced on purpose:
//!
//! - `compare a b c;` makes `a` and `b` *include* patterns and only `c` a
//!   compare pattern (csync2's grammar builds the list with the include
//!   rule); a warning says so.
//! - An unnamed `group { ... }` is called `group_N`, N counting unnamed
//!   groups from 1.
//!
//! Checks that need the whole file (duplicate group names, prefix
//! references, missing keys) are made after parsing.

use std::collections::HashMap;

use super::lexer::{Keyword, Token, TokenKind};
use super::model::{
    Action, AutoPolicy, DEFAULT_BACKUP_GENERATIONS, Group, HostEntry, Ignore, KeepPolicy, Pattern, PatternKind, Prefix,
    PrefixEntry, strip_trailing_slashes,
};
use super::prefix::split_ref;
use super::{ConfigError, DEFAULT_PORT, Location, Warning};

/// What parsing a token stream yields.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) groups: Vec<Group>,
    pub(crate) prefixes: Vec<Prefix>,
    pub(crate) ignore: Ignore,
    pub(crate) port: u16,
    pub(crate) warnings: Vec<Warning>,
}

const TOP_LEVEL: &str =
    "a top-level directive (group, prefix, ignore, config, nossl, database, tempdir, lock-timeout, port)";
const GROUP_LEVEL: &str = "a directive (host, key, include, exclude, compare, auto, action, backup-directory, \
     backup-generations, backup-keep) or '}' to end the group";
const ACTION_LEVEL: &str =
    "an action directive (pattern, exec, logfile, do-local, do-local-only) or '}' to end the action";

/// Parses tokens ending in [`TokenKind::Eof`].
pub(crate) fn parse(tokens: Vec<Token>) -> Result<Parsed, ConfigError> {
    let mut p = Parser {
        tokens,
        pos: 0,
        unnamed_groups: 0,
        prefix_refs: Vec::new(),
        out: Parsed {
            groups: Vec::new(),
            prefixes: Vec::new(),
            ignore: Ignore::default(),
            port: DEFAULT_PORT,
            warnings: Vec::new(),
        },
    };
    p.config()?;
    check(&p.out, &p.prefix_refs)?;
    Ok(p.out)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    unnamed_groups: u32,
    /// Every `%NAME%` used, to check once all prefixes are known (csync2's
    /// sample declares its prefix after the group that uses it).
    prefix_refs: Vec<(String, Location)>,
    out: Parsed,
}

impl Parser {
    fn peek(&self) -> &Token {
        // The stream always ends in Eof, and Eof is never consumed.
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if t.kind != TokenKind::Eof {
            self.pos += 1;
        }
        t
    }

    fn error(token: &Token, expected: impl Into<String>) -> ConfigError {
        ConfigError::Syntax {
            location: token.location.clone(),
            expected: expected.into(),
            found: token.kind.to_string(),
        }
    }

    /// Checks the form of a leading `%NAME%` in `text` and remembers the
    /// name.
    fn note_ref(&mut self, text: &str, location: &Location) -> Result<(), ConfigError> {
        if let Some(r) = split_ref(text, location)? {
            self.prefix_refs.push((r.name.to_string(), location.clone()));
        }
        Ok(())
    }

    fn warn(&mut self, location: &Location, message: impl Into<String>) {
        self.out.warnings.push(Warning { location: location.clone(), message: message.into() });
    }

    /// A string argument (quoted or not).
    fn string(&mut self, expected: &str) -> Result<(String, Location), ConfigError> {
        let t = self.next();
        match t.string() {
            Some(s) => Ok((s.to_string(), t.location)),
            None => Err(Self::error(&t, expected)),
        }
    }

    /// Strings up to the `;` that ends a list (which is consumed).
    fn string_list(&mut self, expected: &str) -> Result<Vec<(String, Location)>, ConfigError> {
        let mut items = Vec::new();
        loop {
            let t = self.next();
            match (&t.kind, t.string()) {
                (TokenKind::Semicolon, _) => return Ok(items),
                (_, Some(s)) => items.push((s.to_string(), t.location)),
                _ => return Err(Self::error(&t, format!("{expected} or ';'"))),
            }
        }
    }

    fn semicolon(&mut self, after: &str) -> Result<(), ConfigError> {
        let t = self.next();
        if t.kind == TokenKind::Semicolon { Ok(()) } else { Err(Self::error(&t, format!("';' after {after}"))) }
    }

    fn block_begin(&mut self, what: &str) -> Result<(), ConfigError> {
        let t = self.next();
        if t.kind == TokenKind::BlockBegin { Ok(()) } else { Err(Self::error(&t, format!("'{{' to start {what}"))) }
    }

    fn config(&mut self) -> Result<(), ConfigError> {
        loop {
            let t = self.next();
            match &t.kind {
                TokenKind::Eof => return Ok(()),
                TokenKind::Keyword(Keyword::Group) => self.group(t.location)?,
                TokenKind::Keyword(Keyword::Prefix) => self.prefix(t.location)?,
                TokenKind::Keyword(Keyword::Ignore) => {
                    for (prop, location) in self.string_list("an ignore property (uid, gid, mod)")? {
                        match prop.as_str() {
                            "uid" => self.out.ignore.uid = true,
                            "gid" => self.out.ignore.gid = true,
                            "mod" => self.out.ignore.mode = true,
                            _ => {
                                return Err(ConfigError::InvalidValue {
                                    location,
                                    directive: "ignore",
                                    expected: "uid, gid or mod".into(),
                                    found: prop,
                                });
                            }
                        }
                    }
                }
                TokenKind::Keyword(Keyword::Nossl) => {
                    self.string("the source host pattern of nossl")?;
                    self.string("the destination host pattern of nossl")?;
                    self.semicolon("the nossl host patterns")?;
                    self.warn(&t.location, "nossl is ignored: snapsync always encrypts its transport");
                }
                TokenKind::Keyword(Keyword::Database) => {
                    self.string("a database name")?;
                    self.semicolon("the database name")?;
                    self.warn(
                        &t.location,
                        "database is ignored: snapsync keeps its own state in its state directory (-D)",
                    );
                }
                TokenKind::Keyword(Keyword::Tempdir) => {
                    self.string("a directory")?;
                    self.semicolon("the tempdir directory")?;
                    self.warn(
                        &t.location,
                        "tempdir is ignored: snapsync writes temporary files next to the files they replace",
                    );
                }
                TokenKind::Keyword(Keyword::LockTimeout) => {
                    self.string("a number of seconds")?;
                    self.semicolon("the lock-timeout")?;
                    self.warn(
                        &t.location,
                        "lock-timeout is ignored: it tunes csync2's database locking, which snapsync does not have",
                    );
                }
                TokenKind::Keyword(Keyword::NoCygwinLowercase) => {
                    self.semicolon("no-cygwin-lowercase")?;
                    self.warn(&t.location, "no-cygwin-lowercase is ignored: it only concerns Cygwin builds of csync2");
                }
                TokenKind::Word(w) if w == "port" => {
                    let (value, location) = self.string("a port number")?;
                    self.out.port = parse_port(&value).ok_or_else(|| ConfigError::InvalidValue {
                        location,
                        directive: "port",
                        expected: "a port number from 1 to 65535".into(),
                        found: value,
                    })?;
                    self.semicolon("the port number")?;
                }
                TokenKind::Keyword(k) if is_group_keyword(*k) => {
                    return Err(Self::error(&t, format!("{TOP_LEVEL} (\"{}\" belongs inside a group)", k.as_str())));
                }
                _ => return Err(Self::error(&t, TOP_LEVEL)),
            }
        }
    }

    fn group(&mut self, location: Location) -> Result<(), ConfigError> {
        let t = self.peek().clone();
        let name = match (&t.kind, t.string()) {
            (TokenKind::BlockBegin, _) => {
                self.unnamed_groups += 1;
                format!("group_{}", self.unnamed_groups)
            }
            (_, Some(s)) => {
                self.next();
                s.to_string()
            }
            _ => return Err(Self::error(&t, "a group name or '{'")),
        };
        if name.ends_with('{') && self.peek().kind != TokenKind::BlockBegin {
            let t = self.peek().clone();
            return Err(Self::error(
                &t,
                format!(
                    "'{{' to start the group body (\"{name}\" was read as the group name: put a space before '{{')"
                ),
            ));
        }
        self.block_begin("the group body")?;
        let mut g = Group {
            name,
            hosts: Vec::new(),
            key: None,
            patterns: Vec::new(),
            auto: AutoPolicy::None,
            backup_directory: None,
            backup_generations: DEFAULT_BACKUP_GENERATIONS,
            backup_keep: KeepPolicy::default(),
            actions: Vec::new(),
            location,
        };
        let mut key_at: Option<Location> = None;
        let mut auto_at: Option<Location> = None;
        loop {
            let t = self.next();
            let TokenKind::Keyword(k) = t.kind else {
                if t.kind == TokenKind::BlockEnd {
                    break;
                }
                let expected = if t.kind == TokenKind::Eof {
                    format!("'}}' to end group \"{}\" (opened at {})", g.name, g.location)
                } else {
                    GROUP_LEVEL.to_string()
                };
                return Err(Self::error(&t, expected));
            };
            match k {
                Keyword::Host => self.host_list(&mut g.hosts)?,
                Keyword::Include | Keyword::Exclude => {
                    let kind = if k == Keyword::Include { PatternKind::Include } else { PatternKind::Exclude };
                    for (text, location) in self.string_list("a pattern")? {
                        self.note_ref(&text, &location)?;
                        g.patterns.push(pattern(kind, &text, location));
                    }
                }
                Keyword::Compare => {
                    let items = self.string_list("a pattern")?;
                    if items.len() > 1 {
                        self.warn(
                            &t.location,
                            "compare with several patterns: all but the last are include patterns, \
                             as in csync2; write one compare statement per pattern",
                        );
                    }
                    let last = items.len().saturating_sub(1);
                    for (i, (text, location)) in items.into_iter().enumerate() {
                        self.note_ref(&text, &location)?;
                        let kind = if i == last { PatternKind::Compare } else { PatternKind::Include };
                        g.patterns.push(pattern(kind, &text, location));
                    }
                }
                Keyword::Key => {
                    let (file, file_at) = self.string("a key file name")?;
                    self.semicolon("the key file name")?;
                    self.note_ref(&file, &file_at)?;
                    if let Some(first) = &key_at {
                        return Err(ConfigError::Repeated {
                            location: t.location,
                            directive: "key",
                            first: first.clone(),
                        });
                    }
                    key_at = Some(t.location);
                    g.key = Some(file);
                }
                Keyword::Auto => {
                    let (value, location) = self.string("an auto policy")?;
                    self.semicolon("the auto policy")?;
                    if let Some(first) = &auto_at {
                        return Err(ConfigError::Repeated {
                            location: t.location,
                            directive: "auto",
                            first: first.clone(),
                        });
                    }
                    auto_at = Some(t.location);
                    g.auto = value.parse().map_err(|_| ConfigError::InvalidValue {
                        location,
                        directive: "auto",
                        expected: "none, first, younger, older, bigger, smaller, left or right".into(),
                        found: value,
                    })?;
                }
                Keyword::BackupDirectory => {
                    let (dir, dir_at) = self.string("a directory")?;
                    self.semicolon("the backup directory")?;
                    self.note_ref(&dir, &dir_at)?;
                    g.backup_directory = Some(dir);
                }
                Keyword::BackupGenerations => {
                    let (value, location) = self.string("a number of generations")?;
                    self.semicolon("the number of backup generations")?;
                    g.backup_generations = parse_decimal(&value).ok_or_else(|| ConfigError::InvalidValue {
                        location,
                        directive: "backup-generations",
                        expected: format!("a number from 0 to {}", u32::MAX),
                        found: value,
                    })?;
                }
                Keyword::BackupKeep => g.backup_keep = self.backup_keep()?,
                Keyword::Action => g.actions.push(self.action()?),
                _ => return Err(Self::error(&t, GROUP_LEVEL)),
            }
        }
        self.out.groups.push(g);
        Ok(())
    }

    /// `backup-keep` arguments up to `;`: one or more of `within DURATION`
    /// (`36h`, `2days`, `1week`), `hourly N`, `daily N`, `weekly N`,
    /// `monthly N`. A rule given twice takes its last value.
    fn backup_keep(&mut self) -> Result<KeepPolicy, ConfigError> {
        const RULES: &str = "a rule (within, hourly, daily, weekly, monthly)";
        let mut keep = KeepPolicy::default();
        let mut any = false;
        loop {
            let t = self.next();
            let rule = match (&t.kind, t.string()) {
                (TokenKind::Semicolon, _) if any => return Ok(keep),
                (_, Some(s)) => s.to_string(),
                _ => {
                    let expected = format!("a backup-keep {}{}", &RULES[2..], if any { " or ';'" } else { "" });
                    return Err(Self::error(&t, expected));
                }
            };
            let invalid = |location: Location, expected: String, found: String| ConfigError::InvalidValue {
                location,
                directive: "backup-keep",
                expected,
                found,
            };
            let slot = match rule.as_str() {
                "within" => {
                    let (value, location) = self.string("a duration such as 36h, 14days or 2weeks")?;
                    let d = humantime::parse_duration(&value).ok().filter(|d| !d.is_zero()).ok_or_else(|| {
                        invalid(location, "a duration such as 36h, 14days or 2weeks after within".into(), value)
                    })?;
                    keep.within = Some(d.as_secs().max(1));
                    any = true;
                    continue;
                }
                "hourly" => &mut keep.hourly,
                "daily" => &mut keep.daily,
                "weekly" => &mut keep.weekly,
                "monthly" => &mut keep.monthly,
                _ => return Err(invalid(t.location, RULES.to_owned(), rule)),
            };
            let (value, location) = self.string("a number")?;
            *slot = parse_decimal(&value)
                .ok_or_else(|| invalid(location, format!("a number from 0 to {} after {rule}", u32::MAX), value))?;
            any = true;
        }
    }

    /// `host` arguments up to `;`: `name`, `name@addr`, `( ... )`.
    fn host_list(&mut self, hosts: &mut Vec<HostEntry>) -> Result<(), ConfigError> {
        let mut in_parens: Option<Location> = None;
        loop {
            let t = self.next();
            match (&t.kind, t.string()) {
                (TokenKind::Semicolon, _) if in_parens.is_none() => return Ok(()),
                (TokenKind::ParenOpen, _) if in_parens.is_none() => in_parens = Some(t.location),
                (TokenKind::ParenClose, _) if in_parens.is_some() => in_parens = None,
                (_, Some(name)) => {
                    let mut entry = HostEntry::new(name);
                    entry.receive_only = in_parens.is_some();
                    if self.peek().kind == TokenKind::At {
                        self.next();
                        let (text, location) = self.string("a host address after '@'")?;
                        let (addr, port) = parse_address(&text).map_err(|expected| ConfigError::InvalidValue {
                            location,
                            directive: "host",
                            expected: expected.into(),
                            found: text.clone(),
                        })?;
                        entry.addr = Some(addr.to_ascii_lowercase());
                        entry.port = port;
                    }
                    hosts.push(entry);
                }
                _ => {
                    let expected = match &in_parens {
                        Some(open) => format!("a host name or ')' to close the '(' at {open}"),
                        None => "a host name, '(' or ';'".to_string(),
                    };
                    return Err(Self::error(&t, expected));
                }
            }
        }
    }

    fn action(&mut self) -> Result<Action, ConfigError> {
        self.block_begin("the action body")?;
        let mut a = Action::default();
        loop {
            let t = self.next();
            match t.kind {
                TokenKind::BlockEnd => return Ok(a),
                TokenKind::Keyword(Keyword::Pattern) => {
                    for (text, location) in self.string_list("a pattern")? {
                        self.note_ref(&text, &location)?;
                        a.patterns.push(text);
                    }
                }
                TokenKind::Keyword(Keyword::Exec) => {
                    a.exec.extend(self.string_list("a command")?.into_iter().map(|(s, _)| s));
                }
                TokenKind::Keyword(Keyword::Logfile) => {
                    a.logfile = Some(self.string("a log file name")?.0);
                    self.semicolon("the log file name")?;
                }
                TokenKind::Keyword(Keyword::DoLocal) => {
                    self.semicolon("do-local")?;
                    a.do_local = true;
                }
                TokenKind::Keyword(Keyword::DoLocalOnly) => {
                    self.semicolon("do-local-only")?;
                    a.do_local = true;
                    a.do_local_only = true;
                }
                _ => return Err(Self::error(&t, ACTION_LEVEL)),
            }
        }
    }

    fn prefix(&mut self, location: Location) -> Result<(), ConfigError> {
        let (name, _) = self.string("a prefix name")?;
        self.block_begin("the prefix body")?;
        let mut prefix = Prefix { name, entries: Vec::new(), location };
        loop {
            let t = self.next();
            match t.kind {
                TokenKind::BlockEnd => break,
                TokenKind::Keyword(Keyword::On) => {
                    let (host_pattern, _) = self.string("a host name pattern")?;
                    let colon = self.next();
                    if colon.kind != TokenKind::Colon {
                        let mut expected = "':' after the host name pattern".to_string();
                        if host_pattern.contains(':') {
                            expected.push_str(" (a ':' needs white space after it)");
                        }
                        return Err(Self::error(&colon, expected));
                    }
                    let (path, path_at) = self.string("an absolute path")?;
                    self.semicolon("the prefix path")?;
                    if !path.starts_with('/') {
                        return Err(ConfigError::RelativePrefixPath { location: path_at, path });
                    }
                    prefix.entries.push(PrefixEntry {
                        host_pattern,
                        path: strip_trailing_slashes(&path).to_string(),
                        location: t.location,
                    });
                }
                _ => return Err(Self::error(&t, "'on HOSTPATTERN: /path;' or '}' to end the prefix")),
            }
        }
        if self.out.prefixes.iter().any(|p| p.name == prefix.name) {
            let message = format!(
                "prefix {} is declared again; on each host the last declaration with a matching line wins, as in csync2",
                prefix.name
            );
            self.warn(&prefix.location, message);
        }
        self.out.prefixes.push(prefix);
        Ok(())
    }
}

fn pattern(kind: PatternKind, text: &str, location: Location) -> Pattern {
    Pattern { kind, text: strip_trailing_slashes(text).to_string(), location }
}

fn is_group_keyword(k: Keyword) -> bool {
    matches!(
        k,
        Keyword::Host
            | Keyword::Key
            | Keyword::Include
            | Keyword::Exclude
            | Keyword::Compare
            | Keyword::Auto
            | Keyword::Action
            | Keyword::BackupDirectory
            | Keyword::BackupGenerations
            | Keyword::BackupKeep
    )
}

/// A plain decimal number (digits only).
fn parse_decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_port(s: &str) -> Option<u16> {
    parse_decimal::<u16>(s).filter(|&p| p != 0)
}

/// Splits `addr`, `addr:port`, `[v6addr]`, `[v6addr]:port` or a bare IPv6
/// address (two or more colons, no port). The error says what was expected.
fn parse_address(text: &str) -> Result<(&str, Option<u16>), &'static str> {
    const PORT: &str = "a port number from 1 to 65535 after the address's ':'";
    if let Some(inner) = text.strip_prefix('[') {
        let (addr, after) = inner.split_once(']').ok_or("a ']' to close the IPv6 address")?;
        if addr.is_empty() {
            return Err("an IPv6 address between '[' and ']'");
        }
        return match after {
            "" => Ok((addr, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => parse_port(port).map(|p| (addr, Some(p))).ok_or(PORT),
                None => Err("':' and a port number after ']'"),
            },
        };
    }
    match text.split_once(':') {
        Some((addr, port)) if !port.contains(':') => {
            if addr.is_empty() {
                return Err("a host address before ':'");
            }
            parse_port(port).map(|p| (addr, Some(p))).ok_or(PORT)
        }
        _ => Ok((text, None)),
    }
}

/// The checks that need the whole config.
fn check(parsed: &Parsed, prefix_refs: &[(String, Location)]) -> Result<(), ConfigError> {
    let mut seen: HashMap<&str, &Location> = HashMap::new();
    for g in &parsed.groups {
        if let Some(first) = seen.insert(&g.name, &g.location) {
            return Err(ConfigError::DuplicateGroup {
                location: g.location.clone(),
                name: g.name.clone(),
                first: first.clone(),
            });
        }
        if g.key.is_none() {
            return Err(ConfigError::MissingKey { location: g.location.clone(), group: g.name.clone() });
        }
    }
    for (name, location) in prefix_refs {
        if !parsed.prefixes.iter().any(|p| p.name == *name) {
            return Err(ConfigError::UnknownPrefix { location: location.clone(), name: name.clone() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_address("10.0.0.1"), Ok(("10.0.0.1", None)));
        assert_eq!(parse_address("node-eth2:4000"), Ok(("node-eth2", Some(4000))));
        assert_eq!(parse_address("[::1]:4000"), Ok(("::1", Some(4000))));
        assert_eq!(parse_address("[fe80::1%eth0]"), Ok(("fe80::1%eth0", None)));
        assert_eq!(parse_address("fe80::1"), Ok(("fe80::1", None)));
        for bad in ["a:", "a:x", "a:0", "a:65536", "[::1", "[::1]x", "[]:1", ":1", "[::1]:"] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decimals() {
        assert_eq!(parse_decimal::<u32>("3"), Some(3));
        assert_eq!(parse_decimal::<u32>("0"), Some(0));
        for bad in ["", "+3", "-1", "3a", " 3", "99999999999"] {
            assert_eq!(parse_decimal::<u32>(bad), None, "{bad}");
        }
    }
}
