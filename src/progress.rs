//! Progress of long work (a scan, a restore, a verify), as the library
//! reports it. How it is shown is the caller's: the command line draws
//! bars on a terminal and nothing on a pipe or with `--json`; a daemon
//! could send it to the command that waits. The library only counts.

/// Where a node reports its long work.
pub trait ProgressSink: Send + Sync {
    /// Starts reporting one piece of work, `what` (`scanning web`), of
    /// `len` items when that is known beforehand. The work ends when the
    /// task is dropped.
    fn start(&self, what: &str, len: Option<u64>) -> Box<dyn ProgressTask>;
}

/// One piece of long work being reported.
pub trait ProgressTask: Send + Sync {
    /// `n` more items done.
    fn inc(&self, n: u64);
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Quiet;

impl ProgressSink for Quiet {
    fn start(&self, _what: &str, _len: Option<u64>) -> Box<dyn ProgressTask> {
        Box::new(Quiet)
    }
}

impl ProgressTask for Quiet {
    fn inc(&self, _n: u64) {}
}
