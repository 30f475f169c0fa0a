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
