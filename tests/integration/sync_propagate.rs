//! SPEC §4.1–4.3, 4.6, 4.7: what one host changes reaches every host.

use std::os::unix::fs::PermissionsExt;

use crate::cluster::{Cluster, changes, peer_report, set_mtime};
use crate::common::write;

/// SPEC §4.1: a new file, directory, symlink, empty directory and a file
/// with mode 0640 and a nanosecond mtime appear identically everywhere.
#[test]
fn sync_new_entries_reach_every_host() {
    let mut c = Cluster::new(3);
    c.start_all();
    write(&c.path("a", "top.txt"), b"hello");
    write(&c.path("a", "dir/sub/deep.bin"), &crate::common::bytes(7, 100_000));
    std::fs::create_dir_all(c.path("a", "empty/inner")).unwrap();
    std::os::unix::fs::symlink("dir/sub/deep.bin", c.path("a", "link")).unwrap();
    std::os::unix::fs::symlink("/nowhere/at/all", c.path("a", "dangling")).unwrap();
    let f = c.path("a", "dir/private");
    write(&f, b"secret-ish");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
    set_mtime(&f, 1_600_000_000, 123_456_789);
    std::fs::set_permissions(c.path("a", "empty"), std::fs::Permissions::from_mode(0o700)).unwrap();

    let v = c.sync_ok("a");
    for peer in ["b", "c"] {
        let p = peer_report(&v, peer);
        assert!(p["error"].is_null(), "{p:#}");
        let pushed = changes(&p["pushed"]);
        assert!(pushed.iter().any(|(a, p)| a == "create" && p == "%tree%/dir/private"), "{pushed:?}");
    }
    c.assert_all_same();
    let md = std::fs::metadata(c.path("c", "dir/private")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o640);
    use std::os::unix::fs::MetadataExt;
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_600_000_000, 123_456_789));
    assert_eq!(std::fs::read_link(c.path("b", "dangling")).unwrap().to_str(), Some("/nowhere/at/all"));
    assert!(c.path("b", "empty/inner").is_dir());
}

