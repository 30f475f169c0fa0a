//! The local engine's acceptance scenarios (check, ls, generations,
//! restore, verify, gc, keygen, config errors).

use std::os::unix::fs::PermissionsExt;

use predicates::prelude::*;

use crate::common::{Node, bytes, copy_tree, snapshot, write};

#[test]
fn config_error_names_file_line_and_column_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.cfg");
    std::fs::write(&cfg, "group g {\n  host a;\n  include /tmp/x;\n  frobnicate yes;\n}\n").unwrap();
    let mut cmd = assert_cmd::Command::cargo_bin("snapsync").unwrap();
    cmd.arg("--config").arg(&cfg).args(["-N", "a", "-D"]).arg(dir.path().join("state")).arg("check");
    cmd.assert().code(2).stderr(predicate::str::contains("bad.cfg:4:"));
    assert!(!dir.path().join("state").exists(), "a config error must change nothing");
}

#[test]
fn unknown_command_line_option_exits_2() {
    let mut cmd = assert_cmd::Command::cargo_bin("snapsync").unwrap();
    cmd.arg("--no-such-option").assert().code(2);
}

#[test]
fn check_then_ls_lists_every_file() {
    let n = Node::new("a", 0, "");
    write(&n.tree().join("x/y/one.txt"), b"one");
    write(&n.tree().join("two.bin"), &bytes(2, 300_000));
    std::fs::create_dir_all(n.tree().join("empty")).unwrap();
    std::os::unix::fs::symlink("two.bin", n.tree().join("link")).unwrap();
    n.cmd().arg("check").assert().success();
    let ls = n.json(&["ls"]);
    let paths: Vec<String> = ls["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().strip_prefix(n.tree().to_str().unwrap()).unwrap().to_owned())
        .collect();
    assert_eq!(paths, ["", "/empty", "/link", "/two.bin", "/x", "/x/y", "/x/y/one.txt"]);
    let link = &ls["entries"][2];
    assert_eq!(link["kind"], "symlink");
    assert_eq!(link["target"], "two.bin");
}

#[test]
fn excluded_paths_are_not_tracked() {
    let n = Node::new("a", 0, "exclude *.tmp;\n  exclude %s/tree/cache;");
    // The config helper cannot know the dir; rewrite the placeholder.
    n.edit_config(|t| t.replace("%s", n.dir.path().to_str().unwrap()));
    write(&n.tree().join("keep.txt"), b"k");
    write(&n.tree().join("skip.tmp"), b"s");
    write(&n.tree().join("cache/deep/file"), b"c");
    n.cmd().arg("check").assert().success();
    let ls = n.json(&["ls"]);
    let names: Vec<&str> = ls["entries"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert!(names.iter().any(|p| p.ends_with("/keep.txt")));
    assert!(!names.iter().any(|p| p.contains("skip.tmp") || p.contains("cache")), "{names:?}");
}

#[test]
fn no_change_check_reads_no_file() {
    let n = Node::new("a", 0, "");
    for i in 0..50 {
        write(&n.tree().join(format!("d{}/f{i}", i % 5)), &bytes(i, 1000 + i as usize));
    }
    let first = n.json(&["check"]);
    assert_eq!(first["groups"][0]["stats"]["files_read"], 50);
    // Make the files look old so none is racily clean.
    age_tree(&n.tree());
    n.json(&["check"]);
    let again = n.json(&["check"]);
    assert_eq!(again["groups"][0]["changed"], false);
    assert_eq!(again["groups"][0]["stats"]["files_read"], 0);
}

/// Sets every file's mtime an hour back.
fn age_tree(root: &std::path::Path) {
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for e in std::fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        let md = std::fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            age_tree(&p);
        } else if md.is_file() {
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_times(std::fs::FileTimes::new().set_modified(old)).unwrap();
        }
    }
}

