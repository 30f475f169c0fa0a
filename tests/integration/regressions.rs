//! Regression tests, each named after the defect it guards against.

use std::os::unix::fs::PermissionsExt;

use crate::common::{Node, bytes, write};

fn old_mtime(path: &std::path::Path) {
    let t = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_modified(t))
        .unwrap();
}

#[test]
fn restore_never_deletes_through_a_symlinked_directory() {
    let n = Node::new("a", 3, "");
    write(&n.path("outside/victim"), b"must survive");
    std::os::unix::fs::symlink("../outside", n.tree().join("link")).unwrap();
    n.cmd().arg("check").assert().success();
    let target = n.tree().join("link/victim");
    n.cmd().args(["restore", "--generation", "1"]).arg(&target).assert().code(1);
    assert_eq!(std::fs::read(n.path("outside/victim")).unwrap(), b"must survive");
}

#[test]
fn restore_never_writes_through_a_directory_replaced_by_a_symlink() {
    let n = Node::new("a", 3, "");
    write(&n.tree().join("d/f"), b"old");
    n.cmd().arg("check").assert().success();
    std::fs::remove_dir_all(n.tree().join("d")).unwrap();
    std::fs::create_dir_all(n.path("outside")).unwrap();
    std::os::unix::fs::symlink(n.path("outside"), n.tree().join("d")).unwrap();
    // The dry run refuses what the restore would refuse.
    n.cmd().args(["restore", "--dry-run", "--generation", "1"]).arg(n.tree().join("d/f")).assert().code(1);
    n.cmd().args(["restore", "--generation", "1"]).arg(n.tree().join("d/f")).assert().code(1);
    assert!(!n.path("outside/f").exists());
}

#[test]
fn restore_in_place_never_writes_a_path_excluded_since() {
    let n = Node::new("a", 3, "");
    write(&n.tree().join("x.log"), b"v1");
    write(&n.tree().join("keep"), b"k1");
    n.cmd().arg("check").assert().success();
    n.edit_config(|t| t.replace("other;", "other;\n  exclude *.log;"));
    write(&n.tree().join("x.log"), b"v2");
    write(&n.tree().join("keep"), b"k2");
    n.cmd().args(["restore", "--generation", "1"]).assert().success();
    assert_eq!(std::fs::read(n.tree().join("x.log")).unwrap(), b"v2");
    assert_eq!(std::fs::read(n.tree().join("keep")).unwrap(), b"k1");
}

#[test]
fn whole_restore_leaves_an_include_the_generation_did_not_know() {
    let n = Node::new("a", 3, "");
    write(&n.tree().join("f"), b"1");
    n.cmd().arg("check").assert().success();
    let extra = format!("include {};", n.path("tree2").display());
    n.edit_config(|t| t.replace("other;", &format!("other;\n  {extra}")));
    write(&n.path("tree2/data"), b"precious");
    // Generation 1 stays for f's previous version.
    write(&n.tree().join("f"), b"2");
    n.cmd().arg("check").assert().success();
    n.cmd().args(["restore", "--generation", "1"]).assert().success();
    assert_eq!(std::fs::read(n.path("tree2/data")).unwrap(), b"precious");
    assert_eq!(std::fs::read(n.tree().join("f")).unwrap(), b"1");
}

#[test]
fn two_configs_sharing_a_backup_directory_keep_their_own_chunks() {
    let a = Node::new("a", 2, "");
    let b = Node::new("a", 2, "");
    // Point b's backups at a's backup directory.
    b.edit_config(|t| t.replace(&b.path("backup").display().to_string(), &a.path("backup").display().to_string()));
    write(&a.tree().join("fa"), &bytes(1, 50_000));
    write(&b.tree().join("fb"), &bytes(2, 50_000));
    a.cmd().arg("check").assert().success();
    b.cmd().arg("check").assert().success();
    a.cmd().arg("gc").assert().success();
    b.cmd().arg("verify").assert().success();
    let out = b.path("out");
    b.cmd().args(["restore", "--generation", "1", "--to"]).arg(&out).assert().success();
}

#[test]
fn moving_the_backup_directory_stores_every_file_again() {
    let n = Node::new("a", 3, "");
    write(&n.tree().join("old"), &bytes(3, 30_000));
    old_mtime(&n.tree().join("old"));
    n.cmd().arg("check").assert().success();
    n.edit_config(|t| t.replace(&n.path("backup").display().to_string(), &n.path("backup2").display().to_string()));
    let r = n.json(&["check"]);
    assert_eq!(r["groups"][0]["stats"]["files_read"], 1, "the unchanged file is stored in the new directory");
    n.cmd().arg("verify").assert().success();
    let gens = n.json(&["generations"]);
    let last = gens["generations"].as_array().unwrap().last().unwrap()["id"].as_u64().unwrap();
    n.cmd().args(["restore", "--generation", &last.to_string(), "--to"]).arg(n.path("out")).assert().success();
}

