//! SPEC §6: only hosts that hold the group's key and are listed in the
//! group may sync it; a changed node key is refused until trusted.

use crate::cluster::{Cluster, peer_report};
use crate::common::write;

/// A node keyed with another key file can sync with nobody, and nobody's
/// tree changes.
#[test]
fn sync_refused_with_another_key() {
    let mut c = Cluster::new(2);
    let other = c.root().join("other-key");
    c.keygen(&other);
    let text = c.config_text(&["a", "b"], &other);
    c.use_own_config("b", &text);
    c.start_all();
    write(&c.path("a", "from-a"), b"a");
    write(&c.path("b", "from-b"), b"b");
    let (sa, sb) = (c.snapshot("a"), c.snapshot("b"));
    let (code, v) = c.sync("b", &[]);
    assert_eq!(code, 1, "{v:#}");
    assert!(peer_report(&v, "a")["error"].is_string(), "{v:#}");
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 1, "{v:#}");
    assert!(peer_report(&v, "b")["error"].is_string(), "{v:#}");
    assert_eq!(c.snapshot("a"), sa);
    assert_eq!(c.snapshot("b"), sb);
}

/// A host that holds the key but that the group (as its members see it)
/// does not list is refused, and nothing changes.
#[test]
fn sync_refused_for_an_unlisted_host() {
    let mut c = Cluster::new(3);
    c.add_outsider("d");
    c.start_all();
    write(&c.path("a", "f"), b"group file");
    c.sync_ok("a");
    write(&c.path("d", "f"), b"outsider's version");
    write(&c.path("d", "planted"), b"outsider's file");
    let before: Vec<_> = ["a", "b", "c"].iter().map(|n| c.snapshot(n)).collect();
    let (code, v) = c.sync("d", &[]);
    assert_eq!(code, 1, "{v:#}");
    for peer in ["a", "b", "c"] {
        let err = peer_report(&v, peer)["error"].as_str().unwrap_or_default().to_owned();
        assert!(err.contains("not listed") || err.contains("not allowed"), "{peer}: {v:#}");
    }
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        assert_eq!(c.snapshot(n), before[i], "{n} changed");
    }
    assert!(!c.path("d", "f").exists() || std::fs::read(c.path("d", "f")).unwrap() == b"outsider's version");
    // The members' own syncs never reach d.
    let v = c.sync_ok("a");
    assert!(v["peers"].as_array().unwrap().iter().all(|p| p["peer"] != "d"), "{v:#}");
}

/// A's pin of B's node key: after B's key is replaced, A refuses B with a
/// message naming `snapsync trust --peer b`, and B's own sync is told to
/// run that on A; after `trust` on A it syncs again.
#[test]
fn sync_changed_node_key_is_refused_until_trusted() {
    let mut c = Cluster::new(2);
    c.start_all();
    write(&c.path("a", "f"), b"first");
    c.sync_ok("a");
    c.stop("b");
    let keys = Cluster::find_files(&c.state("b"), "node-key.pem");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].parent().unwrap().ends_with("net"), "{keys:?}");
    std::fs::remove_file(&keys[0]).unwrap();
    c.start("b");
    write(&c.path("a", "g"), b"second");
    write(&c.path("b", "from-b"), b"b's");
    let before_b = c.snapshot("b");
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 1, "{v:#}");
    let err = peer_report(&v, "b")["error"].as_str().unwrap_or_default().to_owned();
    assert!(err.contains("snapsync trust --peer b"), "{v:#}");
    assert_eq!(c.snapshot("b"), before_b, "b changed although refused");
    // B's own sync to A is refused by A as well, and B is told that the
    // trust command runs on A: B's operator cannot accept B's own key.
    let (code, v) = c.sync("b", &[]);
    assert_eq!(code, 1, "{v:#}");
    assert!(!c.path("a", "from-b").exists());
    let err = peer_report(&v, "a")["error"].as_str().unwrap_or_default().to_owned();
    assert!(err.contains("a has pinned an older node key for this host, b ("), "{v:#}");
    assert!(err.contains("on a: run `snapsync trust --peer b` there, not here"), "{v:#}");
    assert!(!err.contains("accept the new key with `snapsync trust --peer b`"), "{v:#}");
    assert!(c.log("a").contains("accept the new key with `snapsync trust --peer b`"), "{}", c.log("a"));

    let out = c.run("a", &["trust", "--peer", "b"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v = c.sync_ok("a");
    assert!(peer_report(&v, "b")["error"].is_null(), "{v:#}");
    c.assert_all_same();
    assert!(c.path("a", "from-b").exists() && c.path("b", "g").exists());
}
