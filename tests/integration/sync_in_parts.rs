//! A reconcile applies what it decides in parts as it walks, so that what
//! it holds stays bounded however many paths change (SPEC §8): deletions
//! and files or links that replace a directory wait for the last part.
//! The trees and the reports come out as one apply would leave them.
//! The daemons here apply every few paths (the flush-size test hook).

use serde_json::Value;

use crate::cluster::{Cluster, Setup, changes, peer_report};
use crate::common::{bytes, write};

/// The test hook that sets how many bytes of plans a walk holds before it
/// applies them: a few plans here.
const SMALL_PARTS: (&str, &str) = ("SNAPSYNC_PLAN_FLUSH_BYTES", "4096");

/// Two nodes whose daemons apply in small parts, recording generations.
fn in_parts() -> Cluster {
    let mut c = Cluster::with(Setup::nodes(2).backups(2));
    for n in ["a", "b"] {
        c.start_with_env(n, &[], &[SMALL_PARTS]);
    }
    c
}

/// How many generations node `n` recorded: the newest one's number (each
/// apply records one; retention drops those no path needs).
fn generations_recorded(c: &Cluster, n: &str) -> u64 {
    let (code, gens) = c.json(n, &["generations"]);
    assert_eq!(code, 0, "{gens:#}");
    gens["generations"].as_array().unwrap().iter().filter_map(|g| g["id"].as_u64()).max().unwrap_or(0)
}

/// The changes `peer` reported applying for a sync document, by action.
fn pushed(v: &Value, peer: &str) -> Vec<(String, String)> {
    changes(&peer_report(v, peer)["pushed"])
}

fn count(list: &[(String, String)], action: &str) -> usize {
    list.iter().filter(|(a, _)| a == action).count()
}

#[test]
fn a_walk_applied_in_parts_leaves_the_trees_and_reports_of_one_apply() {
    let c = in_parts();
    // Five directories of eight files, links and a nested directory each.
    for d in 0..5 {
        for f in 0..8 {
            write(&c.path("a", &format!("d{d}/f{f}")), &bytes(d * 100 + f, 3000 + f as usize * 100));
        }
        write(&c.path("a", &format!("d{d}/sub/deep/leaf")), format!("leaf {d}").as_bytes());
        std::os::unix::fs::symlink(format!("f{d}"), c.path("a", &format!("d{d}/link"))).unwrap();
    }
    let v = c.sync_ok("a");
    c.assert_same("a", "b");
    let first = pushed(&v, "b");
    // 5 × (the directory, 8 files, sub, deep, leaf, link).
    assert_eq!(count(&first, "create"), 5 * 13, "{v:#}");
    let parts = generations_recorded(&c, "b");
    assert!(parts >= 5, "b applied the first sync in parts: {parts} generations");

    // A second sync that deletes a directory with everything below it,
    // replaces a directory by a file and one by a link, renames a
    // directory (the moved files take their chunks from the old copies
    // here, not from the peer) and adds files.
    std::fs::remove_dir_all(c.path("a", "d0")).unwrap();
    std::fs::remove_dir_all(c.path("a", "d1")).unwrap();
    write(&c.path("a", "d1"), b"d1 is a file now");
    std::fs::remove_dir_all(c.path("a", "d2")).unwrap();
    std::os::unix::fs::symlink("d3", c.path("a", "d2")).unwrap();
    std::fs::rename(c.path("a", "d4"), c.path("a", "moved")).unwrap();
    for f in 0..6 {
        write(&c.path("a", &format!("new/n{f}")), &bytes(900 + f, 2000));
    }
    let v = c.sync_ok("a");
    c.assert_same("a", "b");
    let second = pushed(&v, "b");
    // Deleted: d0 (12 entries and itself), d1 and d2's contents (12
    // each), d4 (12 and itself). d1 and d2 themselves are updated (a
    // directory replaced), `moved` and `new` are created with what they
    // hold.
    assert_eq!(count(&second, "delete"), 13 + 12 + 12 + 13, "{v:#}");
    assert_eq!(count(&second, "update"), 2, "{v:#}");
    assert_eq!(count(&second, "create"), 13 + 7, "{v:#}");
    let b = &peer_report(&v, "b");
    assert_eq!(b["pushed_problems_total"], 0, "{v:#}");
    // Nothing is left to do either way.
    let v = c.sync_ok("b");
    assert!(v["peers"].as_array().unwrap().iter().all(|p| p["in_sync"] == true), "{v:#}");
    assert!(generations_recorded(&c, "b") > parts + 1, "the second sync was applied in parts too");
}

#[test]
fn a_pull_of_more_changes_than_are_listed_counts_the_rest() {
    let mut c = Cluster::new(2);
    c.start_all();
    let listed = 4096;
    let files = listed + 37;
    for f in 0..files {
        write(&c.path("a", &format!("many/f{f:05}")), format!("{f}").as_bytes());
    }
    c.check("a");
    // b pulls: its own report lists the first changes and counts the rest.
    let v = c.sync_ok("b");
    c.assert_same("a", "b");
    let pulled = &peer_report(&v, "a")["pulled"];
    let list = changes(&pulled["changes"]);
    assert_eq!(list.len(), listed, "{}", pulled["more_changes"]);
    assert_eq!(pulled["more_changes"].as_u64(), Some((files + 1 - listed) as u64), "the directory and its files");
    // The text says how many more there are.
    write(&c.path("a", "many/f00000"), b"changed");
    for f in 0..files {
        write(&c.path("a", &format!("many/g{f:05}")), b"g");
    }
    c.check("a");
    let out = c.run("b", &["sync"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let taken = files + 1;
    assert!(out.stdout.contains(&format!("{taken} changes applied here, 0 there")), "{}", out.stdout);
    let rest = format!("... and {} more (the log's audit lines list them all)", taken - 50);
    assert!(out.stdout.contains(&rest), "{}", out.stdout);
    c.assert_same("a", "b");
}
