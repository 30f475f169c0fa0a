//! SPEC §4.18: an include root that is a symlink on one host is reported
//! there and never sent as a symlink to others.

use crate::cluster::Cluster;
use crate::common::write;

/// The operator of `a` moved the tree and left a symlink at the configured
/// path. Regression: `a` sent the symlink, an empty peer's include root
/// became a symlink to `a`'s path, and a third host failed forever with
/// "Directory not empty".
#[test]
fn include_root_symlink_is_reported_and_never_spreads() {
    let mut c = Cluster::new(3);
    c.start_all();
    write(&c.path("a", "shared.txt"), b"from a");
    write(&c.path("c", "own.txt"), b"from c");
    c.sync_ok("a");
    c.assert_all_same();

    // The tree moves; a link stays at the configured path.
    let moved = c.root().join("a").join("moved");
    std::fs::rename(c.tree("a"), &moved).unwrap();
    std::os::unix::fs::symlink(&moved, c.tree("a")).unwrap();
    write(&moved.join("new-in-moved.txt"), b"behind the link");

    let out = c.run("a", &["sync"]);
    assert_eq!(out.code, 1, "a symlinked include root is an error on its host\n{}{}", out.stdout, out.stderr);
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("include root is a symlink"),
        "the report names the problem\n{}{}",
        out.stdout,
        out.stderr
    );
    for peer in ["b", "c"] {
        let md = std::fs::symlink_metadata(c.tree(peer)).unwrap();
        assert!(md.is_dir(), "{peer}'s include root is still a directory");
        assert!(c.path(peer, "shared.txt").is_file(), "{peer} deleted nothing");
        assert!(!c.path(peer, "new-in-moved.txt").exists(), "nothing behind the link was sent to {peer}");
    }

    // The others keep syncing with each other and never see a symlink.
    write(&c.path("c", "later.txt"), b"later");
    let (code, _) = c.sync("c", &["--peer", "b"]);
    assert_eq!(code, 0);
    assert!(c.path("b", "later.txt").is_file());
    assert!(std::fs::symlink_metadata(c.tree("b")).unwrap().is_dir());
    // Nothing was written through a's link.
    assert!(!moved.join("later.txt").exists());
    assert!(std::fs::symlink_metadata(c.tree("a")).unwrap().file_type().is_symlink());
}
