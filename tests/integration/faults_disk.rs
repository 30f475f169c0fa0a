//! Issue 12, item 2, SPEC §7: a receiver whose disk fails it. A file that
//! does not fit its tree, a full state directory (the state database and
//! the journal of temporary files), a full chunk store (its
//! `backup-directory`), and a target directory it may not write
//! (immutable: root ignores modes, not `chattr +i`). Each
//! fails the sync with a message naming the peer, the path and the cause;
//! nothing is half-applied or left behind taking space; once the cause is
//! gone the next sync finishes the work.
//!
//! (A tree filled by many small files is `sync_report`'s test; a full
//! state or backup disk under `check` is `store_damage`'s.)

use std::path::{Path, PathBuf};

use crate::cluster::{Cluster, Out, Setup, peer_report, problems_on};
use crate::common::{Tmpfs, bytes, temporaries, write};

const MIB: usize = 1 << 20;

/// `sync` on `name` in text, then with `--json`: both outputs.
fn failing_sync(c: &Cluster, name: &str) -> (Out, serde_json::Value) {
    let text = c.run(name, &["sync"]);
    assert_eq!(text.code, 1, "the sync should fail:\n{}\n{}", text.stdout, text.stderr);
    let (code, v) = c.sync(name, &[]);
    assert_eq!(code, 1, "{v:#}");
    (text, v)
}

/// Bytes in use on the filesystem holding `dir`.
fn used(dir: &Path) -> u64 {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    (s.f_blocks - s.f_bfree) as u64 * s.f_frsize as u64
}

/// A file larger than the free space of b's tree: the sync fails naming b,
/// the path and the full disk; b keeps no part of it (no temporary file,
/// the space is free again, the final path absent); with room the next
/// sync delivers it.
#[test]
fn a_file_larger_than_the_receivers_free_space_leaves_nothing_behind() {
    let mut c = Cluster::new(2);
    let Some(small) = Tmpfs::mount(&c.tree("b"), "8m") else { return };
    c.start_all();
    write(&c.path("a", "small.txt"), b"fits");
    c.sync_ok("a");
    let before = used(&c.tree("b"));
    write(&c.path("a", "big/too-big.bin"), &bytes(7, 12 * MIB));
    let (text, v) = failing_sync(&c, "a");
    let listed = problems_on(&v, "b").0;
    eprintln!("b's problems: {listed:#?}\n{}", text.stdout);
    assert!(
        listed.iter().any(|p| p.contains("big/too-big.bin") && p.contains("No space left")),
        "b's problems name the file and the full disk: {listed:#?}"
    );
    assert!(
        text.stdout.lines().any(|l| l.contains("not applied on b: ") && l.contains("too-big.bin")),
        "the text output names b and the file:\n{}",
        text.stdout
    );
    assert!(!c.path("b", "big/too-big.bin").exists(), "a part of the file reached its final path");
    assert_eq!(temporaries(&c.tree("b")), Vec::<PathBuf>::new(), "temporary files left in b's tree");
    let after = used(&c.tree("b"));
    eprintln!("b's tree: {before} bytes used before, {after} after two failed syncs of a 12 MiB file");
    assert!(after < before + MIB as u64, "the failed transfer still takes space on b: {before} -> {after}");

    small.resize("32m");
    c.sync_ok("a");
    c.assert_all_same();
    c.assert_status_clean("a");
}

/// b's state directory full: the chunks a pushes cannot be staged there,
/// nor the state database written. The sync fails naming b and the full
/// disk, b's tree holds no part of the new files, and once space is freed
/// the next sync (same daemons) finishes the work.
#[test]
fn a_full_state_directory_on_the_receiver_fails_the_sync_and_the_next_one_converges() {
    let mut c = Cluster::new(2);
    let Some(fs) = Tmpfs::mount(&c.state("b"), "16m") else { return };
    c.start_all();
    write(&c.path("a", "first.txt"), b"before the disk filled");
    c.sync_ok("a");
    let filler = fs.fill();
    let names: Vec<String> = (0..6).map(|i| format!("new/f{i}.bin")).collect();
    for (i, n) in names.iter().enumerate() {
        write(&c.path("a", n), &bytes(40 + i as u64, 2 * MIB));
    }
    let (text, v) = failing_sync(&c, "a");
    eprintln!("{}\n{v:#}", text.stdout);
    let listed = problems_on(&v, "b").0;
    let error = peer_report(&v, "b")["error"].as_str().unwrap_or_default().to_owned();
    // The message names the full disk: b's state directory, not its tree
    // (which has room).
    let state = c.state("b").display().to_string();
    assert!(
        listed.iter().any(|p| p.contains("No space left") && p.contains(&state))
            || (error.contains("No space left") && error.contains(&state)),
        "the report for b does not say its state directory is full: {v:#}"
    );
    assert!(text.stdout.contains(" b: ") || text.stdout.contains("on b:"), "{}", text.stdout);
    nothing_partial_then_converges(&c, &names, filler);
}

