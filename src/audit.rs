//! The audit trail: one log line for every change applied to disk.
//!
//! Lines go to the `audit` tracing target at info level, which the default
//! log filter always shows, so an operator can reconstruct what snapsync
//! wrote, where and why: `host` (this node), `peer` (the node the change
//! came from, or the local command that made it, such as `restore`),
//! `action` and `path`.

use std::path::Path;

/// Logs one applied change.
pub fn applied(host: &str, peer: &str, action: &str, path: &Path) {
    tracing::info!(target: "audit", "audit host={host} peer={peer} action={action} path={}", path.display());
}
