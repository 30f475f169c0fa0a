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
        assert_eq!(code, 0, "status on {n} exits {code} with nothing to do: {v:#}\nls {n}: {:#}", c.ls(n));
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
    assert_all_settled(&c, &["a", "b", "c"]);
    // C's own sync agrees, and changes nothing.
    c.sync_ok("c");
    assert_all_settled(&c, &["a", "b", "c"]);
}
