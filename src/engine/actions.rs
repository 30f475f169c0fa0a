//! Running a group's actions after changes, as csync2 does.
//!
//! Terms:
//! - A *local change* is one a check found on this host (`check`, `mark`,
//!   the check a `sync` starts with, the check a node makes of the paths a
//!   peer's pull is about to change). Only actions with `do-local` (or
//!   `do-local-only`) run for it.
//! - A *received change* is one this host applied from a peer. Every
//!   action but `do-local-only` ones runs for it, on this host.
//! - An [`ActionQueue`] collects the changed paths of one *run*: a `sync`
//!   (every peer, both rounds), a `check`, or, on the receiving side, one
//!   session (every `Pull` of it). When the run ends, each action whose
//!   patterns match some of them runs once, its `%%` replaced by all its
//!   paths, its output appended to its logfile (`/dev/null` without one).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::config::ResolvedGroup;
use crate::store::{DirRecord, EntryRecord, Store, StoreError, join_logical};
use crate::tree::Body;

/// The changed paths of one run, by group, waiting for the run to end.
#[derive(Debug, Default)]
pub struct ActionQueue {
    inner: Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    /// By group index: local changes, received changes.
    groups: BTreeMap<usize, (BTreeSet<PathBuf>, BTreeSet<PathBuf>)>,
    /// The run ended and its actions ran.
    ran: bool,
}

impl ActionQueue {
    /// Adds changed local paths of group `gi`: found here (`local`) or
    /// received from a peer. False, and nothing added, once the queue has
    /// run (a pull that outlived its session): the caller runs the
    /// actions for these paths itself.
    pub fn add(&self, gi: usize, local: bool, paths: impl IntoIterator<Item = PathBuf>) -> bool {
        let mut p = self.inner.lock().expect("poisoned");
        if p.ran {
            return false;
        }
        let (here, received) = p.groups.entry(gi).or_default();
        if local {
            here.extend(paths)
        } else {
            received.extend(paths)
        }
        true
    }

    /// Adds the local changes a check found ([`super::GroupCheck::local_changes`]).
    pub fn add_check(&self, groups: &[ResolvedGroup], report: &super::CheckReport) {
        for c in &report.groups {
            if let Some(gi) = groups.iter().position(|g| g.name == c.group)
                && !c.local_changes.is_empty()
            {
                self.add(gi, true, c.local_changes.iter().cloned());
            }
        }
    }

    /// Runs, once, the actions of every group for everything added, and
    /// closes the queue. Blocks until the commands end.
    pub fn run(&self, groups: &[ResolvedGroup]) {
        self.run_pending(groups, true);
    }

    /// Runs the actions of every group for everything added so far and
    /// leaves the queue open: one run of a session that serves several
    /// ends. Blocks until the commands end.
    pub fn run_so_far(&self, groups: &[ResolvedGroup]) {
        self.run_pending(groups, false);
    }

    fn run_pending(&self, groups: &[ResolvedGroup], close: bool) {
        let pending = {
            let mut p = self.inner.lock().expect("poisoned");
            p.ran |= close;
            std::mem::take(&mut p.groups)
        };
        for (gi, (local, received)) in pending {
            if let Some(g) = groups.get(gi) {
                let local: Vec<PathBuf> = local.into_iter().collect();
                let received: Vec<PathBuf> = received.into_iter().collect();
                run_actions(g, &local, &received);
            }
        }
    }
}

/// Runs the actions of `g` once each for the changed local paths:
/// `local` found here, `received` applied from a peer. An action runs for
/// a path when its patterns match it and it runs for that kind of change
/// ([`ResolvedGroup::actions_for`]); its `%%` becomes every such path.
/// Failures are logged; they never undo the changes.
pub fn run_actions(g: &ResolvedGroup, local: &[PathBuf], received: &[PathBuf]) {
    for (i, action) in g.actions.iter().enumerate() {
        let runs_for = |p: &Path, here: bool| g.actions_for(p, here).iter().any(|a| std::ptr::eq(*a, &g.actions[i]));
        let mut seen = BTreeSet::new();
        let paths: Vec<&Path> = local
            .iter()
            .filter(|p| runs_for(p, true))
            .chain(received.iter().filter(|p| runs_for(p, false)))
            .map(PathBuf::as_path)
            .filter(|p| seen.insert(*p))
            .collect();
        if paths.is_empty() {
            continue;
        }
        let list = shell_words(&paths);
        let log = action.logfile.clone().unwrap_or_else(|| "/dev/null".to_owned());
        for exec in &action.exec {
            let command = substitute(exec, &list);
            let shown = exec.escape_debug().to_string();
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
                Ok(s) if s.success() => {
                    tracing::info!("group {}: ran action `{shown}` for {} paths", g.name, paths.len())
                }
                Ok(s) => tracing::warn!("group {}: action `{shown}` exited with {s}", g.name),
                Err(e) => tracing::error!("group {}: cannot run action `{shown}`: {e}", g.name),
            }
        }
    }
}

/// Whether group `g` has an action that runs for local changes: only
/// then does a check work out which paths it changed.
pub(crate) fn wants_local_changes(g: &ResolvedGroup) -> bool {
    g.actions.iter().any(|a| a.do_local || a.do_local_only)
}