#[test]
fn turning_backups_on_records_a_generation_of_the_unchanged_tree() {
    let n = Node::new("a", 0, "");
    write(&n.tree().join("f"), b"data");
    old_mtime(&n.tree().join("f"));
    n.cmd().arg("check").assert().success();
    n.edit_config(|t| {
        t.replace(
            "other;",
            &format!("other;\n  backup-directory {};\n  backup-generations 2;", n.path("backup").display()),
        )
    });
    n.cmd().arg("check").assert().success();
    assert_eq!(n.json(&["generations"])["generations"].as_array().unwrap().len(), 1);
}

#[test]
fn a_group_dropped_and_restored_in_the_config_is_scanned_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("one/f"), b"1");
    write(&d.join("two/f"), b"2");
    let cfg = d.join("c.cfg");
    let group =
        |name: &str| format!("group {name} {{\n host a b;\n key {0}/key;\n include {0}/{name};\n}}\n", d.display());
    let run = |text: String| {
        std::fs::write(&cfg, text).unwrap();
        let config = snapsync::config::load(&cfg).unwrap();
        let engine = crate::common::open_engine(&config, "a", &d.join("state"));
        engine.check(&engine.store.writer_blocking(), &[], &snapsync::progress::Quiet, None).unwrap()
    };
    run(group("one") + &group("two"));
    write(&d.join("one/f"), b"1 changed");
    run(group("one"));
    run(group("one") + &group("two"));
    write(&d.join("one/f"), b"1 changed again");
    write(&d.join("two/f"), b"2 changed");
    let r = run(group("one") + &group("two"));
    assert!(r.problems.is_empty(), "{:?}", r.problems);
}

#[test]
fn verify_does_not_call_a_deleted_file_damage() {
    let n = Node::new("a", 0, "");
    write(&n.tree().join("a"), b"a");
    n.cmd().arg("check").assert().success();
    std::fs::remove_file(n.tree().join("a")).unwrap();
    n.cmd().arg("verify").assert().success();
}

#[test]
fn ls_json_survives_a_file_name_that_is_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let n = Node::new("a", 0, "");
    write(&n.tree().join(std::ffi::OsStr::from_bytes(b"bad\xffname")), b"x");
    n.cmd().arg("check").assert().success();
    let ls = n.json(&["ls"]);
    assert!(ls["entries"].as_array().unwrap().iter().any(|e| e["path"].as_str().unwrap().contains("bad")));
}

#[test]
fn restore_with_ignore_mod_keeps_modes() {
    let n = Node::new("a", 3, "");
    n.edit_config(|t| format!("ignore mod;\n{t}"));
    write(&n.tree().join("d/f"), b"one");
    std::fs::set_permissions(n.tree().join("d"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(n.tree().join("d/f"), std::fs::Permissions::from_mode(0o644)).unwrap();
    n.cmd().arg("check").assert().success();
    write(&n.tree().join("d/f"), b"two");
    n.cmd().args(["restore", "--generation", "1"]).assert().success();
    let mode = |p: &str| std::fs::metadata(n.tree().join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(std::fs::read(n.tree().join("d/f")).unwrap(), b"one");
    assert_eq!(mode("d"), 0o755);
    assert_eq!(mode("d/f"), 0o644);
}

#[test]
fn snapsync_temporary_files_are_never_tracked() {
    let n = Node::new("a", 0, "");
    write(&n.tree().join(".snapsync-leftover"), b"half");
    write(&n.tree().join("real"), b"r");
    n.cmd().arg("check").assert().success();
    let ls = n.json(&["ls"]);
    assert!(!ls["entries"].as_array().unwrap().iter().any(|e| e["path"].as_str().unwrap().contains(".snapsync-")));
}

/// A restore killed between a file's sync and its rename left its
/// temporary in the tree for good: restore did not record its temporaries
/// in the journal, and nothing swept it. The next command now removes it.
#[test]
fn a_restore_killed_before_its_rename_leaves_no_temporary_behind() {
    use std::os::unix::process::ExitStatusExt;
    let n = Node::new("a", 3, "");
    write(&n.tree().join("f"), b"first");
    n.cmd().arg("check").assert().success();
    write(&n.tree().join("f"), b"second, longer");
    n.cmd().arg("check").assert().success();
    let temps = || -> Vec<String> {
        std::fs::read_dir(n.tree())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".snapsync-"))
            .collect()
    };
    let out =
        n.cmd().env(snapsync::killpoint::ENV, "place.synced").args(["restore", "--generation", "1"]).output().unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(temps().len(), 1, "the kill leaves the temporary being renamed");
    assert_eq!(std::fs::read(n.tree().join("f")).unwrap(), b"second, longer");
    n.cmd().arg("check").assert().success();
    assert_eq!(temps(), Vec::<String>::new());
}
