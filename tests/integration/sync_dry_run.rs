//! SPEC §4.13: `sync --dry-run` reports what would change and changes
//! nothing on any host.

use crate::cluster::{Cluster, changes, peer_report, write_at};
use crate::common::write;

#[test]
fn sync_dry_run_reports_and_changes_nothing() {
    let mut c = Cluster::new(3);
    c.start_all();
    for f in ["f1", "f2", "f3", "d/f4"] {
        write_at(&c.path("a", f), f.as_bytes(), 1_600_000_000);
    }
    c.sync_ok("a");
    c.assert_all_same();
    // Pending changes both ways.
    write_at(&c.path("a", "f1"), b"f1 changed on a", 1_650_000_000);
    write(&c.path("a", "new-on-a"), b"a");
    write_at(&c.path("b", "f2"), b"f2 changed on b", 1_650_000_000);
    std::fs::remove_file(c.path("b", "f3")).unwrap();
    write(&c.path("b", "d/new-on-b"), b"b");
    // Every node records its own changes first, so the dry run's checks
    // have nothing left to record.
    for n in ["a", "b", "c"] {
        c.check(n);
    }
    let trees: Vec<_> = ["a", "b", "c"].iter().map(|n| c.snapshot(n)).collect();
    let lists: Vec<_> = ["a", "b", "c"].iter().map(|n| c.ls(n)).collect();

    let (code, v) = c.sync("a", &["--dry-run"]);
    assert_eq!(code, 3, "{v:#}");
    let pb = peer_report(&v, "b");
    assert!(pb["error"].is_null(), "{v:#}");
    let pushed = changes(&pb["pushed"]);
    for want in [("update", "%tree%/f1"), ("create", "%tree%/new-on-a")] {
        assert!(pushed.contains(&(want.0.into(), want.1.into())), "missing {want:?} in {pushed:?}");
    }
    let pulled = changes(&pb["pulled"]["changes"]);
    for want in [("update", "%tree%/f2"), ("delete", "%tree%/f3"), ("create", "%tree%/d/new-on-b")] {
        assert!(pulled.contains(&(want.0.into(), want.1.into())), "missing {want:?} in {pulled:?}");
    }
    assert_eq!(pushed.len(), 2, "{pushed:?}");
    assert_eq!(pulled.len(), 3, "{pulled:?}");
    let pc = peer_report(&v, "c");
    let to_c = changes(&pc["pushed"]);
    assert!(to_c.contains(&("update".into(), "%tree%/f1".into())), "{v:#}");

    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        assert_eq!(c.snapshot(n), trees[i], "the dry run changed {n}'s tree");
        assert_eq!(c.ls(n), lists[i], "the dry run changed {n}'s records");
        assert!(c.conflicts(n).is_empty());
    }
    // Dry runs from the other hosts change nothing either.
    for n in ["b", "c"] {
        let (code, v) = c.sync(n, &["--dry-run"]);
        assert_eq!(code, 3, "{n}: {v:#}");
    }
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        assert_eq!(c.snapshot(n), trees[i], "a dry run changed {n}'s tree");
        assert_eq!(c.ls(n), lists[i], "a dry run changed {n}'s records");
    }
    // What the dry run announced is what a real run does.
    let v = c.sync_ok("a");
    assert_eq!(changes(&peer_report(&v, "b")["pushed"]), pushed);
    assert_eq!(changes(&peer_report(&v, "b")["pulled"]["changes"]), pulled);
}