/// The local paths a check changes by writing `written` (directory →
/// its new encoded record, `None` when dropped) over what `store` holds
/// now: every child whose kept state (present or not, metadata, body; a
/// directory's tree aside, its children count for themselves) differs.
/// A fresher stat cache or a new version alone is no change.
pub(crate) fn changed_paths(
    g: &ResolvedGroup,
    store: &Store,
    written: &HashMap<Vec<u8>, Option<Vec<u8>>>,
) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = Vec::new();
    for (dir, new) in written {
        let old = store.dir_record(&g.name, dir)?.unwrap_or_default();
        let new = match new {
            Some(enc) => DirRecord::decode(enc).map_err(|why| StoreError::Corrupt {
                path: store.dir().to_path_buf(),
                what: "directory record".to_owned(),
                why,
            })?,
            None => DirRecord::default(),
        };
        let names: BTreeSet<&[u8]> = old.children.iter().chain(&new.children).map(|(n, _)| n.as_slice()).collect();
        for name in names {
            if kept_state(old.get(name)) != kept_state(new.get(name)) {
                let logical = join_logical(dir, name);
                if let Some(local) = g.to_local(Path::new(OsStr::from_bytes(&logical))) {
                    out.push(local);
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// What of a record a change is made of, for [`changed_paths`].
fn kept_state(rec: Option<&EntryRecord>) -> Option<(&crate::tree::Meta, Option<&Body>)> {
    rec.filter(|r| !r.deleted).map(|r| (&r.meta, (!matches!(r.body, Body::Dir { .. })).then_some(&r.body)))
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
pub(crate) fn shell_quote(s: &[u8]) -> Vec<u8> {
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

    /// Group `g` of host `h1` over `/t`, with `actions` in it.
    fn group(actions: &str) -> ResolvedGroup {
        let text = format!("group g {{ host h1 h2; key /k; include /t; {actions} }}");
        let config = crate::config::parse_str(&text, Path::new("/etc/snapsync.cfg")).unwrap();
        config.resolve("h1").unwrap().remove(0)
    }

    fn paths(v: &[&str]) -> Vec<PathBuf> {
        v.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn each_action_runs_once_with_every_path_it_runs_for() {
        let dir = tempfile::tempdir().unwrap();
        let (all, local) = (dir.path().join("all"), dir.path().join("local"));
        let g = group(&format!(
            "action {{ exec \"echo run >> {0}; printf '%s\\n' %% >> {0}\"; }} \
             action {{ exec \"echo run >> {1}; printf '%s\\n' %% >> {1}\"; do-local-only; }}",
            all.display(),
            local.display()
        ));
        run_actions(&g, &paths(&["/t/here"]), &paths(&["/t/b", "/t/a", "/t/b"]));
        // No `do-local`: only the received paths, once each, in one run.
        assert_eq!(std::fs::read_to_string(&all).unwrap(), "run\n/t/b\n/t/a\n");
        // `do-local-only`: only the local one.
        assert_eq!(std::fs::read_to_string(&local).unwrap(), "run\n/t/here\n");
    }

    #[test]
    fn a_queue_runs_once_and_then_hands_paths_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let g = group(&format!("action {{ exec \"printf '%s\\n' %% >> {}\"; do-local; }}", log.display()));
        let q = ActionQueue::default();
        assert!(q.add(0, false, paths(&["/t/2"])));
        assert!(q.add(0, true, paths(&["/t/1"])));
        assert!(q.add(0, false, paths(&["/t/2", "/t/3"])));
        q.run(std::slice::from_ref(&g));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "/t/1\n/t/2\n/t/3\n");
        assert!(!q.add(0, false, paths(&["/t/4"])), "a queue that ran takes nothing more");
        q.run(std::slice::from_ref(&g));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "/t/1\n/t/2\n/t/3\n", "nothing runs twice");
    }

    #[test]
    fn changed_paths_are_state_changes_not_stat_or_version_ones() {
        use crate::tree::Meta;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let g = group("");
        let live = |mode: u32| EntryRecord {
            deleted: false,
            meta: Meta { mode: Some(mode), ..Meta::default() },
            ..EntryRecord::tombstone_for_test()
        };
        let old = DirRecord {
            children: vec![
                (b"chmod".to_vec(), live(0o644)),
                (b"gone".to_vec(), live(0o644)),
                (b"same".to_vec(), live(0o644)),
                (b"stat".to_vec(), live(0o644)),
            ],
        };
        let w = store.writer_blocking();
        let mut b = store.batch(&w);
        b.put_dir_record("g", b"/t", &old).unwrap();
        b.put_dir_record("g", b"/t/d", &DirRecord { children: vec![(b"in".to_vec(), live(0o600))] }).unwrap();
        b.commit().unwrap();
        let mut stat = live(0o644);
        stat.stat.size = 9;
        stat.version = stat.version.bumped("h2", 7);
        let mut gone = live(0o644);
        gone.deleted = true;
        let new = DirRecord {
            children: vec![
                (b"chmod".to_vec(), live(0o600)),
                (b"gone".to_vec(), gone),
                (b"new".to_vec(), live(0o644)),
                (b"same".to_vec(), live(0o644)),
                (b"stat".to_vec(), stat),
            ],
        };
        let written: HashMap<Vec<u8>, Option<Vec<u8>>> =
            [(b"/t".to_vec(), Some(new.encode())), (b"/t/d".to_vec(), None)].into_iter().collect();
        assert_eq!(changed_paths(&g, &store, &written).unwrap(), paths(&["/t/chmod", "/t/d/in", "/t/gone", "/t/new"]));
    }

    proptest! {
        #[test]
        fn any_name_is_one_shell_word(name in proptest::collection::vec(1u8..=255, 1..24)) {
            let path = PathBuf::from(OsStr::from_bytes(&name));
            prop_assert_eq!(sh_args(&shell_words(&[path.as_path()])), vec![name]);
        }
    }
}
