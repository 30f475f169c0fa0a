//! Running a group's actions after changes were applied, as csync2 does:
//! each action whose patterns match a changed path runs once per run, its
//! `%%` replaced by the matching paths, its output appended to its
//! logfile (`/dev/null` without one).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::config::ResolvedGroup;

/// Runs the actions of `g` for `changed` local paths. `local_change`:
/// the changes were made here (only `do-local` actions run), rather than
/// applied from a peer (all but `do-local-only` ones run). Failures are
/// logged; they never undo the changes.
pub fn run_actions(g: &ResolvedGroup, changed: &[PathBuf], local_change: bool) {
    for (i, action) in g.actions.iter().enumerate() {
        let paths: Vec<&Path> = changed
            .iter()
            .filter(|p| g.actions_for(p, local_change).iter().any(|a| std::ptr::eq(*a, &g.actions[i])))
            .map(PathBuf::as_path)
            .collect();
        if paths.is_empty() {
            continue;
        }
        let list = paths.iter().map(|p| shell_quote(&p.to_string_lossy())).collect::<Vec<_>>().join(" ");
        let log = action.logfile.clone().unwrap_or_else(|| "/dev/null".to_owned());
        for exec in &action.exec {
            let command = exec.replace("%%", &list);
            let out = match OpenOptions::new().create(true).append(true).open(&log) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!("group {}: action logfile {log}: {e}", g.name);
                    continue;
                }
            };
            let err = out.try_clone();
            let status = Command::new("/bin/sh")
                .arg("-c")
                .arg(&command)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err.map(Stdio::from).unwrap_or_else(|_| Stdio::null()))
                .status();
            match status {
                Ok(s) if s.success() => tracing::info!("group {}: ran action `{command}`", g.name),
                Ok(s) => tracing::warn!("group {}: action `{command}` exited with {s}", g.name),
                Err(e) => tracing::error!("group {}: cannot run action `{command}`: {e}", g.name),
            }
        }
    }
}

/// `s` as one shell word.
fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+,:@%".contains(&b)) {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}
