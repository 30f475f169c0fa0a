//! SPEC §4.16: a type change travels like any change, a directory with
//! all its contents included.

use crate::cluster::Cluster;
use crate::common::write;

/// Regression: `rm -r d; echo x > d` on one host synced as "0 changes
/// applied", exit 0, while the peer kept the directory forever.
#[test]
fn directory_replaced_by_file_or_symlink_reaches_peers() {
    let mut c = Cluster::new(2);
    c.start_all();
    write(&c.path("a", "d/inner/deep.txt"), b"deep");
    write(&c.path("a", "d/top.txt"), b"top");
    write(&c.path("a", "l/x.txt"), b"x");
    std::fs::create_dir_all(c.path("a", "e/nested/empty")).unwrap();
    c.sync_ok("a");
    c.assert_all_same();

    std::fs::remove_dir_all(c.path("a", "d")).unwrap();
    write(&c.path("a", "d"), b"now a file");
    std::fs::remove_dir_all(c.path("a", "l")).unwrap();
    std::os::unix::fs::symlink("d", c.path("a", "l")).unwrap();
    std::fs::remove_dir_all(c.path("a", "e")).unwrap();
    write(&c.path("a", "e"), b"was an empty nested directory");
    c.sync_ok("a");
    c.assert_all_same();
    assert_eq!(std::fs::read(c.path("b", "d")).unwrap(), b"now a file");
    assert!(std::fs::symlink_metadata(c.path("b", "l")).unwrap().file_type().is_symlink());
    let (code, _) = c.json("b", &["status"]);
    assert_eq!(code, 0, "nothing is left to do");

    // And back: the file becomes a directory again, from the other side.
    std::fs::remove_file(c.path("b", "d")).unwrap();
    write(&c.path("b", "d/again.txt"), b"again");
    c.sync_ok("b");
    c.assert_all_same();
    assert_eq!(std::fs::read(c.path("a", "d/again.txt")).unwrap(), b"again");
}