/// SPEC §4.2: a change on B, after a first sync, replaces the old version
/// everywhere.
#[test]
fn sync_change_replaces_old_version_everywhere() {
    let mut c = Cluster::new(3);
    c.start_all();
    write(&c.path("a", "f"), b"version one");
    write(&c.path("a", "d/g"), b"unchanged");
    c.sync_ok("a");
    c.assert_all_same();
    write(&c.path("b", "f"), b"version two, longer");
    set_mtime(&c.path("b", "f"), 1_700_000_000, 5);
    std::fs::set_permissions(c.path("b", "d/g"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let v = c.sync_ok("b");
    assert!(!crate::cluster::any_conflict(&v), "{v:#}");
    c.assert_all_same();
    assert_eq!(std::fs::read(c.path("c", "f")).unwrap(), b"version two, longer");
    assert_eq!(std::fs::metadata(c.path("a", "d/g")).unwrap().permissions().mode() & 0o777, 0o600);
}

/// SPEC §4.3: a file and a directory with children deleted on C are
/// deleted everywhere, and later syncs from any host do not bring them
/// back.
#[test]
fn sync_deletion_deletes_everywhere_and_stays_deleted() {
    let mut c = Cluster::new(3);
    c.start_all();
    write(&c.path("a", "keep"), b"k");
    write(&c.path("a", "gone"), b"g");
    write(&c.path("a", "tree/x/1"), b"1");
    write(&c.path("a", "tree/x/2"), b"2");
    write(&c.path("a", "tree/y"), b"y");
    std::os::unix::fs::symlink("y", c.path("a", "tree/ylink")).unwrap();
    c.sync_ok("a");
    c.assert_all_same();
    std::fs::remove_file(c.path("c", "gone")).unwrap();
    std::fs::remove_dir_all(c.path("c", "tree")).unwrap();
    let v = c.sync_ok("c");
    assert!(!crate::cluster::any_conflict(&v), "{v:#}");
    for n in ["a", "b", "c"] {
        assert!(!c.path(n, "gone").exists() && !c.path(n, "tree").exists(), "{n} still has them");
        assert!(c.path(n, "keep").exists());
    }
    // Later syncs, from every host, keep them deleted.
    for n in ["a", "b", "c"] {
        let v = c.sync_ok(n);
        assert!(!crate::cluster::any_conflict(&v), "{v:#}");
    }
    for n in ["a", "b", "c"] {
        assert!(!c.path(n, "gone").exists() && !c.path(n, "tree").exists(), "{n} got them back");
        assert!(c.conflicts(n).is_empty());
    }
    c.assert_all_same();
}

/// SPEC §4.6: A syncs with B while C is down; later B syncs with C: C gets
/// A's change and no host reports a conflict.
#[test]
fn sync_change_travels_transitively() {
    let mut c = Cluster::new(3);
    c.start_all();
    write(&c.path("a", "f"), b"old");
    write(&c.path("a", "d/g"), b"old g");
    c.sync_ok("a");
    c.assert_all_same();
    c.stop("c");
    write(&c.path("a", "f"), b"new from a");
    write(&c.path("a", "d/h"), b"added by a");
    std::fs::remove_file(c.path("a", "d/g")).unwrap();
    let started = std::time::Instant::now();
    let (code, v) = c.sync("a", &[]);
    eprintln!("sync with c down took {:?}", started.elapsed());
    assert_eq!(code, 1, "c is down: {v:#}");
    assert!(peer_report(&v, "c")["error"].is_string(), "{v:#}");
    assert!(peer_report(&v, "b")["error"].is_null(), "{v:#}");
    c.assert_same("a", "b");
    c.start("c");
    let v = c.sync_ok("b");
    assert!(!crate::cluster::any_conflict(&v), "{v:#}");
    c.assert_all_same();
    assert_eq!(std::fs::read(c.path("c", "f")).unwrap(), b"new from a");
    assert!(!c.path("c", "d/g").exists());
    for n in ["a", "b", "c"] {
        let v = c.sync_ok(n);
        assert!(!crate::cluster::any_conflict(&v), "{n}: {v:#}");
        assert!(c.conflicts(n).is_empty(), "{n} has conflicts");
    }
    c.assert_all_same();
}

/// SPEC §4.7: a host down for a while misses several changes (from two
/// hosts, over several syncs) and deletions; after its restart one sync
/// brings it fully up to date.
#[test]
fn sync_host_back_after_downtime_gets_everything() {
    let mut c = Cluster::new(3);
    c.start_all();
    for i in 0..5 {
        write(&c.path("a", &format!("d{i}/f")), format!("v0 {i}").as_bytes());
    }
    write(&c.path("a", "doomed/x"), b"x");
    c.sync_ok("a");
    c.assert_all_same();
    c.stop("c");
    // A peer that does not answer fails its exchange, and the message says
    // what usually causes that.
    let (code, v) = c.sync("a", &["--peer", "c"]);
    assert_eq!(code, 1, "{v:#}");
    let err = crate::cluster::peer_report(&v, "c")["error"].as_str().unwrap_or_default().to_owned();
    assert!(err.contains("is `snapsync serve` running there"), "{err}");
    // Several rounds of changes on a and b, synced between them only.
    write(&c.path("a", "d0/f"), b"v1 from a");
    write(&c.path("a", "new/one"), b"one");
    c.sync_ok_with("a", &["--peer", "b"]);
    write(&c.path("b", "d1/f"), b"v1 from b");
    std::fs::remove_dir_all(c.path("b", "doomed")).unwrap();
    c.sync_ok_with("b", &["--peer", "a"]);
    write(&c.path("a", "d0/f"), b"v2 from a");
    std::fs::remove_file(c.path("a", "d2/f")).unwrap();
    std::fs::rename(c.path("a", "d3/f"), c.path("a", "d3/f-renamed")).unwrap();
    c.sync_ok_with("a", &["--peer", "b"]);
    c.assert_same("a", "b");
    c.start("c");
    let v = c.sync_ok("c");
    assert!(!crate::cluster::any_conflict(&v), "{v:#}");
    c.assert_all_same();
    assert!(!c.path("c", "doomed").exists() && !c.path("c", "d2/f").exists());
    assert_eq!(std::fs::read(c.path("c", "d0/f")).unwrap(), b"v2 from a");
    // Nothing left to change anywhere. (Whether the runs also find the
    // pairs `in_sync` is `sync_deleted_directory_settles`' business: a
    // deleted directory keeps them from it.)
    for n in ["a", "b", "c"] {
        let v = c.sync_ok(n);
        for p in v["peers"].as_array().unwrap() {
            assert_eq!(p["pushed"], serde_json::json!([]), "{n}: {v:#}");
            assert!(p["pulled"].is_null() || p["pulled"]["changes"] == serde_json::json!([]), "{n}: {v:#}");
        }
    }
    c.assert_all_same();
}

/// A directory deleted on one host: once both hosts hold the deletion, the
/// next syncs find them in sync (one round trip, nothing listed).
#[test]
fn sync_deleted_directory_settles() {
    let mut c = Cluster::new(2);
    c.start_all();
    write(&c.path("a", "d/f"), b"1");
    c.sync_ok("a");
    std::fs::remove_dir_all(c.path("b", "d")).unwrap();
    c.sync_ok("b");
    assert!(!c.path("a", "d").exists());
    c.assert_all_same();
    for n in ["a", "b", "a"] {
        let v = c.sync_ok(n);
        let p = &v["peers"][0];
        assert_eq!(p["in_sync"], true, "sync on {n} after the deletion settled: {v:#}");
        assert!(p["pulled"].is_null(), "{v:#}");
    }
}
