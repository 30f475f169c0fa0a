//! Retention as csync2 promised it (issue 10): `backup-generations N` keeps
//! every path's N previous versions however many other paths change, and
//! drops the generations nothing needs; `history`, `restore --dry-run` and
//! `generations --diff`.

use std::collections::BTreeSet;

use predicates::prelude::*;

use crate::cluster::{Cluster, Setup};
use crate::common::{Node, snapshot, write};

fn ids(n: &Node) -> Vec<u64> {
    n.json(&["generations"])["generations"].as_array().unwrap().iter().map(|g| g["id"].as_u64().unwrap()).collect()
}

fn version(k: u32) -> Vec<u8> {
    format!("keep.txt version {k}\n").into_bytes()
}

#[test]
fn a_path_keeps_its_previous_versions_however_many_other_paths_change() {
    let n = Node::new("a", 3, "");
    let keep = n.tree().join("keep.txt");
    write(&keep, &version(0));
    n.cmd().arg("check").assert().success(); // generation 1
    // 200 more runs, each changing noise.txt; keep.txt changes in 4 of
    // them.
    const RUNS: u64 = 200;
    const KEEP_CHANGES: [u64; 4] = [40, 90, 140, 190];
    let mut k = 0;
    for i in 0..RUNS {
        write(&n.tree().join("noise.txt"), format!("run {i}").as_bytes());
        if KEEP_CHANGES.contains(&i) {
            k += 1;
            write(&keep, &version(k));
        }
        n.cmd().arg("check").assert().success(); // generation i + 2
    }
    // keep.txt holds version 4; the newest generations holding versions
    // 3, 2 and 1 are those of the runs before its last three changes.
    // noise.txt's previous versions are in the three runs before the
    // last, which is the newest.
    let gen_of_run = |i: u64| i + 2;
    let before_changes = KEEP_CHANGES[1..].iter().map(|c| c - 1);
    let mut want: Vec<u64> = before_changes.chain([RUNS - 4, RUNS - 3, RUNS - 2, RUNS - 1]).map(gen_of_run).collect();
    want.sort_unstable();
    assert_eq!(ids(&n), want, "only the generations some path needs stay");
    let gens = n.json(&["generations"]);
    for g in gens["generations"].as_array().unwrap() {
        assert!(!g["kept"].as_array().unwrap().is_empty(), "every listed generation says why it is kept: {g}");
    }
    let newest = &gens["generations"][6];
    assert_eq!(newest["kept"][0]["reason"], "newest");
    let for_keep = &gens["generations"][0];
    assert_eq!(for_keep["kept"][0]["reason"], "versions", "{for_keep}");
    assert_eq!(for_keep["kept"][0]["example"], keep.to_str().unwrap());

    // Each of the three previous versions comes back.
    let h = n.json(&["history", keep.to_str().unwrap()]);
    let versions = h["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 4, "versions 1 to 4: {h}");
    for (v, want_k) in versions.iter().zip(1..) {
        assert_eq!(v["deleted"], false);
        let generation = v["generation"].as_u64().unwrap().to_string();
        let out = n.path(&format!("restored-{want_k}"));
        n.cmd().args(["restore", "--generation", &generation, "--to"]).arg(&out).arg(&keep).assert().success();
        let copy = out.join(keep.strip_prefix("/").unwrap());
        assert_eq!(std::fs::read(copy).unwrap(), version(want_k), "generation {generation}");
    }
}

#[test]
fn restoring_the_oldest_kept_generation_works_twice_in_a_row() {
    let n = Node::new("a", 2, "");
    let f = n.tree().join("f.txt");
    for k in 0..3 {
        write(&f, &version(k));
        n.cmd().arg("check").assert().success();
    }
    assert_eq!(ids(&n), [1, 2, 3]);
    // A change not checked yet: the restore records it first, as the
    // generation that used to push the restored one out.
    write(&f, &version(3));
    for _ in 0..2 {
        let r = n.json(&["restore", "--generation", "1"]);
        assert_eq!(std::fs::read(&f).unwrap(), version(0));
        assert!(ids(&n).contains(&1), "the restored generation stays: {r}");
        // Also through later runs (a daemon's check, say), which collect
        // whatever no rule keeps.
        n.cmd().arg("check").assert().success();
        n.cmd().arg("gc").assert().success();
        assert!(ids(&n).contains(&1));
    }
    let gens = n.json(&["generations"]);
    assert_eq!(gens["generations"][0]["kept"], serde_json::json!([{ "reason": "restored", "by": 5 }]), "{gens:#}");
    // Undoing the first restore still works: the state before it is kept.
    n.cmd().args(["restore", "--generation", "4"]).assert().success();
    assert_eq!(std::fs::read(&f).unwrap(), version(3));
}

#[test]
fn restore_dry_run_lists_what_it_would_write_and_remove_and_changes_nothing() {
    let n = Node::new("a", 3, "");
    write(&n.tree().join("a.txt"), b"a");
    write(&n.tree().join("d/b.txt"), b"b");
    write(&n.tree().join("same.txt"), b"same");
    n.cmd().arg("check").assert().success();
    write(&n.tree().join("a.txt"), b"a changed");
    std::fs::remove_file(n.tree().join("d/b.txt")).unwrap();
    write(&n.tree().join("new.txt"), b"added since");
    write(&n.tree().join("n/x.txt"), b"added since, below a new directory");
    let before = snapshot(&n.tree());

    let plan = n.json(&["restore", "--dry-run", "--generation", "1"]);
    assert_eq!(plan["generation"], 1);
    let t = n.tree();
    let changes: BTreeSet<(String, String, String)> = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let p = c["path"].as_str().unwrap().strip_prefix(t.to_str().unwrap()).unwrap().to_owned();
            (c["action"].as_str().unwrap().to_owned(), c["kind"].as_str().unwrap().to_owned(), p)
        })
        .collect();
    let want: BTreeSet<(String, String, String)> = [
        ("write", "file", "/a.txt"),
        ("write", "file", "/d/b.txt"),
        ("remove", "file", "/new.txt"),
        ("remove", "file", "/n/x.txt"),
        ("remove", "dir", "/n"),
    ]
    .into_iter()
    .map(|(a, k, p)| (a.to_owned(), k.to_owned(), p.to_owned()))
    .collect();
    assert_eq!(changes, want);

    n.cmd()
        .args(["restore", "--dry-run", "--generation", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("would remove dir     {}", t.join("n").display())))
        .stdout(predicate::str::contains(format!("would write  file    {}", t.join("a.txt").display())))
        .stdout(predicate::str::contains("would write 2 entries and remove 3 entries"));
    assert_eq!(snapshot(&n.tree()), before, "a dry run changes nothing on disk");
    assert_eq!(ids(&n), [1], "and records no generation");

    // Restoring one path lists only what is below it.
    let plan = n.json(&["restore", "--dry-run", "--generation", "1", t.join("d").to_str().unwrap()]);
    assert_eq!(plan["changes"].as_array().unwrap().len(), 1, "{plan}");
}

