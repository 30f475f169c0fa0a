//! Exit statuses of every command (SPEC §3).

/// Success.
pub const EXIT_OK: u8 = 0;
/// A runtime failure (I/O, damaged data, a peer).
pub const EXIT_FAILURE: u8 = 1;
/// Bad usage or configuration.
pub const EXIT_USAGE: u8 = 2;
/// Finished, but conflicts or differences remain.
pub const EXIT_DIFFERENCES: u8 = 3;
/// What the daemon answers for a command its caller interrupted (Ctrl-C):
/// 128 + SIGINT, as a shell reports a command SIGINT ended. The command
/// itself then exits [`EXIT_FAILURE`], SPEC §3 having no other status for
/// a run that did not finish.
pub const EXIT_INTERRUPTED: u8 = 130;
