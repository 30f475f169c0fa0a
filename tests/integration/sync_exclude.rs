//! SPEC §4.11: excluded paths are never read, sent, written or deleted.

use crate::cluster::{Cluster, Setup, peer_report};
use crate::common::write;

fn setup() -> Cluster {
    let mut c = Cluster::with(Setup::nodes(3).extra("exclude %tree%/secret;").extra("exclude *.tmp;"));
    c.start_all();
    write(&c.path("a", "shared/file"), b"shared");
    write(&c.path("a", "secret/a-key"), b"a's secret");
    write(&c.path("a", "x.tmp"), b"a scratch");
    write(&c.path("a", "sub/n"), b"normal");
    write(&c.path("a", "sub/y.tmp"), b"a scratch below");
    write(&c.path("b", "secret/b-key"), b"b's secret");
    write(&c.path("b", "z.tmp"), b"b scratch");
    write(&c.path("b", "sub/w.tmp"), b"b scratch below");
    c
}

fn exists(c: &Cluster, node: &str, rel: &str) -> bool {
    std::fs::symlink_metadata(c.path(node, rel)).is_ok()
}

/// Excluded files on A never reach B or C, and B's never reach A; nobody's
/// excluded files are deleted or overwritten.
#[test]
fn sync_excluded_paths_are_never_sent_or_deleted() {
    let c = setup();
    let v = c.sync_ok("a");
    assert!(peer_report(&v, "b")["error"].is_null(), "{v:#}");
    let v = c.sync_ok("b");
    assert!(peer_report(&v, "a")["error"].is_null(), "{v:#}");
    for n in ["b", "c"] {
        assert!(exists(&c, n, "shared/file") && exists(&c, n, "sub/n"), "{n} missed included files");
        assert!(!exists(&c, n, "secret/a-key") && !exists(&c, n, "x.tmp") && !exists(&c, n, "sub/y.tmp"), "{n}");
    }
    for n in ["a", "c"] {
        assert!(!exists(&c, n, "secret/b-key") && !exists(&c, n, "z.tmp") && !exists(&c, n, "sub/w.tmp"), "{n}");
    }
    assert_eq!(std::fs::read(c.path("a", "secret/a-key")).unwrap(), b"a's secret");
    assert_eq!(std::fs::read(c.path("b", "secret/b-key")).unwrap(), b"b's secret");
    assert_eq!(std::fs::read(c.path("b", "z.tmp")).unwrap(), b"b scratch");
    assert_eq!(std::fs::read(c.path("b", "sub/w.tmp")).unwrap(), b"b scratch below");
    // No `ls` lists an excluded path.
    for n in ["a", "b", "c"] {
        let ls = c.ls(n).to_string();
        assert!(!ls.contains("secret/") && !ls.contains(".tmp"), "{n} tracks an excluded path: {ls}");
    }
    // A writes an excluded file B also has: B's stays.
    write(&c.path("a", "z.tmp"), b"a's z");
    c.sync_ok("a");
    assert_eq!(std::fs::read(c.path("b", "z.tmp")).unwrap(), b"b scratch");
}

/// A deletes a directory holding an included file; B's copy of that
/// directory also holds B's excluded file, which must survive.
#[test]
fn sync_deleting_a_directory_keeps_excluded_files_inside() {
    let c = setup();
    c.sync_ok("a");
    c.sync_ok("b");
    assert!(exists(&c, "b", "sub/n") && exists(&c, "b", "sub/w.tmp"));
    std::fs::remove_dir_all(c.path("a", "sub")).unwrap();
    let (code, v) = c.sync("a", &[]);
    eprintln!("sync after deleting sub exited {code}: {v:#}");
    assert!(!exists(&c, "b", "sub/n"), "b kept the deleted file: {v:#}");
    assert_eq!(std::fs::read(c.path("b", "sub/w.tmp")).unwrap(), b"b scratch below");
    // B cannot remove the directory (its excluded file keeps it), so the
    // directory stays in the group, empty everywhere else: a deletion
    // never removes what a host excludes, and the hosts agree again.
    assert!(!exists(&c, "c", "sub/n"), "c kept the deleted file: {v:#}");
    assert!(c.path("c", "sub").is_dir(), "c lost the directory b keeps: {v:#}");
}

/// The directory B cannot remove (it holds B's excluded file) must not be
/// reported to A as deleted, and the cluster must settle: later syncs
/// finish without errors and find nothing left to do.
#[test]
fn sync_directory_kept_for_excluded_files_settles() {
    let c = setup();
    c.sync_ok("a");
    c.sync_ok("b");
    std::fs::remove_dir_all(c.path("a", "sub")).unwrap();
    let (_, v) = c.sync("a", &[]);
    assert!(exists(&c, "b", "sub/w.tmp"));
    let pushed = crate::cluster::changes(&peer_report(&v, "b")["pushed"]);
    assert!(
        !pushed.contains(&("delete".to_owned(), "%tree%/sub".to_owned())),
        "b reported deleting %tree%/sub, which it kept: {pushed:?}"
    );
    // The next runs finish the work: no failure, nothing left to do.
    let (code, v) = c.sync("b", &[]);
    assert_eq!(code, 0, "{v:#}");
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(peer_report(&v, "b")["in_sync"], true, "{v:#}");
}
