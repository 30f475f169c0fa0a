//! SPEC §4.4 and §4.5: the same change is not a conflict; different ones
//! are, until `force` or an `auto` policy settles them.

use crate::cluster::{Cluster, Setup, any_conflict, peer_report, write_at};

/// A cluster of three with `f` and `d/g` synced everywhere.
fn synced(setup: Setup) -> Cluster {
    let mut c = Cluster::with(setup);
    c.start_all();
    write_at(&c.path("a", "f"), b"original", 1_600_000_000);
    write_at(&c.path("a", "d/g"), b"other", 1_600_000_000);
    c.sync_ok("a");
    c.assert_all_same();
    c
}

fn read(c: &Cluster, node: &str, rel: &str) -> Vec<u8> {
    std::fs::read(c.path(node, rel)).unwrap()
}

/// Paths of a node's `conflicts --json` list.
fn conflict_paths(c: &Cluster, node: &str) -> Vec<String> {
    c.conflicts(node).iter().map(|x| x["path"].as_str().unwrap().to_owned()).collect()
}

/// SPEC §4.4: the same bytes with the same mtime written on A and B: no
/// conflict, trees equal.
#[test]
fn sync_same_change_on_two_hosts_is_no_conflict() {
    let c = synced(Setup::nodes(3));
    write_at(&c.path("a", "f"), b"the same new bytes", 1_650_000_000);
    write_at(&c.path("b", "f"), b"the same new bytes", 1_650_000_000);
    let v = c.sync_ok("a");
    assert!(!any_conflict(&v), "{v:#}");
    c.assert_all_same();
    for n in ["a", "b", "c"] {
        assert!(c.conflicts(n).is_empty(), "{n}");
    }
}

/// SPEC §4.4: the same bytes with different mtimes on A and B: no
/// conflict; every host ends with the same file.
#[test]
fn sync_same_bytes_different_mtimes_is_no_conflict() {
    let c = synced(Setup::nodes(3));
    write_at(&c.path("a", "f"), b"the same new bytes", 1_650_000_000);
    write_at(&c.path("b", "f"), b"the same new bytes", 1_650_000_100);
    let v = c.sync_ok("a");
    assert!(!any_conflict(&v), "{v:#}");
    c.assert_same("a", "b");
    // A pushed to C before it took B's later mtime: C gets it next run.
    let v = c.sync_ok("a");
    assert!(!any_conflict(&v), "{v:#}");
    c.assert_all_same();
    assert_eq!(crate::common::snapshot(&c.tree("c"))[std::path::Path::new("f")].2, Some((1_650_000_100, 0)));
    for n in ["a", "b", "c"] {
        assert!(c.conflicts(n).is_empty(), "{n}");
    }
}

/// SPEC §4.4 then §4.2: after the same change on A and B, a later edit on
/// A reaches B and C with no conflict (A and B agreed on the state the
/// edit was made on).
#[test]
fn sync_edit_after_same_change_on_two_hosts_propagates() {
    let c = synced(Setup::nodes(3));
    write_at(&c.path("a", "f"), b"the same new bytes", 1_650_000_000);
    write_at(&c.path("b", "f"), b"the same new bytes", 1_650_000_000);
    let v = c.sync_ok("a");
    assert!(!any_conflict(&v), "{v:#}");
    c.assert_all_same();
    write_at(&c.path("a", "f"), b"a later edit on a", 1_660_000_000);
    let (code, v) = c.sync("a", &[]);
    assert!(!any_conflict(&v), "a later edit on a conflicts: {v:#}");
    assert_eq!(code, 0, "{v:#}");
    c.assert_all_same();
    assert_eq!(read(&c, "b", "f"), b"a later edit on a");
    for n in ["a", "b", "c"] {
        assert!(c.conflicts(n).is_empty(), "{n}");
    }
}

