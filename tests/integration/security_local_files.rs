//! Issue 7, items 3, 4, 6 and 7 (SPEC §3, §6): the stores and state are
//! private to their owner; group keys, node keys and pins others may read,
//! and configs others may change, are refused with the `chmod` that fixes
//! them; special files as config or key are refused at once; host-name
//! case neither splits a pin nor makes a node unreachable.

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cluster::{BIN, Cluster, peer_report};
use crate::common::{Node, as_nobody, write};
use crate::local::is_root;

/// Bound on commands that must fail at once (a blocking read would hang).
const PROMPT: Duration = Duration::from_secs(20);

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Every directory and file at and below `root` (links not followed).
fn entries(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if std::fs::symlink_metadata(&out[i]).unwrap().is_dir() {
            let mut below: Vec<PathBuf> = std::fs::read_dir(&out[i]).unwrap().map(|e| e.unwrap().path()).collect();
            out.append(&mut below);
        }
        i += 1;
    }
    out
}

/// The entries at and below `root` with a permission bit for group or
/// others.
fn loose(root: &Path) -> Vec<String> {
    entries(root)
        .into_iter()
        .filter_map(|p| {
            let md = std::fs::symlink_metadata(&p).unwrap();
            (!md.file_type().is_symlink() && md.mode() & 0o077 != 0)
                .then(|| format!("{} {:o}", p.display(), md.mode() & 0o7777))
        })
        .collect()
}

/// Gives every directory 0755 and every file 0644 at and below `root`: a
/// store as it was made before stores were private.
fn loosen(root: &Path) {
    for p in entries(root) {
        let md = std::fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            chmod(&p, 0o755);
        } else if md.is_file() {
            chmod(&p, 0o644);
        }
    }
}

/// The files and directories of `paths` an unprivileged user can read or
/// list; `None` when no such user can be had (not root).
fn readable_by_nobody(paths: &[PathBuf]) -> Option<Vec<String>> {
    let mut sh = as_nobody("sh")?;
    let script = r#"for f; do if [ -d "$f" ]; then ls "$f" >/dev/null 2>&1 && echo "$f"; else head -c1 "$f" >/dev/null 2>&1 && echo "$f"; fi; done; exit 0"#;
    let out = sh.args(["-c", script, "sh"]).args(paths).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Some(String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect())
}

/// The node's state directory, `STATE/CONFIG_NAME/HOST`.
fn state_dir(n: &Node) -> PathBuf {
    let cfg = std::path::absolute(n.path("snapsync.cfg")).unwrap();
    n.path("state").join(snapsync::cli::config_name_of_file(&cfg)).join(&n.name)
}

/// `check` of node `n` run under umask `mask`.
fn check_with_umask(n: &Node, mask: &str) {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("umask {mask} && exec \"$0\" \"$@\"")])
        .arg(BIN)
        .arg("--config")
        .arg(n.path("snapsync.cfg"))
        .args(["-N", &n.name, "-D"])
        .arg(n.path("state"))
        .arg("check")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "check: {}", String::from_utf8_lossy(&out.stderr));
}

