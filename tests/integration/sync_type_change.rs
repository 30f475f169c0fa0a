//! SPEC §4.16: a type change travels like any change, a directory with
//! all its contents included; §4.3 and §7: a deletion is never undone by a
//! leftover temporary; §4.18: an include root is never made a symlink by a
//! peer, nor written through when it is one.

use std::path::Path;

use crate::cluster::{Cluster, any_conflict};
use crate::common::write;

/// Temporary files (`.snapsync-*`) left anywhere in a node's tree.
fn temporaries(c: &Cluster, node: &str) -> Vec<std::path::PathBuf> {
    crate::common::snapshot(&c.tree(node))
        .into_keys()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".snapsync-")))
        .collect()
}

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

    // A temporary an interrupted run left in a directory that goes is
    // swept first, never in the way.
    leave_recorded_temporary(&c, "b", &c.path("b", "d/inner/.snapsync-ffeeddccbbaa99887766554433221100.tmp"));
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
    assert!(temporaries(&c, "b").is_empty(), "no temporary left: {:?}", temporaries(&c, "b"));
    c.assert_status_clean("a");
    c.assert_status_clean("b");

    // And back: the file becomes a directory again, from the other side.
    std::fs::remove_file(c.path("b", "d")).unwrap();
    write(&c.path("b", "d/again.txt"), b"again");
    c.sync_ok("b");
    c.assert_all_same();
    assert_eq!(std::fs::read(c.path("a", "d/again.txt")).unwrap(), b"again");
    c.assert_status_clean("a");
}

/// A file replaced by a directory (with files and a directory in it) and a
/// symlink replaced by a directory reach the peers, and so does a
/// directory replaced by a symlink whose place a file of the directory
/// takes (chunks of a deleted file reused).
#[test]
fn file_or_symlink_replaced_by_directory_reaches_peers() {
    let mut c = Cluster::new(3);
    c.start_all();
    write(&c.path("a", "f"), b"a file");
    std::os::unix::fs::symlink("f", c.path("a", "s")).unwrap();
    let big = crate::common::bytes(7, 300_000);
    write(&c.path("a", "m/big.bin"), &big);
    c.sync_ok("a");
    c.assert_all_same();

    std::fs::remove_file(c.path("a", "f")).unwrap();
    write(&c.path("a", "f/sub/inside.txt"), b"inside");
    write(&c.path("a", "f/top.txt"), b"top");
    std::fs::remove_file(c.path("a", "s")).unwrap();
    std::fs::create_dir(c.path("a", "s")).unwrap();
    // `m/big.bin` moves up to `m`'s own place.
    std::fs::rename(c.path("a", "m/big.bin"), c.path("a", "big.tmp")).unwrap();
    std::fs::remove_dir(c.path("a", "m")).unwrap();
    std::fs::rename(c.path("a", "big.tmp"), c.path("a", "m")).unwrap();
    let v = c.sync_ok("a");
    assert!(!any_conflict(&v), "{v:#}");
    c.assert_all_same();
    assert_eq!(std::fs::read(c.path("c", "m")).unwrap(), big);
    for n in ["a", "b", "c"] {
        assert!(temporaries(&c, n).is_empty(), "no temporary left on {n}");
        c.assert_status_clean(n);
    }
}

