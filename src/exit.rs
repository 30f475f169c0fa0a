//! Exit statuses of every command (SPEC §3).

/// Success.
pub const EXIT_OK: u8 = 0;
/// A runtime failure (I/O, damaged data, a peer).
pub const EXIT_FAILURE: u8 = 1;
/// Bad usage or configuration.
pub const EXIT_USAGE: u8 = 2;
/// Finished, but conflicts or differences remain.
pub const EXIT_DIFFERENCES: u8 = 3;
/// Stopped by Ctrl-C (128 + SIGINT, what a shell reports for a command
/// SIGINT ended).
pub const EXIT_INTERRUPTED: u8 = 130;
