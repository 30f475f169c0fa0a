//! Issue 7 item 2, SPEC §6 and §7: a local user who can write into a
//! synced directory gets nothing from planting files under the names a
//! receiver uses, and an interrupted transfer resumes from chunks kept in
//! the state directory, not from a file found in the tree.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use snapsync::chunk::{chunk_bytes, content_hash};
use snapsync::hash::Hash;

use crate::cluster::{Cluster, peer_report};
use crate::common::{NOBODY, as_nobody, bytes, is_root, traversable_to, write};

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// SPEC §6: an unprivileged user hard-links a file of theirs into an
/// upload directory under the old predictable part name and under other
/// `.snapsync-*` names, and pre-creates a temporary they keep open for
/// writing. The sync places a fresh root-owned file; the outside file keeps
/// its content, mode and links, and the held handle reaches nothing synced.
#[test]
fn sync_never_writes_into_or_places_planted_files() {
    if !is_root() {
        eprintln!("skipped: acting as an unprivileged local user needs root (setpriv)");
        return;
    }
    let mut c = Cluster::new(2);
    c.start_all();
    // An upload directory anyone can write into, on both hosts.
    write(&c.path("a", "up/readme"), b"drop files here");
    chmod(&c.path("a", "up"), 0o777);
    c.sync_ok("a");
    let up_b = c.path("b", "up");
    assert_eq!(std::fs::metadata(&up_b).unwrap().mode() & 0o777, 0o777);
    // The user must reach it: the cluster's directories traversable.
    if !traversable_to(&up_b, c.root().parent().unwrap()) {
        return;
    }
    let home = c.root().join("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
    chmod(&home, 0o755);

    let data = bytes(77, 600 * 1024);
    let content = content_hash(&chunk_bytes(&data));
    let old_part = format!(".snapsync-{}-{}.part", Hash::of(b"new.bin").short(), content.short());
    let outside = home.join("secret");
    let script = format!(
        "set -e; cd '{up}'; printf outside > '{out}'; chmod 600 '{out}'; ln '{out}' '{old_part}'; \
         ln '{out}' .snapsync-0123456789abcdef0123456789abcdef.tmp; ln '{out}' .snapsync-planted; \
         : > .snapsync-held.tmp",
        up = up_b.display(),
        out = outside.display(),
    );
    let out = as_nobody("sh").expect("root checked above").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "the planting script as uid {NOBODY}: {}", String::from_utf8_lossy(&out.stderr));
    let before = std::fs::metadata(&outside).unwrap();
    assert_eq!((before.uid(), before.nlink()), (NOBODY, 4));
    // The user keeps a write handle on the temporary they made.
    let mut held = std::fs::OpenOptions::new().write(true).open(up_b.join(".snapsync-held.tmp")).unwrap();

    write(&c.path("a", "up/new.bin"), &data);
    chmod(&c.path("a", "up/new.bin"), 0o755);
    c.sync_ok("a");

    let after = std::fs::metadata(&outside).unwrap();
    assert!(std::fs::read(&outside).unwrap() == b"outside", "synced content was written into the outside file");
    assert_eq!(after.mode() & 0o7777, 0o600, "the outside file's mode was changed");
    assert_eq!((after.uid(), after.gid(), after.nlink()), (NOBODY, NOBODY, 4));
    let placed = std::fs::symlink_metadata(up_b.join("new.bin")).unwrap();
    assert!(std::fs::read(up_b.join("new.bin")).unwrap() == data, "b's new.bin is not a's");
    assert_ne!(placed.ino(), after.ino(), "the outside file was placed in the tree");
    assert_eq!((placed.uid(), placed.nlink(), placed.mode() & 0o7777), (0, 1, 0o755));
    let held_md = std::fs::metadata(up_b.join(".snapsync-held.tmp")).unwrap();
    assert_eq!((held_md.len(), held_md.uid()), (0, NOBODY), "the planted temporary was filled or taken over");
    held.write_all(b"rewritten by the user").unwrap();
    assert!(std::fs::read(up_b.join("new.bin")).unwrap() == data, "the user's handle reaches new.bin");
    // The planted names are the user's: left alone, never tracked.
    assert!(up_b.join(&old_part).exists());
    let (sa, sb) = (c.snapshot("a"), c.snapshot("b"));
    let key = Path::new("up/new.bin");
    assert!(sa[key] == sb[key], "b's new.bin differs from a's (content, mode or mtime)");
}

/// SPEC §7: chunks a receiver kept in its state directory before an
/// interruption are taken from there; only the others are fetched, and a
/// damaged one is fetched again. The staged chunks go once the file is
/// placed.
#[test]
fn sync_resumes_from_chunks_staged_in_the_state_directory() {
    let mut c = Cluster::new(2);
    c.start_all();
    let data = bytes(5, 3 << 20);
    let list = chunk_bytes(&data);
    let content = content_hash(&list);
    write(&c.path("a", "big.bin"), &data);
    c.check("a");
    assert!(list.len() >= 8, "{} chunks", list.len());
    // What an interrupted run left: the first half of the chunks, one of
    // them damaged since.
    let staged = c.node_state_dir("b").join("incoming/chunks").join(content.to_hex());
    std::fs::create_dir_all(&staged).unwrap();
    let half = list.len() / 2;
    let mut off = 0usize;
    for (i, r) in list.iter().enumerate() {
        let chunk = &data[off..off + r.len as usize];
        off += r.len as usize;
        if i < half {
            let bytes = if i == 1 { b"damaged".to_vec() } else { chunk.to_vec() };
            std::fs::write(staged.join(r.hash.to_hex()), bytes).unwrap();
        }
    }
    let (code, v) = c.sync("b", &["--peer", "a"]);
    assert_eq!(code, 0, "{v:#}");
    let p = &peer_report(&v, "a")["pulled"];
    assert_eq!(p["chunks_local"].as_u64().unwrap(), half as u64 - 1, "{v:#}");
    assert_eq!(p["chunks_fetched"].as_u64().unwrap(), (list.len() - half + 1) as u64, "{v:#}");
    assert!(std::fs::read(c.path("b", "big.bin")).unwrap() == data, "b's big.bin is not a's");
    assert!(!staged.exists(), "the staged chunks outlived the placed file");
    c.assert_all_same();
}