/// Item 3: after a check, the state directory and the chunk store hold
/// nothing a local user can read, whatever umask the command ran under;
/// a store made with 0755/0644 modes is tightened when it is opened again.
/// The backup directory itself, which other configs may share, keeps its
/// mode.
#[test]
fn stores_and_state_are_readable_by_their_owner_only() {
    let n = Node::new("a", 3, "");
    // Every directory above the stores is open to all, so only the stores'
    // own modes can keep a local user out.
    std::fs::create_dir_all(n.path("backup")).unwrap();
    std::fs::create_dir_all(n.path("state")).unwrap();
    for p in [n.dir.path(), &n.path("backup"), &n.path("state")] {
        chmod(p, 0o755);
    }
    write(&n.tree().join("secret"), b"root's private bytes");
    chmod(&n.tree().join("secret"), 0o600);
    check_with_umask(&n, "000");

    let state = state_dir(&n);
    let stores: Vec<PathBuf> = std::fs::read_dir(n.path("backup")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(stores.len(), 1, "one chunk store: {stores:?}");
    let chunks = stores[0].clone();
    chmod(state.parent().unwrap(), 0o755);
    for root in [&state, &chunks] {
        assert_eq!(loose(root), Vec::<String>::new(), "under umask 000, {}", root.display());
    }
    assert_eq!(
        std::fs::metadata(n.path("backup")).unwrap().mode() & 0o777,
        0o755,
        "the backup directory keeps its mode"
    );
    let all: Vec<PathBuf> = entries(&state).into_iter().chain(entries(&chunks)).collect();
    match readable_by_nobody(&all) {
        Some(readable) => assert_eq!(readable, Vec::<String>::new()),
        None => eprintln!("not root: skipped reading the stores as another user"),
    }

    // A store from before the fix: everything 0755/0644.
    loosen(n.path("state").as_path());
    loosen(&chunks);
    if let Some(readable) = readable_by_nobody(&all) {
        assert!(readable.iter().any(|p| p.contains("db")), "the probe reads a loose store: {readable:?}");
    }
    write(&n.tree().join("more"), b"a change, so the stores are written again");
    check_with_umask(&n, "022");
    for root in [&state, &chunks] {
        assert_eq!(loose(root), Vec::<String>::new(), "reopened {}", root.display());
    }
    let all: Vec<PathBuf> = entries(&state).into_iter().chain(entries(&chunks)).collect();
    if let Some(readable) = readable_by_nobody(&all) {
        assert_eq!(readable, Vec::<String>::new());
    }
}

/// Item 4: a group key that group or others may read or write stops every
/// command with status 2, a message naming the file and `chmod 600 FILE`,
/// and no state written.
#[test]
fn a_group_key_others_can_read_is_refused_with_the_chmod_that_fixes_it() {
    let n = Node::new("a", 0, "");
    write(&n.tree().join("f"), b"x");
    let key = n.path("key");
    for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
        chmod(&key, mode);
        let out = n.cmd().arg("check").timeout(PROMPT).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "mode {mode:o}: {stderr}");
        assert!(stderr.contains(&format!("chmod 600 {}", key.display())), "mode {mode:o}: {stderr}");
        assert!(!n.path("state").exists(), "mode {mode:o}: state was written");
    }
    chmod(&key, 0o600);
    n.cmd().arg("check").timeout(PROMPT).assert().success();
}

/// Item 4: a config file, or a file it includes, that group or others may
/// change (it names the commands actions run as root) is refused with
/// status 2 and `chmod go-w FILE`. Readable by all is fine.
#[test]
fn a_config_others_can_change_is_refused_with_the_chmod_that_fixes_it() {
    let n = Node::new("a", 0, "");
    let cfg = n.path("snapsync.cfg");
    for mode in [0o664, 0o646, 0o666] {
        chmod(&cfg, mode);
        let out = n.cmd().arg("check").timeout(PROMPT).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "mode {mode:o}: {stderr}");
        assert!(stderr.contains(&format!("chmod go-w {}", cfg.display())), "mode {mode:o}: {stderr}");
    }
    chmod(&cfg, 0o644);
    n.cmd().arg("check").timeout(PROMPT).assert().success();

    let inc = n.path("extra.cfg");
    std::fs::write(&inc, "# nothing yet\n").unwrap();
    chmod(&inc, 0o666);
    n.edit_config(|t| format!("config {};\n{t}", inc.display()));
    let out = n.cmd().arg("check").timeout(PROMPT).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("{}:1:8", cfg.display())), "names the config statement: {stderr}");
    assert!(stderr.contains(&format!("chmod go-w {}", inc.display())), "{stderr}");
    chmod(&inc, 0o644);
    n.cmd().arg("check").timeout(PROMPT).assert().success();
}

/// Item 4: a config or key owned by another user than the one running (nor
/// root) is refused, whatever its mode.
#[test]
fn config_and_key_of_another_user_are_refused() {
    if !is_root() {
        eprintln!("skipped: not root, cannot give a file to another user");
        return;
    }
    let n = Node::new("a", 0, "");
    for file in [n.path("key"), n.path("snapsync.cfg")] {
        std::os::unix::fs::chown(&file, Some(crate::common::NOBODY), None).unwrap();
        let out = n.cmd().arg("check").timeout(PROMPT).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", file.display());
        assert!(stderr.contains(&format!("chown 0 {}", file.display())), "{stderr}");
        std::os::unix::fs::chown(&file, Some(0), None).unwrap();
    }
    n.cmd().arg("check").timeout(PROMPT).assert().success();
}

