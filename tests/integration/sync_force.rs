//! SPEC §3 `force` and §4.17: a force makes the local version of a path,
//! as it is when force is run, win its conflict (or its next reconcile)
//! with each peer, is used up once that version has reached them, and
//! never decides a later conflict; a receive-only host keeps the agreed
//! version while two hosts conflict.

use serde_json::Value;

use crate::cluster::{Cluster, Setup, any_conflict, write_at};

/// A cluster with `f`, `d/g` and `d/h` synced everywhere.
fn synced(setup: Setup) -> Cluster {
    let mut c = Cluster::with(setup);
    c.start_all();
    write_at(&c.path("a", "f"), b"original", 1_600_000_000);
    write_at(&c.path("a", "d/g"), b"g original", 1_600_000_000);
    write_at(&c.path("a", "d/h"), b"h original", 1_600_000_000);
    c.sync_ok("a");
    c.assert_all_same();
    c
}

fn read(c: &Cluster, node: &str, rel: &str) -> Vec<u8> {
    std::fs::read(c.path(node, rel)).unwrap()
}

fn arg(c: &Cluster, node: &str, rel: &str) -> String {
    c.path(node, rel).to_str().unwrap().to_owned()
}

/// `force --list --json` of `node`: the logical paths pending.
fn pending(c: &Cluster, node: &str) -> Vec<String> {
    let (code, v) = c.json(node, &["force", "--list"]);
    assert_eq!(code, 0, "force --list on {node}: {v:#}");
    let mut paths: Vec<String> =
        v["forces"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap().to_owned()).collect();
    paths.sort();
    paths
}

/// How many generations `node` recorded.
fn generations(c: &Cluster, node: &str) -> usize {
    let (code, v) = c.json(node, &["generations"]);
    assert_eq!(code, 0, "{v:#}");
    v["generations"].as_array().map_or(0, Vec::len)
}

