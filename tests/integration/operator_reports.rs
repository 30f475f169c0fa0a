//! SPEC §3: what commands print tells the truth, on both sides, names
//! paths an operator can paste back into a command, and fails with the
//! right exit status; `--json` always leaves one document on stdout.

use serde_json::Value;

use crate::cluster::{Cluster, Setup};
use crate::common::write;

/// A pull onto the host that runs `sync` is reported as changes applied
/// there, with the local paths; never as "in sync".
#[test]
fn a_pull_is_reported_with_local_paths_and_a_closing_line() {
    let mut c = Cluster::new(2);
    c.start_all();
    c.sync_ok("a");
    write(&c.path("a", "docs/new.txt"), b"new");
    c.check("a");
    let out = c.run("b", &["sync"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let local = c.path("b", "docs/new.txt").display().to_string();
    assert!(out.stdout.contains("g with a: 2 changes applied here, 0 there"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("create   {local}")), "the local path is listed:\n{}", out.stdout);
    assert!(!out.stdout.contains("in sync"), "{}", out.stdout);
    let last = out.stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("sync: 1 exchange, 2 changes applied here, 0 there"), "closing line: {last:?}");
    // Nothing left: the next run says so, in the singular where it is one.
    let out = c.run("b", &["sync"]);
    assert!(out.stdout.contains("g with a: in sync"), "{}", out.stdout);
}

/// A conflict is counted as a conflict, not as changes applied; the path
/// `conflicts` prints is one `force` takes.
#[test]
fn conflicts_are_counted_apart_and_their_paths_paste_into_force() {
    let mut c = Cluster::new(2);
    c.start_all();
    write(&c.path("a", "f"), b"one");
    c.sync_ok("a");
    write(&c.path("a", "f"), b"edited on a");
    write(&c.path("b", "f"), b"edited on b, differently");
    let out = c.run("a", &["sync"]);
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("g with b: 0 changes applied here, 0 there, 1 conflict"), "{}", out.stdout);
    assert!(out.stdout.contains("1 conflict: nothing was overwritten"), "{}", out.stdout);

    let listed = c.run("b", &["conflicts"]);
    assert_eq!(listed.code, 3, "{}", listed.stdout);
    let path = listed.stdout.lines().next().unwrap().split("  (").next().unwrap().to_owned();
    assert_eq!(path, c.path("b", "f").display().to_string(), "{}", listed.stdout);
    assert!(listed.stdout.contains("1 conflict; settle each with"), "{}", listed.stdout);
    let forced = c.run("b", &["force", &path]);
    assert_eq!(forced.code, 0, "{}{}", forced.stdout, forced.stderr);
    c.sync_ok("b");
    assert_eq!(std::fs::read(c.path("a", "f")).unwrap(), b"edited on b, differently");

    // JSON sides are fields, not preformatted text.
    write(&c.path("a", "f"), b"again on a");
    write(&c.path("b", "f"), b"again on b");
    let (code, _) = c.sync("a", &[]);
    assert_eq!(code, 3);
    let (_, v) = c.json("a", &["conflicts"]);
    let first = &v["conflicts"][0];
    assert_eq!(first["local"]["state"], "file", "{v:#}");
    assert_eq!(first["remote"]["size"], 10, "{v:#}");
    assert_eq!(first["local_path"], c.path("a", "f").display().to_string(), "{v:#}");
}

/// Failures reach stdout as JSON with `--json`, with the exit status.
#[test]
fn json_errors_are_a_document_on_stdout() {
    let mut c = Cluster::with(Setup::nodes(2).backups(3));
    c.start_all();
    for args in [&["--json", "restore", "--generation", "999"][..], &["--json", "mark", "/nonexistent/path"]] {
        let out = c.run("a", args);
        assert_eq!(out.code, 2, "{args:?}: {}{}", out.stdout, out.stderr);
        let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", out.stdout));
        assert_eq!(v["exit_code"], 2, "{v:#}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v:#}");
    }
    // The same without the daemon.
    c.stop("a");
    let out = c.run("a", &["--json", "restore", "--generation", "999"]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("there is no generation 999"), "{v:#}");
}

/// Invalid arguments are usage errors (exit 2), never a silent success.
#[test]
fn invalid_arguments_exit_2() {
    let mut c = Cluster::with(Setup::nodes(2).extra("exclude %tree%/skip;"));
    c.start_all();
    write(&c.path("a", "skip/x"), b"excluded");
    let missing = c.path("a", "no-such-file").display().to_string();
    let excluded = c.path("a", "skip/x").display().to_string();
    for args in [
        vec!["mark", missing.as_str()],
        vec!["check", missing.as_str()],
        vec!["mark", excluded.as_str()],
        vec!["trust", "--peer", "zz"],
    ] {
        let out = c.run("a", &args);
        assert_eq!(out.code, 2, "{args:?}: {}{}", out.stdout, out.stderr);
    }
    let key = c.key_path().display().to_string();
    let out = c.run("a", &["keygen", &key]);
    assert_eq!(out.code, 2, "keygen over an existing key: {}", out.stderr);
    // A tracked path that is gone is fine: its deletion is recorded.
    write(&c.path("a", "gone"), b"x");
    c.check("a");
    std::fs::remove_file(c.path("a", "gone")).unwrap();
    let gone = c.path("a", "gone").display().to_string();
    let out = c.run("a", &["mark", &gone]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}

/// The daemon's log lines carry timestamps, and it says when it starts,
/// what each sync run did, and what each pull by a peer did.
#[test]
fn daemon_log_lines_carry_timestamps() {
    let mut c = Cluster::new(2);
    c.start_all();
    write(&c.path("a", "f"), b"x");
    c.sync_ok("a");
    let log = c.log("a");
    assert!(log.contains("sync run: exchanges 1, failed 0, conflicts 0"), "{log}");
    assert!(c.log("b").contains("pull by a of group g: changes 1, conflicts 0, not applied 0"), "{}", c.log("b"));
    let started = log.lines().find(|l| l.contains("started: a serving g")).unwrap_or_else(|| panic!("{log}"));
    let stamp = started.split_whitespace().next().unwrap();
    assert!(
        stamp.len() >= 20 && stamp.as_bytes()[4] == b'-' && stamp.contains('T'),
        "an RFC 3339 timestamp first: {started}"
    );
}