/// A tracked file that cannot be opened gives no error on a no-change
/// check: proof that the check does not open it. Root can open anything,
/// so the second check runs as an unprivileged user through setpriv.
#[test]
fn no_change_check_does_not_open_unreadable_file() {
    let n = Node::new("a", 0, "");
    n.edit_config(|t| format!("ignore uid gid;\n{t}"));
    write(&n.tree().join("secret"), b"hidden");
    write(&n.tree().join("plain"), b"visible");
    age_tree(&n.tree());
    let root = is_root();
    if root {
        // Everything the unprivileged run touches must be its own, but
        // for the config and key, which must be root's or the runner's:
        // root's command refuses them as another user's.
        chown_r(n.dir.path(), 65534, 65534);
        for f in [n.path("snapsync.cfg"), n.path("key")] {
            std::os::unix::fs::chown(f, Some(0), Some(0)).unwrap();
        }
    }
    std::fs::set_permissions(n.tree().join("secret"), std::fs::Permissions::from_mode(0o000)).unwrap();
    if !root {
        // Without privileges the first check cannot read it either: record
        // it while still readable, then take the permission away.
        std::fs::set_permissions(n.tree().join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    n.cmd().arg("check").assert().success();
    let mut cmd = if root {
        chown_r(&n.path("state"), 65534, 65534);
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        cmd.arg(assert_cmd::cargo::cargo_bin("snapsync"));
        cmd
    } else {
        std::fs::set_permissions(n.tree().join("secret"), std::fs::Permissions::from_mode(0o000)).unwrap();
        // The chmod moved the ctime: the next check notices and reads it,
        // which fails; this branch can only show the failing read.
        std::process::Command::new(assert_cmd::cargo::cargo_bin("snapsync"))
    };
    cmd.arg("--config").arg(n.path("snapsync.cfg")).args(["-N", "a", "-D"]).arg(n.path("state"));
    cmd.args(["--json", "check"]);
    let out = cmd.output().unwrap();
    if !root {
        assert_eq!(out.status.code(), Some(1));
        return;
    }
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["groups"][0]["stats"]["files_read"], 0, "{v}");
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
    // A real change to the file is noticed, and its read fails the run.
    std::fs::set_permissions(n.tree().join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(n.tree().join("secret"), b"changed!").unwrap();
    std::fs::set_permissions(n.tree().join("secret"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "an unreadable changed file fails the run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("secret"));
}

pub use crate::common::is_root;

fn chown_r(p: &std::path::Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
    if std::fs::symlink_metadata(p).unwrap().is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            chown_r(&e.unwrap().path(), uid, gid);
        }
    }
}

#[test]
fn generations_and_restore_to_reproduce_the_first_tree() {
    let n = Node::new("a", 3, "");
    write(&n.tree().join("a/keep.txt"), b"keep");
    write(&n.tree().join("a/edit.txt"), b"before the edit");
    write(&n.tree().join("b/delete.bin"), &bytes(7, 200_000));
    write(&n.tree().join("big.bin"), &bytes(8, 3 << 20));
    std::fs::set_permissions(n.tree().join("a/keep.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink("a/keep.txt", n.tree().join("l")).unwrap();
    std::fs::create_dir_all(n.tree().join("empty")).unwrap();
    let first_tree = snapshot(&n.tree());
    n.cmd().arg("check").assert().success();

    write(&n.tree().join("a/edit.txt"), b"after the edit, longer");
    std::fs::remove_file(n.tree().join("b/delete.bin")).unwrap();
    n.cmd().arg("check").assert().success();

    let gens = n.json(&["generations"]);
    let list = gens["generations"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{gens}");
    let (g1, g2) = (list[0]["id"].as_u64().unwrap(), list[1]["id"].as_u64().unwrap());
    assert!(g1 < g2);
    for g in list {
        for k in ["id", "time", "cause", "entries", "bytes", "added_bytes"] {
            assert!(!g[k].is_null(), "{k} missing in {g}");
        }
    }
    assert_eq!(list[0]["entries"], 9);
    assert!(list[1]["added_bytes"].as_u64().unwrap() < 1000, "an edit of a small file adds little: {}", list[1]);

    let out = n.path("restored");
    n.cmd().args(["restore", "--generation", &g1.to_string(), "--to"]).arg(&out).assert().success();
    let restored_root = out.join(n.tree().strip_prefix("/").unwrap());
    assert_eq!(snapshot(&restored_root), first_tree);
    // The live tree was not touched.
    assert_eq!(std::fs::read(n.tree().join("a/edit.txt")).unwrap(), b"after the edit, longer");
}

#[test]
fn restore_in_place_records_the_current_state_first_and_can_be_undone() {
    let n = Node::new("a", 5, "");
    write(&n.tree().join("f.txt"), b"version one");
    write(&n.tree().join("d/g.txt"), b"g");
    n.cmd().arg("check").assert().success();
    let v1 = snapshot(&n.tree());
    write(&n.tree().join("f.txt"), b"version two");
    write(&n.tree().join("new.txt"), b"added later");
    std::fs::remove_file(n.tree().join("d/g.txt")).unwrap();
    // No check in between: the restore must record this state itself.
    let v2 = snapshot(&n.tree());
    let r = n.json(&["restore", "--generation", "1"]);
    assert_eq!(snapshot(&n.tree()), v1, "the tree is exactly generation 1 again");
    let before = r["before"].as_u64().expect("the state before the restore is recorded");
    n.cmd().args(["restore", "--generation", &before.to_string()]).assert().success();
    assert_eq!(snapshot(&n.tree()), v2, "undoing the restore gives back the later state");
}

#[test]
fn restore_of_one_path_leaves_the_rest_alone() {
    let n = Node::new("a", 5, "");
    write(&n.tree().join("one/f"), b"1");
    write(&n.tree().join("two/f"), b"2");
    n.cmd().arg("check").assert().success();
    write(&n.tree().join("one/f"), b"1 changed");
    write(&n.tree().join("two/f"), b"2 changed");
    n.cmd().args(["restore", "--generation", "1"]).arg(n.tree().join("one")).assert().success();
    assert_eq!(std::fs::read(n.tree().join("one/f")).unwrap(), b"1");
    assert_eq!(std::fs::read(n.tree().join("two/f")).unwrap(), b"2 changed");
}

#[test]
fn verify_reports_a_file_corrupted_with_size_and_mtime_restored() {
    let n = Node::new("a", 2, "");
    write(&n.tree().join("good.txt"), b"fine");
    write(&n.tree().join("bad.bin"), &bytes(3, 100_000));
    n.cmd().arg("check").assert().success();
    n.cmd().arg("verify").assert().success();

    let path = n.tree().join("bad.bin");
    let md = std::fs::metadata(&path).unwrap();
    let mut data = std::fs::read(&path).unwrap();
    data[50_000] ^= 0xff;
    std::fs::write(&path, &data).unwrap();
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_times(std::fs::FileTimes::new().set_modified(md.modified().unwrap())).unwrap();
    drop(f);

    n.cmd()
        .arg("verify")
        .assert()
        .code(1)
        .stdout(predicate::str::contains("bad.bin"))
        .stdout(predicate::str::contains("good.txt").not());
}

#[test]
fn gc_keeps_only_the_configured_generations() {
    let n = Node::new("a", 2, "");
    for i in 0..4u64 {
        write(&n.tree().join("f"), &bytes(i, 50_000));
        n.cmd().arg("check").assert().success();
    }
    let gens = n.json(&["generations"]);
    let ids: Vec<u64> = gens["generations"].as_array().unwrap().iter().map(|g| g["id"].as_u64().unwrap()).collect();
    // f holds its fourth content now; its two previous versions are in
    // generations 2 and 3, and 4 is the newest. Generation 1 holds only
    // the first content, a third previous version: dropped.
    assert_eq!(ids, [2, 3, 4], "every run collects what no path needs");
    // Dropped generations' chunks are gone: restoring the kept ones works,
    // and verify finds every kept generation complete.
    n.cmd().arg("verify").assert().success();
    let r = n.json(&["gc"]);
    assert_eq!(r["generations_dropped"].as_array().unwrap().len(), 0);
}

#[test]
fn keygen_writes_a_csync2_style_key_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    let mut c = assert_cmd::Command::cargo_bin("snapsync").unwrap();
    c.arg("keygen").arg(&key).assert().success();
    let text = std::fs::read_to_string(&key).unwrap();
    let line = text.trim_end();
    assert_eq!(line.len(), 64);
    assert!(line.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_'));
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let mut c = assert_cmd::Command::cargo_bin("snapsync").unwrap();
    c.arg("keygen").arg(&key).assert().code(2);
    assert_eq!(std::fs::read_to_string(&key).unwrap(), text);
}

#[test]
fn second_writer_is_refused_with_a_clear_message() {
    let n = Node::new("a", 0, "");
    let _held = snapsync::store::Store::open(&n.path("state").join(state_subdir(&n)).join("a")).unwrap();
    n.cmd()
        .env("SNAPSYNC_LOCK_WAIT", "0")
        .arg("check")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("in use by another snapsync process"));
}

/// SPEC §4.15: a command started while another holds the state (two syncs
/// from cron at once, no daemon) waits for it instead of failing.
/// Regression: the second run exited 1, "in use by another snapsync
/// process (pid )".
#[test]
fn second_writer_waits_for_the_first() {
    let n = Node::new("a", 0, "");
    write(&n.tree().join("f"), b"x");
    let state = n.path("state").join(state_subdir(&n)).join("a");
    let held = snapsync::store::Store::open(&state).unwrap();
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_snapsync"));
    second.arg("--config").arg(n.path("snapsync.cfg")).args(["-N", "a", "-D"]).arg(n.path("state"));
    let mut child =
        second.env_remove("RUST_LOG").args(["-v", "check"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // Wait (bounded) until the second command says it waits: releasing the
    // lock before it tried would show nothing.
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("waiting for the snapsync process")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("the second command never said it waits; it printed:\n{}", seen.join("\n"));
            }
        }
    }
    assert!(child.try_wait().unwrap().is_none(), "the second command is still waiting");
    drop(held);
    // Bounded: it exits once the lock is free (it polls every 100 ms).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the second command did not finish after the lock was released");
        }
        // Polling the exit of a child: no event to wait on without reaping.
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(status.success(), "{}\n{}", seen.join("\n"), rest.join("\n"));
}

/// The config-name directory the binary uses for `--config FILE`.
fn state_subdir(n: &Node) -> String {
    let abs = n.path("snapsync.cfg");
    format!("snapsync-{}", snapsync::hash::Hash::of(abs.as_os_str().as_encoded_bytes()).short())
}

#[test]
fn demo_runs_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = assert_cmd::Command::cargo_bin("snapsync").unwrap();
    c.args(["demo", "--dir"]).arg(dir.path().join("demo"));
    // Three daemons, a first sync, a change, a conflict settled by force.
    c.assert()
        .success()
        .stdout(predicate::str::contains("alpha: gamma's version"))
        .stdout(predicate::str::contains("beta: gamma's version"))
        .stdout(predicate::str::contains("assets with beta: in sync"));
}

/// Without `--dir` the demo works in a directory of its own and removes
/// it at the end; the commands it prints can be pasted (full paths).
#[test]
fn demo_without_a_dir_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = assert_cmd::Command::cargo_bin("snapsync").unwrap();
    c.env("TMPDIR", tmp.path()).arg("demo");
    let out = c.assert().success().get_output().stdout.clone();
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains(" --config "), "pasteable commands: {out}");
    assert!(out.contains("Removed "), "{out}");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "the demo left {left:?}");
}

