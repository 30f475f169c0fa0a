//! The configuration: csync2's configuration language, parsed completely,
//! and resolved for the local host.
//!
//! Terms. A *config file* is a sequence of *directives* in csync2's syntax
//! (`group`, `prefix`, `ignore`, `config`, ...; see `parser.rs` for the
//! grammar and `lexer.rs` for the tokens). `config FILE;` *includes* another
//! file in place. A *group* lists *hosts* and the *patterns* that choose
//! its files (`model.rs`). A *prefix* gives a directory a name, `%NAME%`,
//! whose *path* differs per host (`prefix.rs`). *Resolving* a config for a
//! host ([`Config::resolve`]) keeps that host's groups, expands prefixes,
//! and compiles patterns into a [`Matcher`] (`pattern.rs`) and *include
//! roots* (`resolve.rs`). A *logical path* is a path as every host names it
//! (prefix unexpanded); a *local path* is where it lives on this host.
//!
//! Every config file is read as a trusted file ([`crate::trusted`]): a
//! regular file of at most 4 MiB that only its owner (this user or root)
//! may change, since it names the commands actions run as root.
//!
//! Directives snapsync accepts but has no use for (`nossl`, `database`,
//! `tempdir`, `lock-timeout`, `no-cygwin-lowercase`) produce a [`Warning`]
//! for the caller to log, never an error. snapsync's extensions, where
//! csync2 has no word for a thing: a top-level `port N;` (default
//! [`DEFAULT_PORT`]) and `name@addr:port` / `name@[v6addr]:port` in host
//! lists.

mod error;
mod lexer;
mod model;
mod parser;
mod pattern;
mod prefix;
mod resolve;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

pub use error::ConfigError;
pub use model::{
    Action, AutoPolicy, DEFAULT_BACKUP_GENERATIONS, Group, HostEntry, Ignore, KeepPolicy, Pattern, PatternKind, Prefix,
    PrefixEntry, UnknownAutoPolicy,
};
pub use pattern::{Class, Matcher};
pub use resolve::{IncludeRoot, ResolvedGroup};

/// The UDP port used when the config sets none.
pub const DEFAULT_PORT: u16 = 30865;

/// The system directory when `SNAPSYNC_SYSTEM_DIR` is not set.
pub const DEFAULT_SYSTEM_DIR: &str = "/etc";

/// A place in a config file. Displays as `file:line:column`, both counted
/// from 1 (columns in characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Location {
    /// The config file.
    pub file: PathBuf,
    /// The line, from 1.
    pub line: u32,
    /// The column, from 1.
    pub column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// Something in the config that is accepted but deserves a word, such as
/// a csync2 directive that snapsync ignores. Displays on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Where it is.
    pub location: Location,
    /// What it is about.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// A parsed configuration: every group, whichever hosts it lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The groups, in the order written.
    pub groups: Vec<Group>,
    /// The prefix declarations, in the order written.
    pub prefixes: Vec<Prefix>,
    /// Attributes not synchronized (`ignore ...;`), for every group.
    pub ignore: Ignore,
    /// The default UDP port of every host (`port N;`).
    pub port: u16,
    /// Warnings found while parsing, for the caller to log.
    pub warnings: Vec<Warning>,
    /// Every file read: the main file first, then the included ones in the
    /// order they were opened.
    pub files: Vec<PathBuf>,
    /// Where relative key file names point (csync2's system directory);
    /// [`system_dir`] when loaded.
    pub system_dir: PathBuf,
}

/// Reads and parses the config file `path`, following `config FILE;`
/// includes.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let src = lexer::read_config_file(path).map_err(|e| match e {
        lexer::ReadFailure::File(crate::trusted::TrustError::Io { source, .. }) => {
            ConfigError::Read { path: path.to_path_buf(), source }
        }
        lexer::ReadFailure::File(source) => ConfigError::Unsafe { source },
        lexer::ReadFailure::NotUtf8(location) => ConfigError::NotUtf8 { location },
    })?;
    parse_str(&src, path)
}

/// Parses config text `src` as if read from `file`, which names it in
/// locations and is the base of relative `config FILE;` includes (these
/// are read from disk).
pub fn parse_str(src: &str, file: &Path) -> Result<Config, ConfigError> {
    let mut includes = lexer::Includes::default();
    let tokens = lexer::tokenize_main(src, file, &mut includes)?;
    let parsed = parser::parse(tokens)?;
    Ok(Config {
        groups: parsed.groups,
        prefixes: parsed.prefixes,
        ignore: parsed.ignore,
        port: parsed.port,
        warnings: parsed.warnings,
        files: includes.files,
        system_dir: system_dir(),
    })
}

/// A host name as snapsync keeps and compares it: ASCII lower case.
///
/// Host names compare case-insensitively everywhere (SPEC §3), as DNS names
/// do. Rather than comparing loosely in many places, every name is made
/// canonical where it enters the program (config host lists, `-N` and the
/// system hostname, a peer certificate's name, the pin file, a command's
/// `--peer`) and compared exactly from then on: a certificate for `APP1`
/// then meets the pin of `app1`, not an empty slot.
pub fn canonical_host(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// The system directory: `$SNAPSYNC_SYSTEM_DIR`, else `/etc`.
pub fn system_dir() -> PathBuf {
    std::env::var_os("SNAPSYNC_SYSTEM_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_SYSTEM_DIR), PathBuf::from)
}

/// The config file for `-C NAME`: `DIR/snapsync.cfg` without a name,
/// `DIR/snapsync_NAME.cfg` with one. Names are limited to `[a-z0-9]+`, as
/// csync2 limits them.
pub fn config_path(system_dir: &Path, name: Option<&str>) -> Result<PathBuf, ConfigError> {
    match name {
        None => Ok(system_dir.join("snapsync.cfg")),
        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) => {
            Ok(system_dir.join(format!("snapsync_{n}.cfg")))
        }
        Some(n) => Err(ConfigError::InvalidConfigName { name: n.to_string() }),
    }
}
