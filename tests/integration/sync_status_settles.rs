//! Issue 8 item 6: `status` exits 0 once nothing is left to do. A host
//! must not stay "not in sync" (exit 3, no change to make either way)
//! because of records its peers never need.

use crate::cluster::{Cluster, Setup, write_at};

/// `status --json` on `node`: exit status and document.
fn status(c: &Cluster, node: &str) -> (i32, serde_json::Value) {
    c.json(node, &["status"])
}

/// Every node's `status` exits 0.
fn assert_all_settled(c: &Cluster, nodes: &[&str]) {
    for n in nodes {
        let (code, v) = status(c, n);
        assert_eq!(code, 0, "status on {n} exits {code} with nothing to do: {v:#}");
    }
}

/// Every node holds the same versions as its peers, not only the same
/// files: its `status` compares root hashes and version digests in one
/// round trip and walks nothing (no `pulled` report from a peer it may
/// pull from).
fn assert_all_versions_equal(c: &Cluster, nodes: &[&str]) {
    for n in nodes {
        let (code, v) = status(c, n);
        assert_eq!(code, 0, "status on {n}: {v:#}");
        for p in v["peers"].as_array().unwrap() {
            assert!(p["pulled"].is_null(), "{n} and {} hold different versions: {v:#}", p["peer"]);
        }
    }
}

/// (a) A file created on a receive-only host and removed there by a sync
/// (the group never had it) leaves nothing behind that its peers would
/// have to take: `status` exits 0 everywhere afterwards.
#[test]
fn status_settles_after_receive_only_host_loses_a_file_of_its_own() {
    let mut c = Cluster::with(Setup::nodes(3).receive_only("c"));
    c.start_all();
    write_at(&c.path("a", "f"), b"group file", 1_600_000_000);
    c.sync_ok("a");
    c.assert_all_same();
    write_at(&c.path("c", "only-on-c"), b"c's own", 1_600_000_000);
    write_at(&c.path("c", "dir-on-c/x"), b"c's own too", 1_600_000_000);
    c.check("c");
    // A's sync brings C back to the group's tree: C's files go.
    c.sync_ok("a");
    c.assert_all_same();
    assert!(!c.path("c", "only-on-c").exists());
    assert!(!c.path("c", "dir-on-c").exists());
    // Not only the trees: C's version digest equals the group's at once.
    assert_all_versions_equal(&c, &["a", "b", "c"]);
    // C's own sync agrees, and changes nothing.
    let v = c.sync_ok("c");
    assert!(crate::cluster::changes(&crate::cluster::peer_report(&v, "a")["pulled"]["changes"]).is_empty(), "{v:#}");
    assert_all_versions_equal(&c, &["a", "b", "c"]);
}

/// (b) Once a conflict is settled by `force` and the winner synced,
/// every host's `status` exits 0 right away.
#[test]
fn status_settles_right_after_a_conflict_is_forced() {
    settles_after_force(Setup::nodes(3));
}

/// (b) The same with C receive-only: A never pulls from it, and finds it
/// in sync once their trees are equal and C has nothing to take.
#[test]
fn status_settles_right_after_a_conflict_is_forced_with_a_receive_only_host() {
    settles_after_force(Setup::nodes(3).receive_only("c"));
}

fn settles_after_force(setup: Setup) {
    let mut c = Cluster::with(setup);
    c.start_all();
    write_at(&c.path("a", "f"), b"original", 1_600_000_000);
    write_at(&c.path("a", "g"), b"other", 1_600_000_000);
    c.sync_ok("a");
    write_at(&c.path("a", "f"), b"a's edit", 1_650_000_000);
    write_at(&c.path("b", "f"), b"b's edit", 1_650_000_100);
    c.check("b");
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 3, "{v:#}");
    let out = c.run("a", &["force", c.path("a", "f").to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    c.sync_ok("a");
    c.assert_all_same();
    assert_eq!(std::fs::read(c.path("b", "f")).unwrap(), b"a's edit");
    // C took A's file before A won the conflict over B: the same file,
    // an older version. Nothing is left to do; the next sync merges it.
    assert_all_settled(&c, &["a", "b", "c"]);
    c.sync_ok("a");
    assert_all_versions_equal(&c, &["a", "b", "c"]);
}

/// (c) A node whose state is wiped while its tree and a peer's both
/// changed: what differs is a conflict; once `force` settles it and the
/// node syncs, `status` exits 0 everywhere.
#[test]
fn status_settles_after_a_wiped_node_settles_its_conflicts() {
    let mut c = Cluster::with(Setup::nodes(3));
    c.start_all();
    write_at(&c.path("a", "f"), b"original", 1_600_000_000);
    write_at(&c.path("a", "same"), b"same", 1_600_000_000);
    write_at(&c.path("a", "d/g"), b"other", 1_600_000_000);
    c.sync_ok("a");
    c.stop("b");
    std::fs::remove_dir_all(c.node_state_dir("b").join("db")).unwrap();
    write_at(&c.path("b", "f"), b"b's edit", 1_650_000_100);
    write_at(&c.path("b", "d/g"), b"b's other edit", 1_650_000_100);
    write_at(&c.path("a", "f"), b"a's edit", 1_650_000_000);
    c.check("a");
    c.start("b");
    let (code, v) = c.sync("b", &[]);
    assert_eq!(code, 3, "{v:#}");
    let mut settled = false;
    for x in c.conflicts("b") {
        let p = x["path"].as_str().unwrap().replace("%tree%", c.tree("b").to_str().unwrap());
        let out = c.run("b", &["force", &p]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        settled = true;
    }
    assert!(settled, "b lists no conflict: {v:#}");
    c.sync_ok("b");
    c.assert_all_same();
    assert_eq!(std::fs::read(c.path("a", "f")).unwrap(), b"b's edit");
    assert_eq!(std::fs::read(c.path("c", "d/g")).unwrap(), b"b's other edit");
    assert_all_settled(&c, &["a", "b", "c"]);
    c.sync_ok("b");
    assert_all_versions_equal(&c, &["a", "b", "c"]);
}
