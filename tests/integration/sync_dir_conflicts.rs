//! A directory deleted on one host while entries in it changed on another
//! (SPEC §4.5, §4.7): the deleting host keeps its deletion until the
//! conflict is settled, and settling it leaves nothing listed.

use crate::cluster::Cluster;
use crate::common::write;

/// Paths of the conflicts `node` lists.
fn listed(c: &Cluster, node: &str) -> Vec<String> {
    let mut paths: Vec<String> =
        c.conflicts(node).iter().map(|v| v["path"].as_str().unwrap_or_default().to_owned()).collect();
    paths.sort();
    paths.dedup();
    paths
}

/// Settles `d` from `winner` with `force -r`: the winner syncs, then
/// each of `then`; every tree is the same, and no node of `nodes` lists a
/// conflict or has anything left to do.
fn force_d_from(c: &Cluster, winner: &str, then: &[&str], nodes: &[&str]) {
    let out = c.run(winner, &["force", "-r", &c.path(winner, "d").display().to_string()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    c.sync_ok(winner);
    for n in then {
        c.sync_ok(n);
    }
    c.assert_all_same();
    for n in nodes {
        assert!(listed(c, n).is_empty(), "{n} lists no conflict: {:?}", listed(c, n));
        c.assert_status_clean(n);
    }
}

/// Regression (found by the model-based test): the directory came back,
/// empty, on the host that deleted it, because the other host kept it
/// under a version that dominated the deletion although everything in it
/// was in conflict with that deletion.
#[test]
fn deleted_directory_with_children_edited_elsewhere_stays_deleted_until_forced() {
    let mut c = Cluster::new(2);
    c.start_all();
    write(&c.path("a", "d/x.txt"), b"x");
    write(&c.path("a", "d/y.txt"), b"y");
    c.sync_ok("a");
    c.assert_all_same();

    std::fs::remove_dir_all(c.path("b", "d")).unwrap();
    c.check("b");
    write(&c.path("a", "d/x.txt"), b"x edited on a");
    write(&c.path("a", "d/y.txt"), b"y edited on a");
    c.check("a");

    for from in ["b", "a", "b"] {
        let (code, v) = c.sync(from, &[]);
        assert_eq!(code, 3, "sync from {from} reports the conflict: {v:#}");
        assert!(std::fs::symlink_metadata(c.path("b", "d")).is_err(), "b keeps its deletion after a sync from {from}");
        assert_eq!(std::fs::read(c.path("a", "d/x.txt")).unwrap(), b"x edited on a");
    }
    let on_b = listed(&c, "b");
    assert!(on_b.iter().any(|p| p.ends_with("/d") || p.contains("/d/")), "b lists the conflict: {on_b:?}");

    // The deletion wins where it is forced, and the group settles.
    force_d_from(&c, "b", &["a"], &["a", "b"]);
    assert!(std::fs::symlink_metadata(c.path("a", "d")).is_err(), "the forced deletion reached a");
}

/// The same, the other way: the edits win where they are forced, and the
/// directory with the edited files reaches the host that deleted it.
#[test]
fn deleted_directory_with_children_edited_elsewhere_comes_back_when_the_edits_are_forced() {
    let mut c = Cluster::new(2);
    c.start_all();
    write(&c.path("a", "d/x.txt"), b"x");
    c.sync_ok("a");

    std::fs::remove_dir_all(c.path("b", "d")).unwrap();
    c.check("b");
    write(&c.path("a", "d/x.txt"), b"x edited on a");
    c.check("a");
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 3, "{v:#}");

    force_d_from(&c, "a", &["b"], &["a", "b"]);
    assert_eq!(std::fs::read(c.path("b", "d/x.txt")).unwrap(), b"x edited on a");
}

/// Regression (found by the model-based test): entries of a directory
/// that conflicted between two hosts stayed listed as conflicts for good
/// once a third host's file replaced the directory by `force`: no
/// reconcile ever visits a path below a file again.
#[test]
fn conflicts_below_a_directory_a_forced_file_replaced_are_cleared() {
    let mut c = Cluster::new(3);
    c.start_all();
    write(&c.path("a", "d/x.txt"), b"x");
    c.sync_ok("a");
    c.assert_all_same();

    // b and c edit the same file: a conflict between them.
    write(&c.path("b", "d/x.txt"), b"x edited on b");
    write(&c.path("c", "d/x.txt"), b"x edited on c, longer");
    c.check("b");
    c.check("c");
    let (code, v) = c.sync("b", &["--peer", "c"]);
    assert_eq!(code, 3, "{v:#}");
    assert!(listed(&c, "b").iter().any(|p| p.ends_with("/d/x.txt")), "{:?}", listed(&c, "b"));

    // a replaces the directory with a file, concurrently with both edits.
    std::fs::remove_dir_all(c.path("a", "d")).unwrap();
    write(&c.path("a", "d"), b"now a file");
    c.check("a");
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 3, "the type change conflicts with the edits: {v:#}");

    force_d_from(&c, "a", &["b", "c", "a"], &["a", "b", "c"]);
    assert_eq!(std::fs::read(c.path("c", "d")).unwrap(), b"now a file");
}

