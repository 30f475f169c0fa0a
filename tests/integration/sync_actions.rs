//! SPEC §4.12: actions run once per sync run with `%%` replaced by the
//! changed paths, their output appended to the logfile, as csync2 does:
//! on the receiving host for changes it took from peers, on the host where
//! a change was made for `do-local` ones, never on receivers for
//! `do-local-only` ones. Names reach the command as one argument each.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, Setup};
use crate::common::write;

/// How long a receiver may take to run its actions after the sync that
/// sent it changes returned (they run when the run ends there, or when
/// its session does).
const ACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Where actions record their runs: one file per run, holding the
/// arguments the command got, each ended by a NUL.
struct Runs {
    dir: tempfile::TempDir,
}

impl Runs {
    fn new() -> Runs {
        Runs { dir: tempfile::Builder::new().prefix("snapsync-actions-").tempdir().unwrap() }
    }

    /// An action block with `opts` whose runs are recorded under `tag`.
    fn action(&self, tag: &str, opts: &str) -> String {
        format!(
            "action {{ {opts} exec \"printf '%s\\0' %% > $(mktemp {}/{tag}.XXXXXX)\"; }}",
            self.dir.path().display()
        )
    }

    /// The runs recorded under `tag` whose paths are in `tree`, each as
    /// its arguments; a run mixing two trees fails the test.
    fn of(&self, tag: &str, tree: &Path) -> Vec<Vec<PathBuf>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.dir.path()).unwrap() {
            let e = e.unwrap();
            if !e.file_name().as_bytes().starts_with(format!("{tag}.").as_bytes()) {
                continue;
            }
            let data = std::fs::read(e.path()).unwrap();
            let args: Vec<PathBuf> = data
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| PathBuf::from(std::ffi::OsStr::from_bytes(a)))
                .collect();
            let mine = args.iter().filter(|a| a.starts_with(tree)).count();
            assert!(mine == 0 || mine == args.len(), "one run got paths of two hosts: {args:?}");
            if mine > 0 {
                out.push(args);
            }
        }
        out
    }

    /// Forgets the runs recorded so far.
    fn clear(&self) {
        for e in std::fs::read_dir(self.dir.path()).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
    }

    /// Waits (bounded) until `tag` has run at least once on `tree`.
    fn wait_for(&self, tag: &str, tree: &Path) -> Vec<Vec<PathBuf>> {
        self.wait_within(tag, tree, ACTION_TIMEOUT)
    }

    /// Waits at most `limit` until `tag` has run at least once on `tree`.
    fn wait_within(&self, tag: &str, tree: &Path, limit: Duration) -> Vec<Vec<PathBuf>> {
        let start = Instant::now();
        loop {
            let runs = self.of(tag, tree);
            if !runs.is_empty() {
                return runs;
            }
            assert!(start.elapsed() < limit, "action {tag} did not run on {} within {limit:?}", tree.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Every node records its (empty) tree, so that the runs that follow are
/// about the test's changes only: a first check finds the include root
/// itself new, and `do-local` actions run for it.
fn baseline(c: &Cluster, runs: &Runs) {
    for n in &c.nodes {
        c.check(&n.name);
    }
    runs.clear();
}

fn sorted(mut v: Vec<PathBuf>) -> Vec<PathBuf> {
    v.sort();
    v
}

#[test]
fn actions_run_once_per_sync_with_every_path_from_every_peer() {
    let runs = Runs::new();
    let mut c = Cluster::with(Setup::nodes(3).extra(&runs.action("deploy", "pattern %tree%/site;")));
    write(&c.path("b", "site/1"), b"one");
    write(&c.path("b", "site/2"), b"two");
    write(&c.path("c", "site/3"), b"three");
    write(&c.path("c", "other"), b"not matched");
    c.check("b");
    c.check("c");
    c.start_all();
    c.sync_ok("a");
    c.assert_all_same();
    // a took three matching files (and their directory) from two peers,
    // over two rounds: one run, every path in it; the file the pattern does
    // not match is not there.
    let on_a = runs.of("deploy", &c.tree("a"));
    let want: Vec<PathBuf> = ["site", "site/1", "site/2", "site/3"].iter().map(|p| c.path("a", p)).collect();
    assert_eq!(on_a.into_iter().map(sorted).collect::<Vec<_>>(), vec![want], "runs on a");
    // The peers ran it for what they took from a, never for their own files.
    let on_b = runs.wait_for("deploy", &c.tree("b"));
    assert!(on_b.iter().flatten().all(|p| *p == c.path("b", "site/3")), "runs on b: {on_b:?}");
    let on_c = runs.wait_for("deploy", &c.tree("c"));
    let from_b = [c.path("c", "site/1"), c.path("c", "site/2")];
    assert!(on_c.iter().flatten().all(|p| from_b.contains(p)), "runs on c: {on_c:?}");
}

#[test]
fn a_receiver_runs_the_actions_of_each_run_of_a_session_kept_between_runs() {
    let runs = Runs::new();
    let mut c = Cluster::with(Setup::nodes(2).extra(&runs.action("deploy", "pattern %tree%/site;")));
    baseline(&c, &runs);
    c.start_all();
    // a's daemon keeps its session with b for its next run (for 20 s);
    // b runs each run's actions when that run ends, well before.
    let run_ends = Duration::from_secs(10);
    write(&c.path("a", "site/1"), b"one");
    c.sync_ok("a");
    let first = runs.wait_within("deploy", &c.tree("b"), run_ends);
    assert_eq!(
        first.into_iter().map(sorted).collect::<Vec<_>>(),
        vec![vec![c.path("b", "site"), c.path("b", "site/1")]]
    );
    runs.clear();
    write(&c.path("a", "site/2"), b"two");
    c.sync_ok("a");
    let second = runs.wait_within("deploy", &c.tree("b"), run_ends);
    assert_eq!(second, vec![vec![c.path("b", "site/2")]], "the second run's action has its own paths only");
}

#[test]
fn do_local_actions_run_where_the_change_was_made() {
    let runs = Runs::new();
    let extra = runs.action("local", "do-local;");
    let mut c = Cluster::with(Setup::nodes(2).extra(&extra));
    baseline(&c, &runs);
    c.start_all();
    write(&c.path("a", "conf/x"), b"x");
    c.sync_ok("a");
    // a found the change: a runs it (its check found conf and conf/x).
    let on_a = runs.of("local", &c.tree("a"));
    assert_eq!(on_a.len(), 1, "runs on a: {on_a:?}");
    assert_eq!(sorted(on_a[0].clone()), [c.path("a", "conf"), c.path("a", "conf/x")]);
    // b received it and runs it too (do-local adds the origin, it does
    // not take the receivers away).
    let on_b = runs.wait_for("local", &c.tree("b"));
    assert_eq!(on_b.into_iter().map(sorted).collect::<Vec<_>>(), [[c.path("b", "conf"), c.path("b", "conf/x")]]);
    // A change recorded by `check` runs it there, once.
    write(&c.path("b", "conf/y"), b"y");
    c.check("b");
    c.sync_ok("b");
    let on_b = runs.of("local", &c.tree("b"));
    assert_eq!(on_b.len(), 2, "runs on b: {on_b:?}");
    assert!(on_b.iter().any(|r| *r == [c.path("b", "conf/y")]), "runs on b: {on_b:?}");
}

#[test]
fn do_local_only_actions_never_run_for_received_changes() {
    let runs = Runs::new();
    // `after` follows in the same group and runs for every change: once it
    // has run on b, b's actions for that session have all had their turn.
    let extra = format!("{}\n{}", runs.action("only", "do-local-only;"), runs.action("after", ""));
    let mut c = Cluster::with(Setup::nodes(2).extra(&extra));
    baseline(&c, &runs);
    c.start_all();
    write(&c.path("a", "f"), b"f");
    c.sync_ok("a");
    assert_eq!(runs.of("only", &c.tree("a")), [[c.path("a", "f")]]);
    assert!(runs.of("after", &c.tree("a")).is_empty(), "a received nothing");
    assert_eq!(runs.wait_for("after", &c.tree("b")), [[c.path("b", "f")]]);
    assert!(runs.of("only", &c.tree("b")).is_empty(), "do-local-only ran on the receiver");
}

#[test]
fn action_output_goes_to_its_logfile() {
    let runs = Runs::new();
    let log = runs.dir.path().join("action.log");
    let extra = format!("action {{ exec \"echo ran %%; echo complaint >&2\"; logfile {}; }}", log.display());
    let mut c = Cluster::with(Setup::nodes(2).extra(&extra));
    c.start_all();
    write(&c.path("a", "f"), b"f");
    c.sync_ok("a");
    let want = format!("ran {}\ncomplaint\n", c.path("b", "f").display());
    let start = Instant::now();
    while std::fs::read_to_string(&log).unwrap_or_default() != want {
        assert!(start.elapsed() < ACTION_TIMEOUT, "logfile holds {:?}", std::fs::read_to_string(&log));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn hostile_names_reach_an_action_as_one_argument_and_run_nothing() {
    let runs = Runs::new();
    let work = runs.dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    // The command runs in `work`, where whatever a name made the shell run
    // would leave its files.
    let extra = format!(
        "action {{ exec \"cd {} && printf '%s\\0' %% > $(mktemp {}/names.XXXXXX)\"; }}",
        work.display(),
        runs.dir.path().display()
    );
    let mut c = Cluster::with(Setup::nodes(2).extra(&extra));
    c.start_all();
    let names: [&[u8]; 5] = [
        b"q'uote; touch pwned1; '",
        b"$(touch pwned2)",
        b"`touch pwned3`",
        b"new\nline; touch pwned4",
        b"\"dq $(touch pwned5)\" * ?",
    ];
    for n in names {
        write(&c.tree("a").join(std::ffi::OsStr::from_bytes(n)), b"x");
    }
    c.sync_ok("a");
    let got = runs.wait_for("names", &c.tree("b"));
    let want: Vec<PathBuf> = names.iter().map(|n| c.tree("b").join(std::ffi::OsStr::from_bytes(n))).collect();
    assert_eq!(got.into_iter().map(sorted).collect::<Vec<_>>(), [sorted(want)]);
    let left: Vec<_> = std::fs::read_dir(&work).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "a name ran commands: {left:?}");
}
