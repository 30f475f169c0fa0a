//! SPEC §4.15: two `sync` runs started at once do not corrupt anything or
//! deliver a change twice.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::cluster::{Cluster, any_conflict};
use crate::common::{bytes, wait_for_file, write};

/// Audit lines (host, path) in a daemon log from byte `from` on.
fn audits(log: &str, from: usize) -> Vec<(String, String)> {
    log[from..]
        .lines()
        .filter_map(|l| {
            let l = &l[l.find("audit host=")?..];
            let host = l.split_whitespace().next()?.strip_prefix("host=")?.to_owned();
            let path = l[l.find(" path=")? + 6..].to_owned();
            Some((host, path))
        })
        .collect()
}

#[test]
fn sync_two_runs_at_once_on_two_hosts() {
    let mut c = Cluster::new(3);
    c.start_all();
    for i in 0..20 {
        write(&c.path("a", &format!("shared/{i}")), format!("v0 {i}").as_bytes());
    }
    c.sync_ok("a");
    c.assert_all_same();
    for i in 0..10 {
        write(&c.path("a", &format!("shared/{i}")), format!("v1 from a {i}").as_bytes());
        write(&c.path("a", &format!("from-a/{i}")), &crate::common::bytes(i, 70_000));
    }
    for i in 10..20 {
        write(&c.path("b", &format!("shared/{i}")), format!("v1 from b {i}").as_bytes());
        write(&c.path("b", &format!("from-b/{i}")), &crate::common::bytes(100 + i, 70_000));
    }
    let marks: HashMap<&str, usize> = ["a", "b", "c"].iter().map(|n| (*n, c.log(n).len())).collect();
    let ra = c.spawn("a", "sync-a", &["--json", "sync"]);
    let rb = c.spawn("b", "sync-b", &["--json", "sync"]);
    let (oa, ob) = (ra.wait(Duration::from_secs(90)), rb.wait(Duration::from_secs(90)));
    for (n, o) in [("a", &oa), ("b", &ob)] {
        let v = o.json();
        assert!(!any_conflict(&v), "{n}: {v:#}");
        assert_eq!(o.code, 0, "sync on {n} exited {}: {}\n{}", o.code, o.stderr, o.stdout);
    }
    // Both runs together brought everything everywhere, each file once.
    c.assert_all_same();
    for n in ["a", "b", "c"] {
        let mut seen: HashMap<(String, String), usize> = HashMap::new();
        for k in audits(&c.log(n), marks[n]) {
            *seen.entry(k).or_default() += 1;
        }
        let twice: Vec<_> = seen.iter().filter(|(_, k)| **k > 1).collect();
        assert!(twice.is_empty(), "{n} applied changes twice: {twice:?}");
    }
    assert_eq!(std::fs::read(c.path("c", "shared/3")).unwrap(), b"v1 from a 3");
    assert_eq!(std::fs::read(c.path("c", "shared/13")).unwrap(), b"v1 from b 13");
    // A following sync from each host finds every pair in sync.
    for n in ["a", "b", "c"] {
        let v = c.sync_ok(n);
        for p in v["peers"].as_array().unwrap() {
            assert_eq!(p["in_sync"], true, "{n}: {v:#}");
        }
        assert!(c.conflicts(n).is_empty(), "{n}");
    }
    for n in ["a", "b", "c"] {
        let out = c.run(n, &["verify"]);
        assert_eq!(out.code, 0, "verify on {n}: {}{}", out.stdout, out.stderr);
    }
}

