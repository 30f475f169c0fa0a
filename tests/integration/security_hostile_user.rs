//! Issue 12 item 4, SPEC §6 and §7: a hostile local user. An unprivileged
//! user who can write into a synced directory of the receiving node plants
//! symlinks, fifos and a hard link at the names the daemon is about to
//! write, and keeps planting links and fifos under temporary names while
//! the sync runs. The root daemon writes nothing outside the tree, changes
//! no file it did not create, never blocks on a fifo, reports the paths it
//! did not take, and its store stays intact. (Planted hard links under
//! temporary names: `security_part_files`.)

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, Setup, changes, peer_report, problems_on};
use crate::common::{NOBODY, Outside, as_nobody, is_root, temporaries, traversable_to, write};

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs `script` with `sh -c` as the unprivileged user; it must succeed.
fn as_user(script: &str) {
    let out = as_nobody("sh").expect("root checked").args(["-c", script]).output().unwrap();
    assert!(out.status.success(), "as uid {NOBODY}: {script}\n{}", String::from_utf8_lossy(&out.stderr));
}

/// A user plants, in an upload directory of the receiving node b, a
/// symlink to a root-only file outside the tree where a's new file will
/// go, a fifo where another will go, a symlink to an outside directory
/// where a's new directory will go, 128 links and fifos under temporary
/// names, and more while the sync runs; the file the sync updates is a
/// hard link to the outside file. The sync ends at once, writes nothing
/// outside (content, mode, mtime, entries), leaves every planted entry as
/// it was, reports each name as a conflict or a problem, and both stores
/// verify.
#[test]
fn a_local_user_planting_links_and_fifos_gets_nothing_written_outside() {
    if !is_root() {
        eprintln!("skipped: acting as an unprivileged local user needs root (setpriv)");
        return;
    }
    let mut c = Cluster::with(Setup::nodes(2).backups(2));
    c.start_all();
    // An upload directory anyone can write into, on both hosts, with a
    // file the sync will update.
    write(&c.path("a", "up/updated"), b"first version");
    chmod(&c.path("a", "up"), 0o777);
    c.sync_ok("a");
    let up = c.path("b", "up");
    assert_eq!(std::fs::metadata(&up).unwrap().mode() & 0o777, 0o777);
    if !traversable_to(&up, c.root().parent().unwrap()) {
        return;
    }
    // Root's files outside every tree: a shadow-like file (0600) in a
    // directory.
    let shadow = c.root().join("outside/shadow");
    write(&shadow, b"root:secret");
    chmod(&shadow, 0o600);
    chmod(shadow.parent().unwrap(), 0o755);
    let outside = Outside::new(shadow.parent().unwrap());

    // The user plants, where a's new entries will go: a symlink to the
    // shadow file, a fifo, and a symlink to the outside directory where a
    // directory will be made; and, under temporary names, links and fifos.
    let (o, s) = (outside.dir.display(), shadow.display());
    as_user(&format!(
        "set -e; cd '{up}'; ln -s '{s}' new-file; mkfifo fifo-target; ln -s '{o}' new-dir; \
         for i in $(seq 1 64); do n=$(printf '%032x' $i); ln -s '{s}' .snapsync-$n.tmp; mkfifo .snapsync-f$n.tmp; done",
        up = up.display()
    ));
    // At the name of the file the sync updates, a hard link to the shadow
    // file (made as root: with fs.protected_hardlinks the user could not,
    // without it they could).
    std::fs::remove_file(up.join("updated")).unwrap();
    std::fs::hard_link(&shadow, up.join("updated")).unwrap();
    // The state directory is out of the user's reach.
    let state = c.node_state_dir("b");
    let out = as_nobody("sh").unwrap().args(["-c", &format!("ls '{}'", state.display())]).output().unwrap();
    assert!(!out.status.success(), "the user can list b's state directory {}", state.display());

    // While a's changes reach b, the user keeps planting links and fifos
    // under fresh temporary names (until the sync ends, at most 2000).
    write(&c.path("a", "up/new-file"), b"a's new file");
    write(&c.path("a", "up/fifo-target"), b"a's file where b has a fifo");
    write(&c.path("a", "up/new-dir/inside"), b"a's file in a new directory");
    write(&c.path("a", "up/updated"), b"second version");
    let stop = c.root().join("stop-planting");
    let planter = as_nobody("sh")
        .unwrap()
        .args([
            "-c",
            &format!(
                "cd '{up}'; i=0; while [ ! -e '{stop}' ] && [ $i -lt 2000 ]; do i=$((i+1)); \
                 n=$(head -c16 /dev/urandom | od -An -tx1 | tr -d ' \\n'); \
                 ln -s '{s}' .snapsync-$n.tmp 2>/dev/null; mkfifo .snapsync-p$n.tmp 2>/dev/null; done; echo $i",
                up = up.display(),
                stop = stop.display()
            ),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let (code, v) = c.sync("a", &[]);
    let took = started.elapsed();
    std::fs::write(&stop, b"").unwrap();
    let planted = planter.wait_with_output().unwrap();
    eprintln!(
        "sync took {took:?} (exit {code}); the user planted {} rounds meanwhile\n{v:#}",
        String::from_utf8_lossy(&planted.stdout).trim()
    );

    // Nothing outside changed: the shadow file keeps its content, mode
    // and mtime, the outside directory has no new entry.
    outside.assert_untouched();
    assert_eq!(std::fs::metadata(&shadow).unwrap().uid(), 0);
    // The fifo did not hold the sync up: well within the reply timeout.
    assert!(took < Duration::from_secs(60), "the sync took {took:?}");
    // What the user planted is theirs: left in place, never followed,
    // never written into or taken over.
    let kind = |n: &str| {
        let md = std::fs::symlink_metadata(up.join(n)).unwrap();
        let t = md.file_type();
        let kind = if t.is_symlink() {
            "link"
        } else if t.is_fifo() {
            "fifo"
        } else {
            "other"
        };
        (kind, md.uid())
    };
    assert_eq!(kind("new-file"), ("link", NOBODY));
    assert_eq!(kind("new-dir"), ("link", NOBODY));
    assert_eq!(kind("fifo-target"), ("fifo", NOBODY));
    let linked = std::fs::symlink_metadata(up.join("updated")).unwrap();
    assert_eq!(linked.ino(), std::fs::metadata(&shadow).unwrap().ino(), "the hard link was replaced");
    assert_eq!(std::fs::read(&shadow).unwrap(), b"root:secret");
    // The store is intact on both nodes, and no temporary of the daemon's
    // is left (those there are the user's).
    for n in ["a", "b"] {
        let out = c.run(n, &["verify"]);
        assert_eq!(out.code, 0, "verify on {n}: {}\n{}", out.stdout, out.stderr);
    }
    assert!(temporaries(&up).iter().all(|t| std::fs::symlink_metadata(t).unwrap().uid() == NOBODY));
    // The sync says so, by path: the names that are links or a hard link
    // now are conflicts (b's entries changed under the daemon), the fifo a
    // problem.
    assert_ne!(code, 0, "{v:#}");
    let mut conflicts: Vec<String> = changes(&peer_report(&v, "b")["pushed"])
        .into_iter()
        .filter(|(action, _)| action == "conflict")
        .map(|(_, path)| path)
        .collect();
    conflicts.sort();
    conflicts.dedup();
    assert_eq!(conflicts, ["%tree%/up/new-dir", "%tree%/up/new-file", "%tree%/up/updated"], "{v:#}");
    let (problems, _) = problems_on(&v, "b");
    let fifo = up.join("fifo-target").display().to_string();
    assert!(problems.iter().any(|p| p.starts_with(&format!("{fifo}: "))), "{problems:?}");
}
