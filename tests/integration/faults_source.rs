//! Issue 12, item 2, SPEC §4.14 and §7: a file that is deleted, grows, is
//! replaced (renamed over) or rewritten while it is being sent. The
//! sending daemon runs with the test hook [`snapsync::peer::PAUSE_ENV`]:
//! it stops after the first chunk of the transfer until the test has made
//! its change, so the change lands mid-transfer every time, not when a
//! race happens to allow it.
//!
//! Each ends with the receiver holding the old version whole, the new one
//! whole, or nothing, and never a mix at the final path; a failed run
//! names the path; the next run delivers what the sender holds then.

use std::path::PathBuf;
use std::time::Duration;

use crate::cluster::{Cluster, peer_report};
use crate::common::{bytes, temporaries, wait_for_file, write};

const MIB: usize = 1 << 20;

/// What is done to the file being sent.
#[derive(Clone, Copy, Debug)]
enum Change {
    Delete,
    Grow,
    RenameOver,
    RewriteInPlace,
}

/// a sends an 8 MiB file to b; after its first chunk, `change` is made
/// to the file on a.
fn changed_while_sent(change: Change) {
    let mut c = Cluster::new(2);
    let hook = c.root().join("hook");
    std::fs::create_dir_all(&hook).unwrap();
    let hook_s = hook.to_str().unwrap().to_owned();
    c.start_with_env("a", &[], &[(snapsync::peer::PAUSE_ENV, &hook_s)]);
    c.start("b");
    let old = bytes(1, 8 * MIB);
    let path = c.path("a", "big.bin");
    write(&path, &old);
    write(&c.path("a", "other.txt"), b"goes along");
    let new = match change {
        Change::Delete => None,
        Change::Grow => Some([old.as_slice(), &bytes(2, 2 * MIB)].concat()),
        Change::RenameOver | Change::RewriteInPlace => Some(bytes(3, 8 * MIB)),
    };

    let bg = c.spawn("a", "sync", &["--json", "sync"]);
    wait_for_file(&hook.join("paused"), Duration::from_secs(60));
    match change {
        Change::Delete => std::fs::remove_file(&path).unwrap(),
        Change::Grow => {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
            f.write_all(&new.as_ref().unwrap()[old.len()..]).unwrap();
        }
        Change::RenameOver => {
            let tmp = c.path("a", "big.bin.new");
            std::fs::write(&tmp, new.as_ref().unwrap()).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        Change::RewriteInPlace => {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all(new.as_ref().unwrap()).unwrap();
        }
    }
    std::fs::write(hook.join("resume"), b"").unwrap();
    let out = bg.wait(Duration::from_secs(120));
    let v = out.json();
    let report = peer_report(&v, "b");
    let got = std::fs::read(c.path("b", "big.bin")).ok();
    let held = match &got {
        None => "nothing",
        Some(d) if *d == old => "the old version whole",
        Some(d) if Some(d) == new.as_ref() => "the new version whole",
        Some(d) => panic!("{change:?}: b holds a mixed big.bin of {} bytes: {v:#}", d.len()),
    };
    eprintln!(
        "{change:?} after the first chunk: the sync exited {}, b holds {held}; problems on b: {}; here: {}; error: {}",
        out.code, report["pushed_problems"], report["pulled"]["problems"], report["error"]
    );
    assert!(out.code == 0 || out.code == 1, "{}\n{}", out.stdout, out.stderr);
    if out.code == 1 {
        // A failure names the file.
        assert!(out.stdout.contains("big.bin"), "the failure does not name big.bin: {v:#}");
    }
    assert_eq!(std::fs::read(c.path("b", "other.txt")).unwrap(), b"goes along");
    assert_eq!(temporaries(&c.tree("b")), Vec::<PathBuf>::new(), "temporary files left on b");

    // The next run delivers what a holds now.
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(std::fs::read(c.path("b", "big.bin")).ok(), new);
    c.assert_all_same();
    c.assert_status_clean("a");
    c.assert_status_clean("b");
}

#[test]
fn a_file_deleted_while_it_is_sent_is_never_torn_and_the_next_run_deletes_it() {
    changed_while_sent(Change::Delete);
}

#[test]
fn a_file_growing_while_it_is_sent_is_never_torn_and_the_next_run_delivers_it() {
    changed_while_sent(Change::Grow);
}

#[test]
fn a_file_renamed_over_while_it_is_sent_is_never_torn_and_the_next_run_delivers_it() {
    changed_while_sent(Change::RenameOver);
}

#[test]
fn a_file_rewritten_while_it_is_sent_is_never_torn_and_the_next_run_delivers_it() {
    changed_while_sent(Change::RewriteInPlace);
}