/// Item 4: the node key and the pin file in the state directory are
/// refused as the group key is: `serve` exits 2, `sync` reports the
/// `chmod 600` that fixes the file.
#[test]
fn node_key_and_pins_others_can_read_are_refused() {
    let mut c = Cluster::new(2);
    c.start_all();
    write(&c.path("a", "f"), b"first");
    c.sync_ok("a");
    c.stop("b");
    let net = c.node_state_dir("b").join("net");
    let node_key = net.join("node-key.pem");
    chmod(&node_key, 0o644);
    let out = c.run("b", &["serve"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains(&format!("chmod 600 {}", node_key.display())), "{}", out.stderr);
    chmod(&node_key, 0o600);
    c.start("b");

    let pins = c.node_state_dir("a").join("net/pins");
    chmod(&pins, 0o640);
    write(&c.path("a", "g"), b"second");
    let out = c.run("a", &["sync"]);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert_ne!(out.code, 0, "{said}");
    assert!(said.contains(&format!("chmod 600 {}", pins.display())), "{said}");
    assert!(!c.path("b", "g").exists());
    chmod(&pins, 0o600);
    c.sync_ok("a");
    assert_eq!(std::fs::read(c.path("b", "g")).unwrap(), b"second");
}

/// Item 6: `/dev/zero` or a FIFO as the config, an included config or the
/// group key is refused at once (status 2, the file named), and so is a
/// config larger than the bound; nothing reads forever or blocks.
#[test]
fn special_files_as_config_or_key_are_refused_at_once() {
    let n = Node::new("a", 0, "");
    let fifo = n.path("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let refused = |args: &[&OsStr], named: &Path, what: &str| {
        let mut cmd = assert_cmd::Command::new(BIN);
        cmd.env_remove("RUST_LOG").args(args).args(["-N", "a", "-D"]).arg(n.path("state")).arg("check");
        // A hang is killed at the bound and fails the status check.
        let out = cmd.timeout(PROMPT).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", named.display());
        assert!(stderr.contains(&named.display().to_string()) && stderr.contains(what), "{stderr}");
    };
    for special in [Path::new("/dev/zero"), fifo.as_path()] {
        refused(&[OsStr::new("--config"), special.as_os_str()], special, "not a regular file");

        let inc = n.path("includes-special.cfg");
        std::fs::write(&inc, format!("config {};\n", special.display())).unwrap();
        refused(&[OsStr::new("--config"), inc.as_os_str()], special, "not a regular file");

        let cfg = n.path("special-key.cfg");
        let text = std::fs::read_to_string(n.path("snapsync.cfg")).unwrap();
        let key_line = format!("key {}/key;", n.dir.path().display());
        assert!(text.contains(&key_line));
        std::fs::write(&cfg, text.replace(&key_line, &format!("key {};", special.display()))).unwrap();
        refused(&[OsStr::new("--config"), cfg.as_os_str()], special, "not a regular file");
    }

    let big = n.path("big.cfg");
    std::fs::File::create(&big).unwrap().set_len(snapsync::trusted::MAX_CONFIG_BYTES + 1).unwrap();
    refused(&[OsStr::new("--config"), big.as_os_str()], &big, "bytes allowed");
}

/// Item 7: a node run as `-N App1`-style mixed case, listed in lower case,
/// is reachable and syncs both ways; its state directory and every pin use
/// the canonical name.
#[test]
fn a_mixed_case_node_name_syncs_both_ways() {
    let mut c = Cluster::new(2);
    c.name_as("a", "A");
    c.start_all();
    write(&c.path("a", "from-a"), b"a's");
    let v = c.sync_ok("a");
    assert!(peer_report(&v, "b")["error"].is_null(), "{v:#}");
    assert_eq!(std::fs::read(c.path("b", "from-a")).unwrap(), b"a's");
    write(&c.path("b", "from-b"), b"b's");
    let v = c.sync_ok("b");
    assert!(peer_report(&v, "a")["error"].is_null(), "{v:#}");
    assert_eq!(std::fs::read(c.path("a", "from-b")).unwrap(), b"b's");
    let state = c.node_state_dir("a");
    assert!(state.join("db").is_dir() && !state.with_file_name("A").exists(), "{}", state.display());
    for (node, peer) in [("a", "b"), ("b", "a")] {
        let pins = std::fs::read_to_string(c.node_state_dir(node).join("net/pins")).unwrap();
        let hosts: Vec<&str> =
            pins.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split_whitespace().next()).collect();
        assert_eq!(hosts, [peer], "{node}'s pins: {pins}");
    }
}