#[test]
fn check_of_one_path_records_only_that_path() {
    let n = Node::new("a", 0, "");
    write(&n.tree().join("one/f"), b"1");
    write(&n.tree().join("two/f"), b"2");
    n.cmd().arg("check").assert().success();
    write(&n.tree().join("one/f"), b"1 changed");
    write(&n.tree().join("two/f"), b"2 changed");
    // Old enough that neither is racily clean (read again on every run).
    age_tree(&n.tree());
    let r = n.json(&["check", n.tree().join("one").to_str().unwrap()]);
    assert_eq!(r["groups"][0]["stats"]["files_read"], 1);
    let ls = n.json(&["ls", n.tree().join("two").to_str().unwrap()]);
    let two =
        ls["entries"].as_array().unwrap().iter().find(|e| e["path"].as_str().unwrap().ends_with("/two/f")).unwrap();
    assert_eq!(two["size"], 1, "two/f was not looked at");
    // A full check afterwards sees the rest, and agrees with a fresh scan.
    let full = n.json(&["check"]);
    assert_eq!(full["groups"][0]["stats"]["files_read"], 1);
    let fresh = Node::new("b", 0, "");
    std::fs::remove_dir_all(fresh.tree()).unwrap();
    copy_tree(&n.tree(), &fresh.tree());
    fresh.cmd().arg("check").assert().success();
    // The include roots differ in name (so do the group root hashes); the
    // trees below them must hash alike.
    let tree_hash = |node: &Node| node.json(&["ls"])["entries"][0]["hash"].clone();
    assert_eq!(tree_hash(&n), tree_hash(&fresh), "the same tree gives the same hash, whatever was scanned when");
}