#[test]
fn history_lists_every_kept_version_with_deletions() {
    let n = Node::new("a", 5, "");
    let f = n.tree().join("f.txt");
    write(&n.tree().join("other"), b"o");
    n.cmd().arg("check").assert().success(); // 1: f.txt not there yet
    write(&f, b"one");
    n.cmd().arg("check").assert().success(); // 2
    write(&f, b"two, longer");
    n.cmd().arg("check").assert().success(); // 3
    // Absence is no version to keep: generation 4 stays for the version of
    // `other` it holds, and with it the deletion shows.
    std::fs::remove_file(&f).unwrap();
    write(&n.tree().join("other"), b"o2");
    n.cmd().arg("check").assert().success(); // 4
    write(&f, b"three");
    write(&n.tree().join("other"), b"o3");
    n.cmd().arg("check").assert().success(); // 5

    let h = n.json(&["history", f.to_str().unwrap()]);
    assert_eq!(h["path"], f.to_str().unwrap());
    assert_eq!(h["group"], "g");
    let v = h["versions"].as_array().unwrap();
    let summary: Vec<(u64, bool, Option<u64>)> =
        v.iter().map(|x| (x["generation"].as_u64().unwrap(), x["deleted"] == true, x["size"].as_u64())).collect();
    assert_eq!(summary, [(2, false, Some(3)), (3, false, Some(11)), (4, true, None), (5, false, Some(5))]);
    for x in v {
        assert_eq!(x["cause"], "local scan");
        assert!(x["time"].as_str().unwrap().ends_with('Z'), "{x}");
    }
    assert_eq!(v[0]["kind"], "file");
    assert_eq!(v[0]["hash"].as_str().unwrap().len(), 64);
    assert!(v[2]["hash"].is_null());

    let text = n.cmd().args(["history"]).arg(&f).assert().success().get_output().stdout.clone();
    let text = String::from_utf8(text).unwrap();
    assert!(text.lines().next().unwrap().starts_with("  GEN  TIME"), "{text}");
    assert!(text.contains("deleted"), "{text}");
    assert!(text.contains("4 versions of"), "{text}");

    // A path outside every include is a usage error.
    n.cmd().args(["history", "/nowhere/at/all"]).assert().code(2);
}