/// A deletion made after a file was created on one host is concurrent with
/// a creation of the same name by a host that never saw the first file: a
/// conflict, and the deleting host keeps its deletion.
#[test]
fn a_deletion_is_not_replaced_by_an_unrelated_creation_of_the_same_name() {
    let mut c = Cluster::new(3);
    c.start_all();
    c.stop("b");
    write(&c.path("c", "s0"), b"e6 by c");
    c.check("c");
    let (code, v) = c.sync("c", &["--peer", "a"]);
    assert_eq!(code, 0, "{v:#}");
    std::fs::remove_file(c.path("a", "s0")).unwrap();
    c.check("a");
    let (code, v) = c.sync("c", &["--peer", "a"]);
    assert_eq!(code, 0, "{v:#}");
    assert!(std::fs::symlink_metadata(c.path("c", "s0")).is_err());
    c.start("b");
    write(&c.path("b", "s0"), b"e7 by b");
    c.check("b");
    let (code, v) = c.sync("a", &["--peer", "b"]);
    assert_eq!(code, 3, "a deletion against an unrelated creation is a conflict: {v:#}");
    assert!(std::fs::symlink_metadata(c.path("a", "s0")).is_err(), "a keeps its deletion: {v:#}");
}

/// Regression (found by the model-based test): a host that never had a
/// path stored a peer's tombstone for it while an unrecorded file of its
/// own sat there; its next check then recorded the file as a change made
/// after the deletion, and every host took it in place of the deletion.
#[test]
fn an_unrecorded_file_where_a_peer_sends_a_tombstone_is_a_conflict_not_a_later_change() {
    let mut c = Cluster::new(3);
    c.start_all();
    write(&c.path("a", "d/keep"), b"everywhere");
    c.sync_ok("a");
    c.stop("b");
    write(&c.path("a", "d/f"), b"made on a");
    c.check("a");
    let (code, v) = c.sync("a", &["--peer", "c"]);
    assert_eq!(code, 0, "{v:#}");
    std::fs::remove_file(c.path("a", "d/f")).unwrap();
    c.check("a");
    let (code, v) = c.sync("a", &["--peer", "c"]);
    assert_eq!(code, 0, "{v:#}");
    // b never saw d/f; it makes its own and has not checked it yet. The
    // trees as recorded are equal, so only the tombstone differs.
    c.start("b");
    write(&c.path("b", "d/f"), b"made on b, unrelated");
    let (code, v) = c.sync("a", &["--peer", "b"]);
    assert_eq!(code, 3, "a deletion against an unrelated creation is a conflict: {v:#}");
    for from in ["b", "a", "c"] {
        let (code, v) = c.sync(from, &[]);
        assert_eq!(code, 3, "sync from {from}: {v:#}");
    }
    assert!(std::fs::symlink_metadata(c.path("a", "d/f")).is_err(), "a keeps its deletion");
    assert!(std::fs::symlink_metadata(c.path("c", "d/f")).is_err(), "c keeps the deletion it took");
    assert_eq!(std::fs::read(c.path("b", "d/f")).unwrap(), b"made on b, unrelated");
}