/// One run's sessions with two peers race on one path (issue 8, the
/// soak's "changed while syncing"): a holds version 0 of a file, c holds
/// version 1 (an edit of it) and b version 2 (an edit of version 1). a's
/// `sync` plans to take both; c's lands first. b's version has seen c's,
/// so it still goes in over it, in the same pass: the run exits 0 and a
/// ends at version 2.
/// Both peers' daemons pause serving chunks (the test hook) so the order
/// is forced, not raced.
#[test]
fn a_version_that_has_seen_one_taken_meanwhile_from_another_peer_is_still_taken() {
    const MIB: usize = 1 << 20;
    let mut c = Cluster::new(3);
    c.start_all();
    let v0 = bytes(1, MIB);
    write(&c.path("a", "hot.bin"), &v0);
    c.sync_ok("a");
    let v1 = bytes(2, MIB);
    write(&c.path("c", "hot.bin"), &v1);
    c.sync_ok_with("c", &["--peer", "b"]);
    let v2 = bytes(3, MIB);
    write(&c.path("b", "hot.bin"), &v2);
    c.check("b");
    assert_eq!(std::fs::read(c.path("a", "hot.bin")).unwrap(), v0);

    let hooks: HashMap<&str, PathBuf> = ["b", "c"].iter().map(|n| (*n, c.root().join(format!("hook-{n}")))).collect();
    for n in ["b", "c"] {
        std::fs::create_dir_all(&hooks[n]).unwrap();
        c.stop(n);
        c.start_with_env(n, &[], &[(snapsync::peer::PAUSE_ENV, hooks[n].to_str().unwrap())]);
    }
    let run = c.spawn("a", "sync", &["--json", "sync"]);
    // Both sessions have planned on version 0 and are fetching.
    for n in ["b", "c"] {
        wait_for_file(&hooks[n].join("paused"), Duration::from_secs(60));
    }
    // c's version is placed first; b's fetch finishes after it.
    std::fs::write(hooks["c"].join("resume"), b"").unwrap();
    let started = std::time::Instant::now();
    while std::fs::read(c.path("a", "hot.bin")).unwrap() != v1 {
        assert!(started.elapsed() < Duration::from_secs(60), "c's version never reached a");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::write(hooks["b"].join("resume"), b"").unwrap();
    let out = run.wait(Duration::from_secs(120));
    assert_eq!(out.code, 0, "sync on a: {}\n{}", out.stdout, out.stderr);
    assert_eq!(std::fs::read(c.path("a", "hot.bin")).unwrap(), v2);
    // Taken in the pass that planned it: no refusal, no second walk (a
    // path several sessions keep moving could use up every pass).
    let log = c.log("a");
    assert!(!log.contains("changed while syncing"), "a refused a plan that still held:\n{log}");
    c.sync_ok("a");
    c.assert_all_same();
    for n in ["a", "b", "c"] {
        c.assert_status_clean(n);
        assert!(c.conflicts(n).is_empty(), "{n}");
    }
}

/// One run's sessions settle the same conflict with two peers (issue 8,
/// the soak's "changed while syncing" when every host syncs at once): a
/// forced its version of a file all three hosts edited; its sync settles
/// the conflict with b, then with c, each under its own new version of
/// the same state. The second settlement merges the first's version
/// instead of being refused and walked again. c's session also fetches a
/// new file, paused by the test hook until b's settlement is done, so the
/// order is forced.
#[test]
fn one_conflict_settled_with_two_peers_in_one_run_is_settled_in_one_pass() {
    let mut c = Cluster::new(3);
    c.start_all();
    write(&c.path("a", "p.txt"), b"v0");
    c.sync_ok("a");
    for n in ["a", "b", "c"] {
        write(&c.path(n, "p.txt"), format!("edited on {n}").as_bytes());
        c.check(n);
    }
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 3, "the edits conflict: {v:#}");
    let out = c.run("a", &["force", c.path("a", "p.txt").to_str().unwrap()]);
    assert_eq!(out.code, 0, "force: {}", out.stderr);
    let q = bytes(4, 1 << 20);
    write(&c.path("c", "q.bin"), &q);
    c.check("c");

    let hook = c.root().join("hook-c");
    std::fs::create_dir_all(&hook).unwrap();
    c.stop("c");
    c.start_with_env("c", &[], &[(snapsync::peer::PAUSE_ENV, hook.to_str().unwrap())]);
    let run = c.spawn("a", "sync", &["--json", "sync"]);
    wait_for_file(&hook.join("paused"), Duration::from_secs(60));
    // b takes a's version once a's session with b has settled.
    let started = std::time::Instant::now();
    while std::fs::read(c.path("b", "p.txt")).unwrap() != b"edited on a" {
        assert!(started.elapsed() < Duration::from_secs(60), "a's version never reached b");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::write(hook.join("resume"), b"").unwrap();
    let out = run.wait(Duration::from_secs(120));
    assert_eq!(out.code, 0, "sync on a: {}\n{}", out.stdout, out.stderr);
    let log = c.log("a");
    assert!(!log.contains("changed while syncing"), "a refused a settlement that still held:\n{log}");
    assert_eq!(std::fs::read(c.path("a", "q.bin")).unwrap(), q);
    for n in ["b", "c"] {
        assert_eq!(std::fs::read(c.path(n, "p.txt")).unwrap(), b"edited on a", "{n}");
    }
    c.sync_ok("a");
    c.assert_all_same();
    for n in ["a", "b", "c"] {
        c.assert_status_clean(n);
        assert!(c.conflicts(n).is_empty(), "{n}");
    }
}
