//! Progress of long work (a scan, a transfer, a restore, a verify), as the
//! library reports it. How it is shown is the caller's: the command line
//! draws bars on a terminal and nothing on a pipe or with `--json`; the
//! daemon sends it to the command that waits (`crate::daemon`). The
//! library only counts.
//!
//! Terms: a *sink* ([`ProgressSink`]) is where one operation reports; a
//! *task* ([`ProgressTask`]) is one piece of its work (scanning a group,
//! receiving from a peer), counted in a [`Unit`], which ends when dropped.
//! A [`Reporter`] is a sink handed along with an operation: each operation
//! gets its own, so a daemon running several commands at once reports each
//! one's work to its own caller.

use std::sync::Arc;

/// What a task counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Entries, files or chunks.
    Items,
    /// Bytes (shown with a rate and the time left when the length is known).
    Bytes,
}

/// Where an operation reports its long work.
pub trait ProgressSink: Send + Sync {
    /// Starts reporting one piece of work, `what` (`scanning web`), of
    /// `len` units when that is known beforehand. The work ends when the
    /// task is dropped.
    fn start(&self, what: &str, len: Option<u64>, unit: Unit) -> Box<dyn ProgressTask>;
}

/// One piece of long work being reported.
pub trait ProgressTask: Send + Sync {
    /// `n` more units done.
    fn inc(&self, n: u64);

    /// `n` more bytes read, for work counted in items that also reads
    /// bytes (a scan counts entries and the bytes of the files it reads).
    fn read(&self, _n: u64) {}
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Quiet;

impl ProgressSink for Quiet {
    fn start(&self, _what: &str, _len: Option<u64>, _unit: Unit) -> Box<dyn ProgressTask> {
        Box::new(Quiet)
    }
}

impl ProgressTask for Quiet {
    fn inc(&self, _n: u64) {}
}

/// The sink of one operation, cheap to clone into the tasks it spawns;
/// reports nothing by default.
#[derive(Clone)]
pub struct Reporter(Arc<dyn ProgressSink>);

impl Reporter {
    /// Reports to `sink`.
    pub fn new(sink: Arc<dyn ProgressSink>) -> Self {
        Reporter(sink)
    }
}

impl Default for Reporter {
    fn default() -> Self {
        Reporter(Arc::new(Quiet))
    }
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reporter")
    }
}

impl std::ops::Deref for Reporter {
    type Target = dyn ProgressSink;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}