/// Regression (found by the model-based test): a directory deleted on one
/// host came back, empty, on that host, by way of a third host. The other
/// host held the directory with a file in conflict with the deletion. It
/// kept the directory under a version the deletion still dominated (the
/// file, first recorded there, carried no host counter). When the
/// deletion reached it again through a host whose own deletion of a file
/// at that name had taken it in, the file counted as newer than that
/// host's deletion, and the directory went everywhere under a version
/// that dominated every deletion.
#[test]
fn a_deletion_relayed_by_a_third_host_does_not_bring_the_directory_back_empty() {
    let mut c = Cluster::new(3);
    c.start_all();
    // a makes a file d, b a directory d: a type-change conflict.
    write(&c.path("a", "d"), b"d is a file on a");
    write(&c.path("b", "d/x.txt"), b"x made on b");
    c.check("a");
    c.check("b");
    let (code, v) = c.sync("a", &["--peer", "b"]);
    assert_eq!(code, 3, "{v:#}");
    // c takes a's file, then deletes it.
    let (code, v) = c.sync("c", &["--peer", "a"]);
    assert_eq!(code, 0, "{v:#}");
    std::fs::remove_file(c.path("c", "d")).unwrap();
    c.check("c");
    // a replaces its file by a directory of its own: its file conflicts
    // with b's. Then a deletes the directory.
    std::fs::remove_file(c.path("a", "d")).unwrap();
    write(&c.path("a", "d/x.txt"), b"x made on a, another");
    c.check("a");
    let (code, v) = c.sync("a", &["--peer", "b"]);
    assert_eq!(code, 3, "{v:#}");
    std::fs::remove_dir_all(c.path("a", "d")).unwrap();
    c.check("a");
    let (code, v) = c.sync("a", &["--peer", "b"]);
    assert_eq!(code, 3, "{v:#}");
    assert!(std::fs::symlink_metadata(c.path("a", "d")).is_err(), "a keeps its deletion: {v:#}");
    assert_eq!(std::fs::read(c.path("b", "d/x.txt")).unwrap(), b"x made on b");
    // c's deletion of the file takes in a's deletion of the directory.
    let (code, v) = c.sync("c", &["--peer", "a"]);
    assert!(code == 0 || code == 3, "{v:#}");

    for from in ["b", "c", "a", "b"] {
        let (code, v) = c.sync(from, &[]);
        assert_eq!(code, 3, "sync from {from}: {v:#}");
        assert!(std::fs::symlink_metadata(c.path("a", "d")).is_err(), "a keeps its deletion after a sync from {from}");
        assert!(std::fs::symlink_metadata(c.path("c", "d")).is_err(), "c keeps its deletion after a sync from {from}");
    }

    // b's version wins where it is forced, and the group settles.
    force_d_from(&c, "b", &["a", "c"], &["a", "b", "c"]);
    assert_eq!(std::fs::read(c.path("a", "d/x.txt")).unwrap(), b"x made on b");
}

