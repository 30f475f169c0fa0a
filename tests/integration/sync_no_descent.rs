//! SPEC §5: peers compare roots first; an unchanged tree costs one round
//! trip per peer and lists no directory.

use crate::cluster::Cluster;
use crate::common::write;

/// `served` counters of node `name`'s daemon, read with `status --json`.
fn served(c: &Cluster, name: &str) -> serde_json::Value {
    let (code, v) = c.json(name, &["status"]);
    assert_eq!(code, 0, "status on {name}: {v:#}");
    for p in v["peers"].as_array().unwrap() {
        assert_eq!(p["in_sync"], true, "status on {name}: {v:#}");
    }
    v["served"].clone()
}

#[test]
fn sync_no_change_sync_lists_no_directory() {
    let mut c = Cluster::new(3);
    c.start_all();
    for d in 0..20 {
        for f in 0..100 {
            write(&c.path("a", &format!("d{d:02}/f{f:03}")), format!("{d}/{f}").as_bytes());
        }
    }
    c.sync_ok("a");
    c.assert_all_same();
    let before = served(&c, "b");
    let v = c.sync_ok("a");
    let peers = v["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2);
    for p in peers {
        assert_eq!(p["in_sync"], true, "{v:#}");
        assert!(p["pulled"].is_null(), "{v:#}");
        assert_eq!(p["pushed"], serde_json::json!([]), "{v:#}");
    }
    let after = served(&c, "b");
    assert_eq!(after["dirs_served"], before["dirs_served"], "b listed directories: {before} -> {after}");
    assert_eq!(after["chunks_served"], before["chunks_served"]);
    assert!(
        after["roots_served"].as_u64().unwrap() > before["roots_served"].as_u64().unwrap(),
        "a's sync did not ask b for its roots: {before} -> {after}"
    );
}