#[test]
fn deletion_type_change_and_recreation_are_tracked() {
    let n = Node::new("a", 0, "");
    write(&n.tree().join("d/x"), b"x");
    write(&n.tree().join("f"), b"file");
    n.cmd().arg("check").assert().success();
    // A directory becomes a file, a file becomes a directory.
    std::fs::remove_dir_all(n.tree().join("d")).unwrap();
    write(&n.tree().join("d"), b"now a file");
    std::fs::remove_file(n.tree().join("f")).unwrap();
    write(&n.tree().join("f/inner"), b"now a dir");
    n.cmd().arg("check").assert().success();
    let ls = n.json(&["ls"]);
    let kinds: Vec<(String, String)> = ls["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let p = e["path"].as_str().unwrap().strip_prefix(n.tree().to_str().unwrap()).unwrap().to_owned();
            (p, e["kind"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("".to_owned(), "dir".to_owned()),
            ("/d".to_owned(), "file".to_owned()),
            ("/f".to_owned(), "dir".to_owned()),
            ("/f/inner".to_owned(), "file".to_owned())
        ]
    );
    // Deleting everything and re-creating it gives back the first root.
    let before = n.json(&["check"])["groups"][0]["root"].clone();
    let saved = snapshot(&n.tree());
    let copy = n.path("copy");
    copy_tree(&n.tree(), &copy);
    std::fs::remove_dir_all(n.tree()).unwrap();
    let gone = n.json(&["check"]);
    assert_ne!(gone["groups"][0]["root"], before);
    copy_tree(&copy, &n.tree());
    assert_eq!(snapshot(&n.tree()), saved);
    assert_eq!(n.json(&["check"])["groups"][0]["root"], before);
}

#[test]
fn ignore_mod_leaves_permissions_out_of_the_tree() {
    let n = Node::new("a", 0, "");
    n.edit_config(|t| format!("ignore mod;\n{t}"));
    write(&n.tree().join("f"), b"x");
    let first = n.json(&["check"])["groups"][0]["root"].clone();
    std::fs::set_permissions(n.tree().join("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let second = n.json(&["check"]);
    assert_eq!(second["groups"][0]["root"], first);
    assert_eq!(second["groups"][0]["changed"], false);
}

#[test]
fn special_files_are_reported_and_skipped() {
    let n = Node::new("a", 0, "");
    write(&n.tree().join("f"), b"x");
    let fifo = n.tree().join("pipe");
    let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let out = n.cmd().args(["--json", "check"]).output().unwrap();
    assert!(out.status.success(), "a special file is a warning, not a failure");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1);
    assert!(problems[0]["path"].as_str().unwrap().ends_with("/pipe"));
    assert_eq!(problems[0]["severity"], "warning");
}

/// SPEC §4.14: a file written while it is scanned is never recorded
/// half-read. A writer appends to a file for as long as the check runs;
/// whatever the check recorded (or skipped) must be a state the file
/// really had: its recorded size and content hash must match that prefix
/// of the final file.
#[test]
fn file_growing_during_check_is_recorded_consistently_or_skipped() {
    let n = Node::new("a", 0, "");
    let path = n.tree().join("growing.log");
    write(&path, &bytes(1, 4 << 20));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), path.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
            let mut i = 0u64;
            // Bounded: at most 64 MiB of appends even if the check hangs.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 16_384 {
                f.write_all(&bytes(i + 2, 4096)).unwrap();
                i += 1;
            }
        })
    };
    let out = n.cmd().args(["--json", "check"]).output().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ls = n.json(&["ls", path.to_str().unwrap()]);
    let Some(entry) = ls["entries"].as_array().unwrap().first() else {
        return; // skipped with a warning: allowed
    };
    let size = entry["size"].as_u64().unwrap() as usize;
    let data = std::fs::read(&path).unwrap();
    assert!(size <= data.len());
    let expected = snapsync::chunk::content_hash(&snapsync::chunk::chunk_bytes(&data[..size]));
    assert_eq!(entry["hash"].as_str().unwrap(), expected.to_hex(), "recorded hash matches the first {size} bytes");
}