#[test]
fn generations_diff_lists_the_paths_that_differ() {
    let n = Node::new("a", 5, "");
    write(&n.tree().join("a.txt"), b"a");
    write(&n.tree().join("d/gone.txt"), b"g");
    write(&n.tree().join("same.txt"), b"s");
    n.cmd().arg("check").assert().success(); // 1
    write(&n.tree().join("a.txt"), b"a changed");
    std::fs::remove_file(n.tree().join("d/gone.txt")).unwrap();
    write(&n.tree().join("new/n.txt"), b"n");
    n.cmd().arg("check").assert().success(); // 2
    write(&n.tree().join("same.txt"), b"changed at last");
    n.cmd().arg("check").assert().success(); // 3

    let t = n.tree();
    let rel = |d: &serde_json::Value| -> Vec<(String, String, String)> {
        d["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let p = c["path"].as_str().unwrap().strip_prefix(t.to_str().unwrap()).unwrap().to_owned();
                (c["change"].as_str().unwrap().to_owned(), c["kind"].as_str().unwrap().to_owned(), p)
            })
            .collect()
    };
    let d = n.json(&["generations", "--diff", "1", "2"]);
    assert_eq!((d["from"].as_u64(), d["to"].as_u64()), (Some(1), Some(2)));
    let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        rel(&d),
        [
            s("changed", "file", "/a.txt"),
            s("removed", "file", "/d/gone.txt"),
            s("added", "dir", "/new"),
            s("added", "file", "/new/n.txt")
        ]
    );
    // Against the current tree.
    let d = n.json(&["generations", "--diff", "2"]);
    assert!(d["to"].is_null());
    assert_eq!(rel(&d), [s("changed", "file", "/same.txt")]);

    n.cmd()
        .args(["generations", "--diff", "1", "3"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("removed  file    {}", t.join("d/gone.txt").display())))
        .stdout(predicate::str::contains("5 paths differ between generation 1 and generation 3"));
    n.cmd().args(["generations", "--diff", "9"]).assert().code(2);
}

#[test]
fn content_received_from_a_peer_counts_as_added_and_history_names_the_peer() {
    let mut c = Cluster::with(Setup::nodes(2).backups(3));
    c.start_all();
    write(&c.path("a", "big.bin"), &crate::common::bytes(11, 400_000));
    c.sync_ok("a");
    let (code, gens) = c.json("b", &["generations"]);
    assert_eq!(code, 0);
    let received = gens["generations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["cause"] == "from a")
        .unwrap_or_else(|| panic!("b records what it received from a: {gens:#}"));
    assert!(received["added_bytes"].as_u64().unwrap() >= 300_000, "{received}");
    let (code, h) = c.json("b", &["history", c.path("b", "big.bin").to_str().unwrap()]);
    assert_eq!(code, 0, "{h}");
    assert_eq!(h["versions"][0]["peer"], "a", "{h}");
}

#[test]
fn backup_keep_keeps_generations_no_path_needs_and_generations_says_why() {
    let n = Node::new("a", 1, "backup-keep within 1d;");
    for k in 0..4 {
        write(&n.tree().join("f"), &version(k));
        n.cmd().arg("check").assert().success();
    }
    // backup-generations 1 alone would keep 3 and 4; the day keeps all.
    assert_eq!(ids(&n), [1, 2, 3, 4]);
    let gens = n.json(&["generations"]);
    assert_eq!(gens["generations"][0]["kept"], serde_json::json!([{ "reason": "within" }]));
    let text = String::from_utf8(n.cmd().arg("generations").assert().success().get_output().stdout.clone()).unwrap();
    let header = text.lines().next().unwrap();
    assert!(header.contains("CAUSE") && header.ends_with("KEPT"), "{text}");
    let f = n.tree().join("f");
    assert!(text.contains("newest; backup-keep within"), "{text}");
    assert!(text.contains(&format!("a version of {}; backup-keep within", f.display())), "{text}");

    // Without the rule the next collection drops what no path needs.
    n.edit_config(|t| t.replace("backup-keep within 1d;", ""));
    let text = String::from_utf8(n.cmd().arg("generations").assert().success().get_output().stdout.clone()).unwrap();
    assert!(text.contains("- (dropped by the next gc)"), "{text}");
    n.cmd().arg("gc").assert().success();
    assert_eq!(ids(&n), [3, 4]);

    // A bad value names the file and line.
    n.edit_config(|t| t.replace("backup-generations 1;", "backup-generations 1;\n  backup-keep daily lots;"));
    n.cmd().arg("generations").assert().code(2).stderr(predicate::str::contains("snapsync.cfg:7:21: backup-keep:"));
}