/// A file created on one host and a directory with a file in it on
/// another are a type-change conflict; `force` on the file's side settles
/// it: the directory and what it held go everywhere. Regression: the
/// forced file never reached the directory's host, the conflict vanished
/// from the lists and `status` stayed at 3.
#[test]
fn type_change_conflict_forced_on_the_file_side_converges() {
    let mut c = Cluster::new(2);
    c.start_all();
    write(&c.path("a", "keep.txt"), b"synced");
    c.sync_ok("a");
    write(&c.path("a", "d"), b"the file wins");
    write(&c.path("b", "d/x.txt"), b"in the directory");
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 3, "a conflict: {v:#}");
    assert!(!c.conflicts("a").is_empty() && !c.conflicts("b").is_empty(), "both hosts list it");

    let out = c.run("a", &["force", c.path("a", "d").to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    c.sync_ok("a");
    c.assert_all_same();
    assert_eq!(std::fs::read(c.path("b", "d")).unwrap(), b"the file wins");
    assert!(c.conflicts("a").is_empty() && c.conflicts("b").is_empty());
    c.assert_status_clean("a");
    c.assert_status_clean("b");
    assert!(temporaries(&c, "b").is_empty());
}

/// The same conflict settled on the directory's side: the file goes, the
/// directory and its file arrive.
#[test]
fn type_change_conflict_forced_on_the_directory_side_converges() {
    let mut c = Cluster::new(2);
    c.start_all();
    write(&c.path("a", "d"), b"the file loses");
    write(&c.path("b", "d/x.txt"), b"the directory wins");
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 3, "a conflict: {v:#}");
    let out = c.run("b", &["force", c.path("b", "d").to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    c.sync_ok("b");
    c.assert_all_same();
    assert_eq!(std::fs::read(c.path("a", "d/x.txt")).unwrap(), b"the directory wins");
    c.assert_status_clean("a");
    c.assert_status_clean("b");
}

/// A directory replaced by a file on one host while a file was added to
/// it on another: nothing is lost. The new file and its directory stay,
/// and both hosts report a type-change conflict (exit 3) until `force`
/// settles it.
#[test]
fn directory_replaced_while_a_file_was_added_to_it_is_a_conflict() {
    let mut c = Cluster::new(2);
    c.start_all();
    write(&c.path("a", "d/old.txt"), b"old");
    c.sync_ok("a");
    std::fs::remove_dir_all(c.path("a", "d")).unwrap();
    write(&c.path("a", "d"), b"now a file");
    write(&c.path("b", "d/new.txt"), b"added meanwhile");
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 3, "a conflict, not a silent loss: {v:#}");
    assert_eq!(std::fs::read(c.path("b", "d/new.txt")).unwrap(), b"added meanwhile");
    assert!(!c.path("b", "d/old.txt").exists(), "what the peer deleted went");
    assert_eq!(std::fs::read(c.path("a", "d")).unwrap(), b"now a file");
    let (code, _) = c.sync("b", &[]);
    assert_eq!(code, 3, "still a conflict from the other side");
    assert!(!c.conflicts("a").is_empty() && !c.conflicts("b").is_empty(), "both hosts list it");
    assert!(temporaries(&c, "b").is_empty());

    let out = c.run("b", &["force", c.path("b", "d").to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    c.sync_ok("b");
    c.assert_all_same();
    assert_eq!(std::fs::read(c.path("a", "d/new.txt")).unwrap(), b"added meanwhile");
    c.assert_status_clean("a");
}

/// SPEC §4.11 with §4.16: a directory replaced by a file on one host
/// while another keeps an excluded file in it: the excluded file is never
/// deleted, so the directory stays there; the run says why and both hosts
/// hold a type-change conflict (exit 3) instead of "in sync".
#[test]
fn directory_replaced_while_holding_an_excluded_file_keeps_it_and_says_so() {
    let mut c = Cluster::with(crate::cluster::Setup::nodes(2).extra("exclude *.log;"));
    c.start_all();
    write(&c.path("a", "d/x.txt"), b"x");
    c.sync_ok("a");
    write(&c.path("b", "d/local.log"), b"never synced");
    std::fs::remove_dir_all(c.path("a", "d")).unwrap();
    write(&c.path("a", "d"), b"now a file");
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 3, "{v:#}");
    assert_eq!(std::fs::read(c.path("b", "d/local.log")).unwrap(), b"never synced");
    assert!(!c.path("b", "d/x.txt").exists(), "what the peer deleted went");
    assert!(c.log("b").contains("does not track"), "b says why: {}", c.log("b"));
    let (code, _) = c.sync("b", &[]);
    assert_eq!(code, 3, "still a conflict, from either side");
    assert!(temporaries(&c, "b").is_empty());
}

/// Regression (issue 8, item 9): a directory deleted here while a file
/// was added to it there ends right (the new file survives), and the run
/// says so: exit 0, no "holds entries this group does not track".
#[test]
fn directory_deleted_while_a_file_was_added_to_it_syncs_cleanly() {
    let mut c = Cluster::new(2);
    c.start_all();
    write(&c.path("a", "d/old.txt"), b"old");
    c.sync_ok("a");
    std::fs::remove_dir_all(c.path("a", "d")).unwrap();
    write(&c.path("b", "d/new.txt"), b"added meanwhile");
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 0, "the outcome is the group's own: {v:#}");
    assert!(!v.to_string().contains("does not track"), "{v:#}");
    assert!(!c.log("b").contains("does not track"), "{}", c.log("b"));
    c.sync_ok("a");
    c.assert_all_same();
    assert_eq!(std::fs::read(c.path("a", "d/new.txt")).unwrap(), b"added meanwhile");
    assert!(!c.path("a", "d/old.txt").exists());
    c.assert_status_clean("a");
    c.assert_status_clean("b");
}

/// Records `path` in node `node`'s journal of temporaries, as a run that
/// crashed after creating it leaves it.
fn leave_recorded_temporary(c: &Cluster, node: &str, path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let journal = c.node_state_dir(node).join("incoming").join("temps");
    std::fs::create_dir_all(&journal).unwrap();
    let entry = snapsync::hash::Hash::of(path.as_os_str().as_bytes()).to_hex();
    std::fs::write(journal.join(entry), path.as_os_str().as_bytes()).unwrap();
    std::fs::write(path, b"half a transfer").unwrap();
}

/// Issue 8, item 3: a temporary left by an interrupted run in a directory
/// a peer deletes never blocks the deletion, and the directory never comes
/// back on the sender as a "create". (Guards the journal of temporaries,
/// swept before anything is deleted.)
#[test]
fn leftover_temporary_never_blocks_a_deletion() {
    let mut c = Cluster::new(2);
    c.start_all();
    write(&c.path("a", "d/f.txt"), b"f");
    write(&c.path("a", "d/sub/g.txt"), b"g");
    c.sync_ok("a");
    c.assert_all_same();
    let left = c.path("b", "d/sub/.snapsync-00112233445566778899aabbccddeeff.tmp");
    leave_recorded_temporary(&c, "b", &left);

    std::fs::remove_dir_all(c.path("a", "d")).unwrap();
    c.sync_ok("a");
    assert!(!c.path("b", "d").exists(), "the directory is removed on b");
    assert!(!left.exists());
    let v = c.sync_ok("a");
    assert!(!v.to_string().contains("\"create\""), "nothing comes back: {v:#}");
    assert!(!c.path("a", "d").exists());
    c.assert_all_same();
    c.assert_status_clean("a");
    c.assert_status_clean("b");
}

/// SPEC §4.18, receiving side: a host whose include root is a symlink
/// (its operator moved the tree) writes and deletes nothing through it
/// when a peer pushes changes, and the others go on syncing.
#[test]
fn include_root_symlink_is_never_written_through() {
    let mut c = Cluster::new(3);
    c.start_all();
    write(&c.path("a", "shared.txt"), b"shared");
    write(&c.path("a", "gone.txt"), b"to be deleted");
    write(&c.path("a", "dir/in.txt"), b"in");
    c.sync_ok("a");
    c.assert_all_same();

    let moved = c.root().join("b").join("moved");
    std::fs::rename(c.tree("b"), &moved).unwrap();
    std::os::unix::fs::symlink(&moved, c.tree("b")).unwrap();
    let before = crate::common::snapshot(&moved);

    write(&c.path("a", "new.txt"), b"new");
    write(&c.path("a", "shared.txt"), b"changed");
    std::fs::remove_file(c.path("a", "gone.txt")).unwrap();
    std::fs::remove_dir_all(c.path("a", "dir")).unwrap();
    std::os::unix::fs::symlink("shared.txt", c.path("a", "link")).unwrap();
    // Whether the run reports b's refusal is the initiator's business
    // (SPEC §3); here only what b wrote counts.
    let _ = c.sync("a", &[]);
    assert_eq!(crate::common::snapshot(&moved), before, "nothing changed behind b's link");
    assert!(std::fs::symlink_metadata(c.tree("b")).unwrap().file_type().is_symlink());
    c.assert_same("a", "c");
}
