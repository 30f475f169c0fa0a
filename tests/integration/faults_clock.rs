//! Issue 12, item 2: clock skew between hosts. snapsync orders changes by
//! version vectors, never by clocks; only the `auto younger` and `auto
//! older` policies read time, and they compare the files' mtimes (SPEC
//! §4.5, docs/guide.md), which a host with a fast or slow clock writes
//! ahead of or behind the others'. A skewed host is simulated by the mtimes
//! its edits carry: its clock is what the filesystem stamps on its files.
//!
//! What must hold: both hosts settle a conflict on the same winner, the one
//! with the newer (`younger`) or older (`older`) mtime, whichever edit was
//! made first in real time and whichever host runs the sync; nothing is
//! left to do afterwards; and an mtime in the future (from a host whose
//! clock is ahead) neither makes a file look changed on every scan nor
//! stops a later edit with an earlier mtime from travelling.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::cluster::{Cluster, Setup, any_conflict, changes, peer_report, write_at};

/// An hour: the skew of the fast or slow host.
const HOUR: i64 = 3600;

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The changes a sync document lists in either direction with `peer`.
fn all_changes(v: &serde_json::Value, peer: &str) -> Vec<(String, String)> {
    let p = peer_report(v, peer);
    let mut out = changes(&p["pulled"]["changes"]);
    out.extend(changes(&p["pushed"]));
    out
}

/// Two hosts with `f` synced; a's clock is `skew` seconds off. a edits `f`
/// first, b a few seconds later in real time; `runner` syncs. Returns the
/// content both hosts end with.
fn settle_with_skew(policy: &str, skew: i64, runner: &str) -> String {
    let mut c = Cluster::with(Setup::nodes(2).extra(&format!("auto {policy};")));
    c.start_all();
    settle(&c, policy, skew, runner)
}

/// [`settle_with_skew`] on a running cluster.
fn settle(c: &Cluster, policy: &str, skew: i64, runner: &str) -> String {
    let t = now();
    write_at(&c.path("a", "f"), b"original", t - 600);
    c.sync_ok("a");
    write_at(&c.path("a", "f"), b"edited first, on a", t + skew);
    c.check("a");
    write_at(&c.path("b", "f"), b"edited later, on b", t + 5);
    c.check("b");
    let (code, v) = c.sync(runner, &[]);
    assert_eq!(code, 0, "auto {policy} settles the conflict: {v:#}");
    assert!(!any_conflict(&v), "{v:#}");
    c.assert_same("a", "b");
    for n in ["a", "b"] {
        assert!(c.conflicts(n).is_empty(), "{n} still lists a conflict");
        c.assert_status_clean(n);
    }
    // Settled for good: the other host's sync finds nothing to do.
    let other = if runner == "a" { "b" } else { "a" };
    let peer = if other == "a" { "b" } else { "a" };
    let v = c.sync_ok(other);
    assert_eq!(all_changes(&v, peer), Vec::<(String, String)>::new(), "{v:#}");
    let got = String::from_utf8(std::fs::read(c.path("a", "f")).unwrap()).unwrap();
    eprintln!("auto {policy}, a's clock {skew:+} s, sync on {runner}: both hold {got:?}");
    got
}

const A: &str = "edited first, on a";
const B: &str = "edited later, on b";

/// A host whose clock is an hour ahead wins `younger` with the edit it
/// made first, and one an hour behind loses with it: the mtimes decide,
/// not the order the edits were made in, whichever host runs the sync.
#[test]
fn auto_younger_follows_the_mtimes_a_skewed_clock_wrote() {
    assert_eq!(settle_with_skew("younger", HOUR, "b"), A);
    assert_eq!(settle_with_skew("younger", HOUR, "a"), A);
    assert_eq!(settle_with_skew("younger", -HOUR, "b"), B);
    assert_eq!(settle_with_skew("younger", -HOUR, "a"), B);
}

/// The same for `older`, mirrored.
#[test]
fn auto_older_follows_the_mtimes_a_skewed_clock_wrote() {
    assert_eq!(settle_with_skew("older", -HOUR, "b"), A);
    assert_eq!(settle_with_skew("older", -HOUR, "a"), A);
    assert_eq!(settle_with_skew("older", HOUR, "b"), B);
    assert_eq!(settle_with_skew("older", HOUR, "a"), B);
}

