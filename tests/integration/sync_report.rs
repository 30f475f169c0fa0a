//! SPEC §3: `sync` never exits 0 while something it sent was not applied,
//! and says which peer, path and why; `status` and `sync --dry-run` are
//! read-only on every host.

use serde_json::Value;

use crate::cluster::{Cluster, Setup, changes, peer_report, problems_on};
use crate::common::{Tmpfs, bytes, write};

#[test]
fn sync_fails_naming_the_peer_and_path_when_the_receiver_runs_out_of_space() {
    let mut c = Cluster::new(2);
    let Some(small) = Tmpfs::mount(&c.tree("b"), "8m") else { return };
    c.start_all();
    // 20 MiB of incompressible files for an 8 MiB filesystem.
    let names: Vec<String> = (0..20).map(|i| format!("f{i:02}")).collect();
    for (i, n) in names.iter().enumerate() {
        write(&c.path("a", n), &bytes(i as u64 + 1, 1 << 20));
    }
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 1, "a sync that b could not apply exits 1: {v:#}");
    let (listed, total) = problems_on(&v, "b");
    assert!(total >= listed.len() as u64 && !listed.is_empty(), "{v:#}");
    assert!(
        listed.iter().any(|p| names.iter().any(|n| p.contains(n.as_str())) && p.contains("space")),
        "b's problems name a file and why: {listed:#?}"
    );
    // The text output says it too.
    let out = c.run("a", &["sync"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("not applied on b: "), "{}", out.stdout);

    // With room again, the next sync applies everything and exits 0.
    small.resize("64m");
    let v = c.sync_ok("a");
    assert_eq!(problems_on(&v, "b").1, 0, "{v:#}");
    let (code, v) = c.json("a", &["status"]);
    assert_eq!(code, 0, "{v:#}");
    c.assert_same("a", "b");
    drop(c);
}

#[test]
fn sync_fails_naming_the_path_where_the_receiver_holds_an_untracked_fifo() {
    let mut c = Cluster::new(2);
    c.start_all();
    write(&c.path("a", "keep"), b"keep");
    c.sync_ok("a");
    let fifo = c.path("b", "pipe");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    write(&c.path("a", "pipe"), b"a file on a");
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 1, "{v:#}");
    let (listed, total) = problems_on(&v, "b");
    assert!(total >= 1 && listed.iter().any(|p| p.contains("pipe")), "{v:#}");
    // The fifo is left alone.
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
}

/// What `ls --json` and `generations --json` say on node `n`.
fn state_of(c: &Cluster, n: &str) -> (Value, Value) {
    let (code, gens) = c.json(n, &["generations"]);
    assert_eq!(code, 0, "generations on {n}");
    (c.ls(n), gens)
}

#[test]
fn status_and_dry_run_record_nothing_on_either_side() {
    let mut c = Cluster::with(Setup::nodes(2).backups(10));
    c.start_all();
    for f in ["shared", "both", "only-a", "only-b"] {
        write(&c.path("a", f), f.as_bytes());
    }
    c.sync_ok("a");
    c.assert_same("a", "b");
    // Recorded differences both ways, so the dry run's Pull makes b plan
    // to take a's version of `both`...
    write(&c.path("a", "both"), b"recorded on a");
    write(&c.path("a", "new-a"), b"recorded on a");
    c.check("a");
    write(&c.path("b", "new-b"), b"recorded on b");
    c.check("b");
    // ... and changes not recorded yet on both, one of them at a path b
    // would check before applying.
    write(&c.path("a", "only-a"), b"pending on a");
    write(&c.path("b", "both"), b"pending on b");
    write(&c.path("b", "only-b"), b"pending on b");
    let before = [state_of(&c, "a"), state_of(&c, "b")];
    let gens = |s: &(Value, Value)| s.1["generations"].as_array().map_or(0, Vec::len);

    let (code, v) = c.json("a", &["status"]);
    assert_eq!(code, 3, "status sees differences: {v:#}");
    let (code, v) = c.sync("a", &["--dry-run"]);
    assert_eq!(code, 3, "{v:#}");
    let pb = peer_report(&v, "b");
    assert!(pb["error"].is_null(), "{v:#}");
    let pushed = changes(&pb["pushed"]);
    assert!(pushed.contains(&("update".into(), "%tree%/both".into())), "{pushed:?}");
    assert!(pushed.contains(&("create".into(), "%tree%/new-a".into())), "{pushed:?}");
    assert!(changes(&pb["pulled"]["changes"]).contains(&("create".into(), "%tree%/new-b".into())), "{v:#}");
    // a's own pending change is reported, not recorded.
    let pending: Vec<&Value> =
        v["check"]["groups"].as_array().unwrap().iter().filter(|g| g["pending"] == true).collect();
    assert_eq!(pending.len(), 1, "{v:#}");
    assert_eq!(pending[0]["pending_paths"], serde_json::json!(["%tree%/only-a"]), "{v:#}");
    assert!(v["check"]["groups"].as_array().unwrap().iter().all(|g| g["generation"].is_null()), "{v:#}");
    // The same from b, and status in text.
    let (code, v) = c.sync("b", &["--dry-run"]);
    assert_eq!(code, 3, "{v:#}");
    let out = c.run("b", &["status"]);
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("2 local changes not recorded yet"), "{}", out.stdout);
    for path in [c.path("b", "both"), c.path("b", "only-b")] {
        assert!(out.stdout.contains(&format!("local  changed  {}\n", path.display())), "{}", out.stdout);
    }

    let after = [state_of(&c, "a"), state_of(&c, "b")];
    for (i, n) in ["a", "b"].iter().enumerate() {
        assert_eq!(after[i].0, before[i].0, "{n}'s records changed");
        assert_eq!(after[i].1, before[i].1, "{n}'s generations changed");
        assert!(gens(&after[i]) > 0, "{n} keeps generations: {:#}", after[i].1);
        assert!(c.conflicts(n).is_empty(), "a dry run recorded a conflict on {n}");
    }
    // A real sync still records what the dry runs left.
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 3, "both sides changed `both`: {v:#}");
    assert!(gens(&state_of(&c, "a")) > gens(&before[0]));
}