/// Issue 8 item 4: a force made with no conflict is used up once its
/// version reached the peers; when both hosts later edit the file, that
/// is a conflict, and neither edit is replaced.
#[test]
fn force_is_used_up_and_never_decides_a_later_conflict() {
    let c = synced(Setup::nodes(3));
    let out = c.run("a", &["force", &arg(&c, "a", "f")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(pending(&c, "a"), vec!["%tree%/f"]);
    // A full round: every peer is seen holding A's version.
    for n in ["a", "b", "c"] {
        c.sync_ok(n);
    }
    assert_eq!(pending(&c, "a"), Vec::<String>::new(), "the force was not used up");

    write_at(&c.path("a", "f"), b"later edit on a", 1_650_000_000);
    write_at(&c.path("b", "f"), b"later edit on b", 1_650_000_001);
    for n in ["b", "a"] {
        let (code, v) = c.sync(n, &[]);
        assert_eq!(code, 3, "sync on {n} did not report the conflict: {v:#}");
        assert!(any_conflict(&v), "{v:#}");
        assert_eq!(read(&c, "a", "f"), b"later edit on a");
        assert_eq!(read(&c, "b", "f"), b"later edit on b", "b's edit was replaced by the old force");
    }
}

/// A force whose local file changes again before it wins is dropped: the
/// new edit is a new conflict, not a forced one.
#[test]
fn force_is_dropped_when_the_local_file_changes_again() {
    let c = synced(Setup::nodes(2));
    write_at(&c.path("a", "f"), b"edit on a", 1_650_000_000);
    write_at(&c.path("b", "f"), b"edit on b", 1_650_000_001);
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 3, "{v:#}");
    let out = c.run("b", &["force", &arg(&c, "b", "f")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    write_at(&c.path("b", "f"), b"second edit on b", 1_650_000_002);
    c.check("b");
    assert_eq!(pending(&c, "b"), Vec::<String>::new());
    let (code, v) = c.sync("b", &[]);
    assert_eq!(code, 3, "{v:#}");
    assert_eq!(read(&c, "a", "f"), b"edit on a");
    assert_eq!(read(&c, "b", "f"), b"second edit on b");
}

/// SPEC §3: a PATH that is neither present nor tracked is a usage error
/// (exit 2) and records nothing; so is cancelling a force that is not
/// there.
#[test]
fn force_on_a_missing_path_exits_2() {
    let c = synced(Setup::nodes(2));
    for path in [arg(&c, "a", "no-such-file"), arg(&c, "a", "d/no-such-file")] {
        let out = c.run("a", &["force", &path]);
        assert_eq!(out.code, 2, "force {path}: {}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains("neither present nor tracked"), "{}", out.stderr);
    }
    let outside = c.root().join("outside");
    let out = c.run("a", &["force", outside.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let out = c.run("a", &["force", "--cancel", &arg(&c, "a", "f")]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(pending(&c, "a"), Vec::<String>::new());
}

/// `force -r DIR` covers the entries under DIR: their conflicts are all
/// settled by one force, and the forces are used up after.
#[test]
fn force_recursive_settles_conflicts_under_a_directory() {
    let c = synced(Setup::nodes(3));
    for (node, t) in [("a", 1_650_000_000), ("b", 1_650_000_001)] {
        write_at(&c.path(node, "d/g"), format!("g edited on {node}").as_bytes(), t);
        write_at(&c.path(node, "d/h"), format!("h edited on {node}").as_bytes(), t);
    }
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 3, "{v:#}");
    assert_eq!(c.conflicts("b").len(), 2);

    let out = c.run("b", &["force", "-r", &arg(&c, "b", "d")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(pending(&c, "b"), vec!["%tree%/d", "%tree%/d/g", "%tree%/d/h"]);
    let (code, v) = c.sync("b", &[]);
    assert_eq!(code, 0, "{v:#}");
    c.assert_all_same();
    assert_eq!(read(&c, "a", "d/g"), b"g edited on b");
    assert_eq!(read(&c, "c", "d/h"), b"h edited on b");
    for n in ["a", "b", "c"] {
        assert!(c.conflicts(n).is_empty(), "{n} still lists a conflict");
    }
    // One more round and the forces are used up.
    c.sync_ok("b");
    assert_eq!(pending(&c, "b"), Vec::<String>::new());
}

/// `force --list` and `status` show a pending force; `force --cancel`
/// drops it, and the conflict then stays a conflict.
#[test]
fn force_list_and_cancel() {
    let c = synced(Setup::nodes(2));
    write_at(&c.path("a", "f"), b"edit on a", 1_650_000_000);
    write_at(&c.path("b", "f"), b"edit on b", 1_650_000_001);
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 3, "{v:#}");

    let out = c.run("b", &["force", &arg(&c, "b", "f")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (code, v) = c.json("b", &["force", "--list"]);
    assert_eq!(code, 0);
    let forces = v["forces"].as_array().unwrap();
    assert_eq!(forces.len(), 1, "{v:#}");
    assert_eq!(forces[0]["path"], "%tree%/f");
    assert_eq!(forces[0]["reached"], Value::Array(vec![]));
    let out = c.run("b", &["force", "--list"]);
    assert!(out.stdout.contains(&arg(&c, "b", "f")), "{}", out.stdout);
    let (code, v) = c.json("b", &["status"]);
    assert_eq!(code, 3, "{v:#}");
    assert_eq!(v["forces"].as_array().unwrap().len(), 1, "{v:#}");
    assert_eq!(v["forces"][0]["path"], "%tree%/f");
    let out = c.run("b", &["status"]);
    assert!(out.stdout.contains("1 force pending") && out.stdout.contains(&arg(&c, "b", "f")), "{}", out.stdout);

    let (code, v) = c.json("b", &["force", "--cancel", &arg(&c, "b", "f")]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["cancelled"][0]["path"], "%tree%/f");
    assert_eq!(pending(&c, "b"), Vec::<String>::new());
    let (code, v) = c.sync("b", &[]);
    assert_eq!(code, 3, "the cancelled force still settled the conflict: {v:#}");
    assert_eq!(read(&c, "a", "f"), b"edit on a");
    assert_eq!(read(&c, "b", "f"), b"edit on b");
}

/// SPEC §4.17: while A and B conflict on `f`, receive-only C keeps the
/// version the group last agreed on whichever of them syncs, and records
/// no generation for it; once A forces its version and syncs, C takes it.
#[test]
fn receive_only_host_keeps_the_agreed_version_during_a_conflict() {
    let c = synced(Setup::nodes(3).receive_only("c").backups(10));
    write_at(&c.path("a", "f"), b"edit on a", 1_650_000_000);
    write_at(&c.path("b", "f"), b"edit on b", 1_650_000_001);
    // A and B find the conflict.
    let (code, v) = c.sync("a", &["--peer", "b"]);
    assert_eq!(code, 3, "{v:#}");
    let before = generations(&c, "c");
    for n in ["a", "b", "a", "b"] {
        let (code, v) = c.sync(n, &[]);
        assert_eq!(code, 3, "sync on {n}: {v:#}");
        assert_eq!(read(&c, "c", "f"), b"original", "c took a side of the conflict from {n}: {v:#}");
    }
    assert_eq!(generations(&c, "c"), before, "c recorded generations while the conflict lasted");
    assert_eq!(read(&c, "a", "f"), b"edit on a");
    assert_eq!(read(&c, "b", "f"), b"edit on b");

    let out = c.run("a", &["force", &arg(&c, "a", "f")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 0, "{v:#}");
    c.assert_all_same();
    assert_eq!(read(&c, "c", "f"), b"edit on a");
}

/// Issue 8 item 5: with the conflict not yet known when a sync reaches C,
/// C may take the side it meets first, but it never flips to the other:
/// alternating syncs from A and B change nothing on C and record no
/// generation there.
#[test]
fn receive_only_host_does_not_flip_between_the_sides_of_a_conflict() {
    let c = synced(Setup::nodes(3).receive_only("c").backups(10));
    write_at(&c.path("a", "f"), b"edit on a", 1_650_000_000);
    write_at(&c.path("b", "f"), b"edit on b", 1_650_000_001);
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 3, "{v:#}");
    let kept = read(&c, "c", "f");
    assert!(kept == b"original" || kept == b"edit on a", "{kept:?}");
    let before = generations(&c, "c");
    for n in ["b", "a", "b", "a"] {
        let (code, v) = c.sync(n, &[]);
        assert_eq!(code, 3, "sync on {n}: {v:#}");
        assert_eq!(read(&c, "c", "f"), kept, "c flipped on a sync from {n}: {v:#}");
    }
    assert_eq!(generations(&c, "c"), before, "c recorded generations while the conflict lasted");
}