/// A file from a host whose clock is an hour ahead carries an mtime in the
/// future everywhere. It settles (status clean, a second sync does
/// nothing); b's later edit, whose mtime is earlier, is a change that
/// dominates, not a conflict `younger` would settle against it; and b's
/// deletion travels too.
#[test]
fn a_future_mtime_settles_and_later_edits_with_earlier_mtimes_still_travel() {
    let mut c = Cluster::with(Setup::nodes(2).extra("auto younger;"));
    c.start_all();
    let ahead = now() + HOUR;
    write_at(&c.path("a", "f"), b"from the fast host", ahead);
    write_at(&c.path("a", "g"), b"also from the fast host", ahead);
    c.sync_ok("a");
    c.assert_same("a", "b");
    for n in ["a", "b"] {
        c.assert_status_clean(n);
        let peer = if n == "a" { "b" } else { "a" };
        let v = c.sync_ok(n);
        assert_eq!(all_changes(&v, peer), Vec::<(String, String)>::new(), "{n}: {v:#}");
    }

    write_at(&c.path("b", "f"), b"edited on b, whose clock is right", now());
    std::fs::remove_file(c.path("b", "g")).unwrap();
    let v = c.sync_ok("b");
    assert!(!any_conflict(&v), "{v:#}");
    c.assert_same("a", "b");
    assert_eq!(std::fs::read(c.path("a", "f")).unwrap(), b"edited on b, whose clock is right");
    assert!(!c.path("a", "g").exists(), "the deletion did not travel");
    for n in ["a", "b"] {
        assert!(c.conflicts(n).is_empty(), "{n}");
        c.assert_status_clean(n);
    }
}

/// libfaketime, where it is installed: a process started with this in its
/// environment sees the wall clock `offset` away (its monotonic clock,
/// which every timeout uses, is left alone).
fn faked_clock(offset: &str) -> Option<Vec<(&'static str, String)>> {
    let lib = ["/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1", "/usr/lib/faketime/libfaketimeMT.so.1"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(lib) = lib else {
        eprintln!("skipped: libfaketime is not installed (apt-get install faketime)");
        return None;
    };
    Some(vec![
        ("LD_PRELOAD", lib.to_owned()),
        ("FAKETIME", offset.to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
        ("FAKETIME_DONT_RESET", "1".to_owned()),
    ])
}

/// The daemons' own wall clocks two hours apart (a's an hour ahead, b's an
/// hour behind): they still connect (certificates are not checked against
/// dates), sync, and settle a conflict by the files' mtimes alone.
#[test]
fn daemons_whose_clocks_are_hours_apart_sync_and_settle_by_mtime() {
    let (Some(ahead), Some(behind)) = (faked_clock("+1h"), faked_clock("-1h")) else { return };
    for (policy, skew, want) in [("younger", HOUR, A), ("older", HOUR, B)] {
        let mut c = Cluster::with(Setup::nodes(2).extra(&format!("auto {policy};")).backups(3));
        for (n, e) in [("a", &ahead), ("b", &behind)] {
            let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
            c.start_with_env(n, &[], &e);
        }
        assert_eq!(settle(&c, policy, skew, "b"), want);
        // The clocks were skewed indeed: each daemon stamped its newest
        // generation with its own time.
        for (n, off) in [("a", HOUR), ("b", -HOUR)] {
            let (code, v) = c.json(n, &["generations"]);
            assert_eq!(code, 0, "{v:#}");
            let newest = v["generations"].as_array().and_then(|g| g.last()).cloned().unwrap_or_default();
            let stamp = humantime::parse_rfc3339(newest["time"].as_str().unwrap_or_default())
                .unwrap_or_else(|e| panic!("{n}'s newest generation has no time ({e}): {v:#}"));
            let secs = stamp.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
            assert!((secs - (now() + off)).abs() < 600, "{n}'s clock is not {off:+} s off: {newest:#}");
        }
    }
}