#[test]
fn dropping_an_include_forgets_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("one/sub/f"), b"1");
    write(&d.join("two/sub/f"), b"2");
    let cfg = d.join("c.cfg");
    let config = |includes: &str| {
        std::fs::write(&cfg, format!("group g {{\n host a b;\n key {}/key;\n {includes}\n}}\n", d.display())).unwrap();
        snapsync::config::load(&cfg).unwrap()
    };
    let both = config(&format!("include {0}/one;\n include {0}/two;", d.display()));
    let engine = crate::common::open_engine(&both, "a", &d.join("state"));
    engine.check(&engine.store.writer_blocking(), &[], &snapsync::progress::Quiet, None).unwrap();
    drop(engine);
    let one = config(&format!("include {}/one;", d.display()));
    let engine = crate::common::open_engine(&one, "a", &d.join("state"));
    engine.check(&engine.store.writer_blocking(), &[], &snapsync::progress::Quiet, None).unwrap();
    let dirs: Vec<String> = engine
        .store
        .all_dir_records("g")
        .map(|r| String::from_utf8(r.unwrap().0).unwrap())
        .filter(|p| !p.is_empty())
        .collect();
    assert!(dirs.iter().all(|p| p.contains("/one")), "records of the dropped include remain: {dirs:?}");
    // Leaving the included set is not a deletion: nothing on disk changes.
    assert!(d.join("two/sub/f").exists());
}

#[test]
fn lowering_backup_generations_prunes_on_the_next_check() {
    let n = Node::new("a", 4, "");
    for i in 0..3u64 {
        write(&n.tree().join("f"), &bytes(i, 1000));
        n.cmd().arg("check").assert().success();
    }
    n.edit_config(|t| t.replace("backup-generations 4;", "backup-generations 1;"));
    // Nothing changed in the tree; the run still applies the new limit.
    let r = n.json(&["check"]);
    assert_eq!(r["groups"][0]["changed"], false);
    let ids: Vec<u64> =
        n.json(&["generations"])["generations"].as_array().unwrap().iter().map(|g| g["id"].as_u64().unwrap()).collect();
    // The newest, and the one holding f's single previous version.
    assert_eq!(ids, [2, 3]);
}