/// Regression (found by the model-based test): a host that only ever
/// saw a directory's deletion was sent the files of the other side of
/// that conflict, and failed to write them (`sync` exited 1, "opening
/// its directory: No such file or directory"): the directory they belong
/// to is in conflict there, not created.
#[test]
fn files_below_a_directory_in_conflict_with_its_deletion_wait_on_a_host_that_never_had_it() {
    let mut c = Cluster::new(3);
    c.start_all();
    c.stop("c");
    write(&c.path("b", "d/x.txt"), b"x");
    c.check("b");
    let (code, v) = c.sync("b", &["--peer", "a"]);
    assert_eq!(code, 0, "{v:#}");

    // a deletes the directory while b edits the file in it.
    std::fs::remove_dir_all(c.path("a", "d")).unwrap();
    c.check("a");
    write(&c.path("b", "d/x.txt"), b"x edited on b");
    c.check("b");
    let (code, v) = c.sync("a", &["--peer", "b"]);
    assert_eq!(code, 3, "{v:#}");
    assert!(std::fs::symlink_metadata(c.path("a", "d")).is_err(), "a keeps its deletion: {v:#}");

    // c comes up, a sends it the deletion (with a file that makes the
    // trees differ, so the deleted directory's entries are not listed),
    // then b's side of the conflict reaches it.
    write(&c.path("a", "other.txt"), b"other");
    c.check("a");
    c.start("c");
    let (code, v) = c.sync("a", &["--peer", "c"]);
    assert_eq!(code, 0, "{v:#}");
    let (code, v) = c.sync("b", &["--peer", "c"]);
    assert_eq!(code, 3, "a conflict, nothing failed: {v:#}");
    assert!(std::fs::symlink_metadata(c.path("c", "d")).is_err(), "c keeps the deletion it took");
    for from in ["c", "a", "b"] {
        let (code, v) = c.sync(from, &[]);
        assert_eq!(code, 3, "sync from {from}: {v:#}");
    }

    // Settled from b, the directory with b's edit reaches every host.
    force_d_from(&c, "b", &["a", "c"], &["a", "b", "c"]);
    assert_eq!(std::fs::read(c.path("c", "d/x.txt")).unwrap(), b"x edited on b");
}

/// Regression (found by the model-based test): a host that never had a
/// directory takes what replaced it on another host (a symlink, a file,
/// or its deletion), then meets a host that still holds the directory as
/// it was: the replacement is a later change of everything there (the
/// replacing host saw it all), not a type-change conflict. Both ways
/// round: the relaying host starts the sync, or the host holding the
/// directory does.
#[test]
fn a_directory_replaced_elsewhere_and_relayed_by_a_host_that_never_had_it_is_replaced() {
    for (with, relay_starts) in [("symlink", true), ("symlink", false), ("file", true), ("nothing", false)] {
        let mut c = Cluster::new(3);
        c.start_all();
        // Every host has synced before (c's first check is long past).
        write(&c.path("c", "c.txt"), b"c");
        c.sync_ok("c");
        c.stop("c");
        write(&c.path("a", "d/x.txt"), b"x");
        write(&c.path("a", "d/e/y.txt"), b"y");
        c.check("a");
        let (code, v) = c.sync("a", &["--peer", "b"]);
        assert_eq!(code, 0, "{v:#}");

        // b replaces the directory; c, which never had it, takes the
        // replacement from b.
        std::fs::remove_dir_all(c.path("b", "d")).unwrap();
        match with {
            "symlink" => std::os::unix::fs::symlink("elsewhere", c.path("b", "d")).unwrap(),
            "file" => write(&c.path("b", "d"), b"d is a file now"),
            _ => {}
        }
        // Another change, so that c's tree differs from b's until it
        // pulls: the pull does not list every directory.
        write(&c.path("b", "b.txt"), b"b");
        c.check("b");
        c.start("c");
        let (code, v) = c.sync("c", &["--peer", "b"]);
        assert_eq!(code, 0, "{v:#}");
        c.assert_same("b", "c");

        // c and a meet: a still holds the directory b saw and replaced.
        let (from, to) = if relay_starts { ("c", "a") } else { ("a", "c") };
        let (code, v) = c.sync(from, &["--peer", to]);
        assert_eq!(code, 0, "{with}: sync from {from} to {to} takes the replacement, no conflict: {v:#}");
        c.assert_same("a", "c");
        for n in ["a", "b", "c"] {
            c.sync_ok(n);
        }
        c.assert_all_same();
        let kind = std::fs::symlink_metadata(c.path("a", "d")).ok().map(|m| m.file_type());
        let expected = match with {
            "symlink" => kind.is_some_and(|k| k.is_symlink()),
            "file" => kind.is_some_and(|k| k.is_file()),
            _ => kind.is_none(),
        };
        assert!(expected, "{with}: every host holds b's replacement, not the directory: {kind:?}");
        for n in ["a", "b", "c"] {
            assert!(listed(&c, n).is_empty(), "{n} lists no conflict: {:?}", listed(&c, n));
            c.assert_status_clean(n);
        }
    }
}