/// b's chunk store (its `backup-directory`, on a filesystem of its own)
/// full while a pushes new files: the sync fails naming b, the store and
/// the full disk; b's tree holds no part of any file; once space is freed
/// the next sync (same daemons) converges and b's store verifies.
#[test]
fn a_full_chunk_store_on_the_receiver_fails_the_sync_and_the_next_one_converges() {
    let mut c = Cluster::with(Setup::nodes(2).backups(3));
    let shared = c.root().join("backup");
    let own = c.root().join("b").join("backup");
    std::fs::create_dir_all(&own).unwrap();
    let text = c.config_text(&["a", "b"], &c.key_path());
    let needle = format!("backup-directory {};", shared.display());
    assert!(text.contains(&needle), "{text}");
    c.use_own_config("b", &text.replace(&needle, &format!("backup-directory {};", own.display())));
    let Some(fs) = Tmpfs::mount(&own, "16m") else { return };
    c.start_all();
    write(&c.path("a", "first.txt"), b"before the disk filled");
    c.sync_ok("a");
    let filler = fs.fill();
    let names: Vec<String> = (0..3).map(|i| format!("new/f{i}.bin")).collect();
    for (i, n) in names.iter().enumerate() {
        write(&c.path("a", n), &bytes(60 + i as u64, 2 * MIB));
    }
    let (code, v) = c.sync("a", &[]);
    let text = c.run("a", &["sync"]);
    eprintln!("sync with b's chunk store full: exit {code}\n{}", text.stdout);
    assert_eq!(code, 1, "{v:#}");
    // The message names b, the full store and the cause.
    let (listed, _) = problems_on(&v, "b");
    let error = peer_report(&v, "b")["error"].as_str().unwrap_or_default().to_owned();
    let store = own.display().to_string();
    assert!(
        listed.iter().chain([&error]).any(|p| p.contains("No space left") && p.contains(&store)),
        "the report for b does not say its chunk store is full: {v:#}"
    );
    assert!(text.stdout.contains("with b: failed: peer b: ") || text.stdout.contains("on b: "), "{}", text.stdout);
    nothing_partial_then_converges(&c, &names, filler);
    let verify = c.run("b", &["verify"]);
    assert_eq!(verify.code, 0, "verify on b after the full disk:\n{}{}", verify.stdout, verify.stderr);
}

/// Clears the immutable flag again, whatever the test did.
struct Immutable(PathBuf);

impl Immutable {
    /// `chattr +i dir`; `None`, with the reason printed, where that cannot
    /// be done.
    fn set(dir: &Path) -> Option<Immutable> {
        match std::process::Command::new("chattr").arg("+i").arg(dir).output() {
            Ok(o) if o.status.success() => Some(Immutable(dir.to_path_buf())),
            Ok(o) => {
                eprintln!("skipped: chattr +i: {}", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run chattr: {e}");
                None
            }
        }
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// A target directory b may not write into: the sync fails naming b, the
/// path and the refusal; the files b could write arrive; the directory
/// is untouched; once writable the next sync finishes the work.
#[test]
fn a_target_directory_the_receiver_may_not_write_fails_naming_the_path() {
    let mut c = Cluster::new(2);
    c.start_all();
    write(&c.path("a", "locked/old.txt"), b"old");
    write(&c.path("a", "open/old.txt"), b"old");
    c.sync_ok("a");
    let Some(lock) = Immutable::set(&c.path("b", "locked")) else { return };
    let before = c.snapshot("b");
    write(&c.path("a", "locked/new.txt"), b"new file");
    write(&c.path("a", "locked/old.txt"), b"changed");
    write(&c.path("a", "open/new.txt"), b"new file");
    let (text, v) = failing_sync(&c, "a");
    let listed = problems_on(&v, "b").0;
    eprintln!("b's problems: {listed:#?}");
    for p in ["locked/new.txt", "locked/old.txt"] {
        assert!(
            listed.iter().any(|x| x.contains(p) && x.contains("not permitted")),
            "b's problems do not name {p} and the refusal: {listed:#?}"
        );
    }
    assert!(text.stdout.contains("not applied on b: "), "{}", text.stdout);
    // What b could write arrived; the locked directory is as it was.
    assert_eq!(std::fs::read(c.path("b", "open/new.txt")).unwrap(), b"new file");
    let now = c.snapshot("b");
    for (p, seen) in &before {
        if p.starts_with("locked") {
            assert_eq!(now.get(p), Some(seen), "{} changed", p.display());
        }
    }
    assert!(!c.path("b", "locked/new.txt").exists());

    drop(lock);
    c.sync_ok("a");
    c.assert_all_same();
    c.assert_status_clean("a");
}

/// After a sync that b could not apply for lack of space: b holds no part
/// of any of `names` (each is absent or whole) and no temporary; once
/// `filler` is removed, the next sync from a converges.
fn nothing_partial_then_converges(c: &Cluster, names: &[String], filler: PathBuf) {
    for n in names {
        if let Ok(d) = std::fs::read(c.path("b", n)) {
            assert_eq!(d, std::fs::read(c.path("a", n)).unwrap(), "b holds a part of {n}");
        }
    }
    assert_eq!(temporaries(&c.tree("b")), Vec::<PathBuf>::new(), "temporary files left in b's tree");

    std::fs::remove_file(filler).unwrap();
    c.sync_ok("a");
    c.assert_all_same();
    c.assert_status_clean("a");
    c.assert_status_clean("b");
}