/// Item 7: a holder of the group key presents `A` (its own node key) while
/// `a` is pinned: the pin of `a` refuses it, no second pin is made, and
/// nothing it sent is applied.
#[test]
fn an_upper_case_name_does_not_get_around_the_pin() {
    let mut c = Cluster::new(2);
    c.add_outsider("d");
    // d's own config lists a and b only, with d's tree as a's: d poses as A.
    let text = c.config_text(&["a", "b"], &c.key_path());
    let a_tree = format!("on a: {};", c.tree("a").display());
    assert!(text.contains(&a_tree), "{text}");
    let text = text.replace(&a_tree, &format!("on a: {};", c.tree("d").display()));
    c.use_own_config("d", &text);
    c.name_as("d", "A");
    c.start("a");
    c.start("b");
    write(&c.path("a", "f"), b"group file");
    c.sync_ok("a");
    let b_pins = c.node_state_dir("b").join("net/pins");
    let pinned = std::fs::read_to_string(&b_pins).unwrap();

    write(&c.path("d", "planted"), b"intruder's file");
    let before = c.snapshot("b");
    let (code, v) = c.sync("d", &[]);
    assert_eq!(code, 1, "{v:#}");
    let err = peer_report(&v, "b")["error"].as_str().unwrap_or_default().to_owned();
    assert!(err.contains("snapsync trust --peer a"), "{v:#}");
    assert_eq!(c.snapshot("b"), before, "b applied what the intruder sent");
    assert_eq!(std::fs::read_to_string(&b_pins).unwrap(), pinned, "b's pins changed");
}

/// The umask this test process (and the daemons it starts) runs with.
fn process_umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).expect("a Umask line");
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
}

/// Item 3's private umask is for the stores only: under `ignore mod`, a
/// directory and a file a sync creates get the modes the umask the daemon
/// was started with gives, not owner-only ones.
#[test]
fn under_ignore_mod_synced_entries_get_the_started_with_umask_not_the_private_one() {
    let mut c = Cluster::new(2);
    let text = std::fs::read_to_string(c.config_path()).unwrap();
    std::fs::write(c.config_path(), format!("ignore mod;\n{text}")).unwrap();
    c.start_all();
    write(&c.path("a", "dir/sub/f"), b"content");
    c.sync_ok("a");
    let mask = process_umask();
    assert_ne!(mask & 0o077, 0o077, "the test needs a umask that lets others read (found {mask:o})");
    let mode = |p: &str| std::fs::metadata(c.path("b", p)).unwrap().mode() & 0o777;
    assert_eq!(mode("dir"), 0o777 & !mask);
    assert_eq!(mode("dir/sub"), 0o777 & !mask);
    assert_eq!(mode("dir/sub/f"), 0o666 & !mask);
}

/// Item 7: a state directory named before host names were canonical (`A`
/// for `-N A`) keeps being used: the node's records and key are not lost
/// to a new, empty `a`.
#[test]
fn a_state_directory_named_in_upper_case_keeps_being_used() {
    let n = Node::new("a", 0, "");
    write(&n.tree().join("f"), b"tracked");
    n.cmd().arg("check").assert().success();
    let state = state_dir(&n);
    let legacy = state.with_file_name("A");
    std::fs::rename(&state, &legacy).unwrap();
    let v = n.json(&["ls"]);
    assert!(v.to_string().contains("tree/f\""), "the records were found: {v}");
    assert!(!state.exists(), "a new state directory was made");
    assert!(legacy.join("db").is_dir());
}
