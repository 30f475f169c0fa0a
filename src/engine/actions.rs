//! Running a group's actions after changes were applied, as csync2 does:
//! each action whose patterns match a changed path runs once per run, its
//! `%%` replaced by the matching paths, its output appended to its
//! logfile (`/dev/null` without one).

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::os::unix::ffi::OsStrExt;
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
        let list = shell_words(&paths);
        let log = action.logfile.clone().unwrap_or_else(|| "/dev/null".to_owned());
        for exec in &action.exec {
            let command = substitute(exec, &list);
            let shown = String::from_utf8_lossy(&command).into_owned();
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
                .arg(OsStr::from_bytes(&command))
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err.map(Stdio::from).unwrap_or_else(|_| Stdio::null()))
                .status();
            match status {
                Ok(s) if s.success() => tracing::info!("group {}: ran action `{shown}`", g.name),
                Ok(s) => tracing::warn!("group {}: action `{shown}` exited with {s}", g.name),
                Err(e) => tracing::error!("group {}: cannot run action `{shown}`: {e}", g.name),
            }
        }
    }
}

/// The paths as shell words, separated by spaces. Paths are taken as
/// bytes: a name that is not UTF-8 reaches the command as it is on disk.
fn shell_words(paths: &[&Path]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(&shell_quote(p.as_os_str().as_bytes()));
    }
    out
}

/// `exec` with every `%%` replaced by `list`.
fn substitute(exec: &str, list: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(exec.len() + list.len());
    let mut parts = exec.split("%%");
    if let Some(first) = parts.next() {
        out.extend_from_slice(first.as_bytes());
    }
    for part in parts {
        out.extend_from_slice(list);
        out.extend_from_slice(part.as_bytes());
    }
    out
}

/// `s` as one shell word. Peers choose file names, and actions run as the
/// daemon's user (root) through `/bin/sh`: anything but a short list of
/// inert characters is single-quoted, and a single quote is closed,
/// escaped and reopened, so no byte of a name is ever interpreted.
fn shell_quote(s: &[u8]) -> Vec<u8> {
    if !s.is_empty() && s.iter().all(|b| b.is_ascii_alphanumeric() || b"/._-+,:@%".contains(b)) {
        return s.to_vec();
    }
    let mut out = Vec::with_capacity(s.len() + 2);
    out.push(b'\'');
    for &b in s {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What `/bin/sh` makes of `words`: each argument it passes on, as bytes.
    fn sh_args(words: &[u8]) -> Vec<Vec<u8>> {
        let mut script = b"for a in ".to_vec();
        script.extend_from_slice(words);
        script.extend_from_slice(b"; do printf '%s\\0' \"$a\"; done");
        let out = Command::new("/bin/sh").arg("-c").arg(OsStr::from_bytes(&script)).output().expect("sh runs");
        assert!(out.status.success(), "sh failed on {:?}", String::from_utf8_lossy(&script));
        let mut args: Vec<Vec<u8>> = out.stdout.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
        args.pop();
        args
    }

    #[test]
    fn hostile_names_reach_the_shell_as_one_word_each() {
        let names: Vec<&[u8]> = vec![
            b"plain",
            b"with space",
            b"quote'in'it",
            b"$(touch /tmp/snapsync-pwned)",
            b"`id`;rm -rf /",
            b"new\nline",
            b"*",
            b"-n",
            b"\xff\xfe not utf-8",
            b"back\\slash\"dq",
        ];
        let paths: Vec<PathBuf> = names.iter().map(|n| PathBuf::from(OsStr::from_bytes(n))).collect();
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        assert_eq!(sh_args(&shell_words(&refs)), names.iter().map(|n| n.to_vec()).collect::<Vec<_>>());
    }

    #[test]
    fn every_percent_pair_is_replaced() {
        assert_eq!(substitute("a %% b %%", b"X"), b"a X b X");
        assert_eq!(substitute("none", b"X"), b"none");
    }

    proptest! {
        #[test]
        fn any_name_is_one_shell_word(name in proptest::collection::vec(1u8..=255, 1..24)) {
            let path = PathBuf::from(OsStr::from_bytes(&name));
            prop_assert_eq!(sh_args(&shell_words(&[path.as_path()])), vec![name]);
        }
    }
}
