//! Errors of the state and content stores.

use std::path::{Path, PathBuf};

/// An error opening, reading or writing a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation on the store failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The database engine reported an error.
    #[error("database {}: {source}", path.display())]
    Db {
        /// The database directory.
        path: PathBuf,
        /// The engine's error.
        source: Box<fjall::Error>,
    },
    /// A write to the state failed (a full disk, an I/O error); nothing of
    /// the batch was recorded.
    #[error(
        "state database {}: writing failed ({source}{}); nothing of this command was recorded; {}",
        path.display(),
        match poisoned_by {
            Some(cause) => format!(", after a concurrent write failed: {cause}"),
            None => String::new(),
        },
        match reopened {
            None => "the database was reopened: free space (or fix the cause) and run the command again".to_owned(),
            Some(why) => why.clone(),
        }
    )]
    WriteFailed {
        /// The database directory.
        path: PathBuf,
        /// The engine's error.
        source: Box<fjall::Error>,
        /// When the engine refused the write because an earlier one, made
        /// at the same time, failed and poisoned it: that write's error
        /// (a full disk, say), the cause worth reporting.
        poisoned_by: Option<String>,
        /// Why the database could not be reopened (`None`: it was).
        reopened: Option<String>,
    },
    /// Another process holds the state.
    #[error(
        "state directory {} is in use by another snapsync process (pid {pid}); \
         stop it, or use its socket, and try again",
        path.display()
    )]
    Locked {
        /// The state directory.
        path: PathBuf,
        /// The pid written in the lock file, as found.
        pid: String,
    },
    /// The state was written by an incompatible version.
    #[error("state in {} has format {found}; this snapsync reads format {expected}", path.display())]
    Format {
        /// The state directory.
        path: PathBuf,
        /// The format found.
        found: u32,
        /// The format this build reads.
        expected: u32,
    },
    /// Stored data does not decode or does not match its hash.
    #[error("store {} is damaged: {what}: {why}; run `snapsync verify --repair`", path.display())]
    Corrupt {
        /// The store directory.
        path: PathBuf,
        /// What was being read.
        what: String,
        /// What is wrong with it.
        why: String,
    },
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        StoreError::Io { path: path.to_path_buf(), source }
    }

    pub(crate) fn db(path: &Path, source: fjall::Error) -> Self {
        if matches!(source, fjall::Error::Locked) {
            return StoreError::Locked { path: path.to_path_buf(), pid: "unknown".into() };
        }
        StoreError::Db { path: path.to_path_buf(), source: Box::new(source) }
    }
}