/// SPEC §4.5: different edits on A and B conflict: exit 3, both hosts list
/// it, neither file changes; `force` on B and a sync from B give everyone
/// B's version and clear the conflict everywhere.
#[test]
fn sync_different_edits_conflict_until_forced() {
    let c = synced(Setup::nodes(3));
    write_at(&c.path("a", "f"), b"edit made on a", 1_650_000_000);
    write_at(&c.path("b", "f"), b"edit made on b", 1_650_000_001);
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 3, "{v:#}");
    let pb = peer_report(&v, "b");
    assert!(pb["error"].is_null(), "{v:#}");
    assert!(pb["pulled"]["conflicts"].as_array().unwrap().iter().any(|p| p == "%tree%/f"), "{v:#}");
    assert_eq!(read(&c, "a", "f"), b"edit made on a");
    assert_eq!(read(&c, "b", "f"), b"edit made on b");
    assert_eq!(conflict_paths(&c, "a"), vec!["%tree%/f"]);
    assert_eq!(conflict_paths(&c, "b"), vec!["%tree%/f"]);
    let on_a = &c.conflicts("a")[0];
    assert_eq!(on_a["peer"], "b");
    assert_eq!(on_a["kind"], "modify-modify");
    // The rest is untouched by the conflict.
    assert_eq!(read(&c, "b", "d/g"), b"other");
    // `status` on B sees it too.
    let (code, _) = c.json("b", &["status"]);
    assert_eq!(code, 3);

    let out = c.run("b", &["force", c.path("b", "f").to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (code, v) = c.sync("b", &[]);
    assert_eq!(code, 0, "{v:#}");
    assert!(!any_conflict(&v), "{v:#}");
    c.assert_all_same();
    assert_eq!(read(&c, "c", "f"), b"edit made on b");
    for n in ["a", "b", "c"] {
        let (code, v) = c.sync(n, &[]);
        assert_eq!(code, 0, "{n}: {v:#}");
        let (code, v) = c.json(n, &["status"]);
        assert_eq!(code, 0, "status on {n}: {v:#}");
        assert!(c.conflicts(n).is_empty(), "{n} still lists a conflict");
    }
    c.assert_all_same();
}

/// SPEC §4.5: modify on A versus delete on B is a conflict; nothing
/// changes on either host.
#[test]
fn sync_modify_versus_delete_is_a_conflict() {
    let c = synced(Setup::nodes(3));
    write_at(&c.path("a", "f"), b"edited on a", 1_650_000_000);
    std::fs::remove_file(c.path("b", "f")).unwrap();
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 3, "{v:#}");
    assert_eq!(read(&c, "a", "f"), b"edited on a");
    assert!(!c.path("b", "f").exists(), "b's deletion was undone");
    let on_a = c.conflicts("a");
    let on_b = c.conflicts("b");
    assert_eq!(on_a.len(), 1, "{on_a:?}");
    assert_eq!(on_b.len(), 1, "{on_b:?}");
    assert_eq!(on_a[0]["kind"], "modify-delete");
    assert_eq!(on_b[0]["kind"], "delete-modify");
    // Also from B's side.
    let (code, v) = c.sync("b", &["--peer", "a"]);
    assert_eq!(code, 3, "{v:#}");
    assert_eq!(read(&c, "a", "f"), b"edited on a");
    assert!(!c.path("b", "f").exists());
}

/// SPEC §4.5 with `auto younger`: the younger edit wins without `force`.
#[test]
fn sync_auto_younger_settles_a_conflict() {
    let c = synced(Setup::nodes(3).extra("auto younger;"));
    write_at(&c.path("a", "f"), b"older edit on a", 1_650_000_000);
    write_at(&c.path("b", "f"), b"younger edit on b", 1_650_000_500);
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 0, "{v:#}");
    assert!(!any_conflict(&v), "{v:#}");
    c.assert_same("a", "b");
    // A pushed its own edit to C before it took B's: C gets B's next run.
    let v = c.sync_ok("a");
    assert!(!any_conflict(&v), "{v:#}");
    c.assert_all_same();
    assert_eq!(read(&c, "a", "f"), b"younger edit on b");
    for n in ["a", "b", "c"] {
        let (code, v) = c.sync(n, &[]);
        assert_eq!(code, 0, "{n}: {v:#}");
        assert!(c.conflicts(n).is_empty(), "{n}");
    }
    c.assert_all_same();
}

/// SPEC §4.5: a file replaced by a directory on A while B edits the file
/// is a conflict; both keep their own.
#[test]
fn sync_file_versus_directory_is_a_conflict() {
    let c = synced(Setup::nodes(3));
    std::fs::remove_file(c.path("a", "f")).unwrap();
    write_at(&c.path("a", "f/inside"), b"now a directory", 1_650_000_000);
    write_at(&c.path("b", "f"), b"edited on b", 1_650_000_000);
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 3, "{v:#}");
    assert!(c.path("a", "f").is_dir());
    assert_eq!(read(&c, "b", "f"), b"edited on b");
    let on_a = c.conflicts("a");
    assert!(on_a.iter().any(|x| x["path"] == "%tree%/f" && x["kind"] == "type-change"), "{on_a:#?}");
    assert!(c.conflicts("b").iter().any(|x| x["path"] == "%tree%/f"));
}
