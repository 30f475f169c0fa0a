//! Configuration errors.
//!
//! Every error that concerns a place in a config file carries its
//! [`Location`] and displays as `file:line:column: ...`; syntax errors say
//! what was *expected* and what was *found*. All of them are permanent: the
//! config has to be edited before anything can run.

use std::io;
use std::path::PathBuf;

use super::Location;
use super::lexer::MAX_INCLUDE_DEPTH;
use crate::trusted::TrustError;

/// Why a configuration could not be loaded or resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The main config file could not be read.
    #[error("{}: cannot read config file: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file named by `config FILE;` could not be read.
    #[error("{location}: cannot read included config file {}: {source}", .path.display())]
    ReadInclude {
        /// Where the file is named.
        location: Location,
        /// The file, relative names already joined to the including file's
        /// directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The main config file is not a regular file, too large, or may be
    /// changed by other users.
    #[error("{source}")]
    Unsafe {
        /// What is wrong, naming the file.
        #[source]
        source: TrustError,
    },
    /// A file named by `config FILE;` is not a regular file, too large, or
    /// may be changed by other users.
    #[error("{location}: included {source}")]
    UnsafeInclude {
        /// Where the file is named.
        location: Location,
        /// What is wrong, naming the file.
        #[source]
        source: TrustError,
    },
    /// A config file is not UTF-8 text.
    #[error("{location}: config file is not valid UTF-8 text")]
    NotUtf8 {
        /// The first byte that is not UTF-8.
        location: Location,
    },
    /// The text does not follow the grammar.
    #[error("{location}: expected {expected}, found {found}")]
    Syntax {
        /// Where the offending token starts.
        location: Location,
        /// What the grammar allows here.
        expected: String,
        /// What is there instead.
        found: String,
    },
    /// A directive's argument is not a valid value (a number, a policy, a
    /// port, an ignore property, ...).
    #[error("{location}: {directive}: expected {expected}, found {found:?}")]
    InvalidValue {
        /// Where the value is.
        location: Location,
        /// The directive the value belongs to.
        directive: &'static str,
        /// What would be valid.
        expected: String,
        /// The value as written.
        found: String,
    },
    /// A directive that may appear once per group appears again.
    #[error("{location}: a group may only have one {directive} (the first is at {first})")]
    Repeated {
        /// The second occurrence.
        location: Location,
        /// The directive (`key`, `auto`).
        directive: &'static str,
        /// The first occurrence.
        first: Location,
    },
    /// A group has no `key FILE;`.
    #[error("{location}: group \"{group}\" has no key; every group needs exactly one `key FILE;`")]
    MissingKey {
        /// Where the group starts.
        location: Location,
        /// The group's name.
        group: String,
    },
    /// Two groups have the same name.
    #[error("{location}: duplicate group name \"{name}\" (first defined at {first})")]
    DuplicateGroup {
        /// The second definition.
        location: Location,
        /// The name.
        name: String,
        /// The first definition.
        first: Location,
    },
    /// A prefix line names a relative path.
    #[error("{location}: prefix path must be absolute, found {path:?}")]
    RelativePrefixPath {
        /// Where the path is.
        location: Location,
        /// The path as written.
        path: String,
    },
    /// `%NAME%` is used, but no `prefix NAME { ... }` is declared.
    #[error("{location}: unknown prefix %{name}% (no `prefix {name} {{ ... }}` block is declared)")]
    UnknownPrefix {
        /// Where the reference is.
        location: Location,
        /// The prefix name.
        name: String,
    },
    /// A `%` at the start of a path is not a well-formed `%NAME%` reference
    /// followed by `/` or nothing.
    #[error("{location}: expected %NAME% optionally followed by /path, found {text:?}")]
    BadPrefixReference {
        /// Where the path is.
        location: Location,
        /// The path as written.
        text: String,
    },
    /// A prefix is used by a group of this host, but none of its `on` lines
    /// matches the host.
    #[error("{location}: prefix %{name}% has no `on` line matching host \"{host}\"")]
    PrefixUndefinedForHost {
        /// Where the reference is.
        location: Location,
        /// The prefix name.
        name: String,
        /// The host being resolved.
        host: String,
    },
    /// `config FILE;` includes form a cycle.
    #[error("{location}: config include cycle: {}", display_chain(.chain))]
    IncludeCycle {
        /// The `config` statement that closes the cycle.
        location: Location,
        /// The files in the cycle, the first repeated at the end.
        chain: Vec<PathBuf>,
    },
    /// `config FILE;` includes are nested too deeply.
    #[error("{location}: config includes nested more than {MAX_INCLUDE_DEPTH} levels deep at {}", .path.display())]
    IncludeTooDeep {
        /// The `config` statement.
        location: Location,
        /// The file it names.
        path: PathBuf,
    },
    /// A pattern cannot be compiled.
    #[error("{location}: invalid pattern {pattern:?}: {source}")]
    InvalidPattern {
        /// Where the pattern is.
        location: Location,
        /// The pattern as compiled (prefixes expanded).
        pattern: String,
        /// The glob compiler's complaint.
        #[source]
        source: globset::Error,
    },
    /// No group lists the local host; csync2 refuses to run in that case.
    #[error("host \"{host}\" is not a member of any group in {}", .file.display())]
    NotAMember {
        /// The local host name.
        host: String,
        /// The main config file.
        file: PathBuf,
    },
    /// A `-C NAME` config name has characters other than `[a-z0-9]`.
    #[error("invalid config name {name:?}: config names are limited to [a-z0-9]+")]
    InvalidConfigName {
        /// The name as given.
        name: String,
    },
}

impl ConfigError {
    /// The place in a config file the error concerns, if any.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Read { .. }
            | ConfigError::Unsafe { .. }
            | ConfigError::NotAMember { .. }
            | ConfigError::InvalidConfigName { .. } => None,
            ConfigError::ReadInclude { location, .. }
            | ConfigError::UnsafeInclude { location, .. }
            | ConfigError::NotUtf8 { location }
            | ConfigError::Syntax { location, .. }
            | ConfigError::InvalidValue { location, .. }
            | ConfigError::Repeated { location, .. }
            | ConfigError::MissingKey { location, .. }
            | ConfigError::DuplicateGroup { location, .. }
            | ConfigError::RelativePrefixPath { location, .. }
            | ConfigError::UnknownPrefix { location, .. }
            | ConfigError::BadPrefixReference { location, .. }
            | ConfigError::PrefixUndefinedForHost { location, .. }
            | ConfigError::IncludeCycle { location, .. }
            | ConfigError::IncludeTooDeep { location, .. }
            | ConfigError::InvalidPattern { location, .. } => Some(location),
        }
    }
}

fn display_chain(chain: &[PathBuf]) -> String {
    chain.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" -> ")
}
