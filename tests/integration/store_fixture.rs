//! A store written by the first state format (fixtures/store-v1) must keep
//! opening and restoring byte for byte. If this test fails after a change,
//! the change broke the on-disk format: bump `STATE_FORMAT` and write a
//! migration rather than editing the fixture.
//!
//! The fixture was made by `snapsync check` on a small tree (see the
//! assertions below), then an edit of `a.txt` and the deletion of
//! `docs/b.txt`, and a second check: two generations.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use snapsync::engine::Engine;

use crate::common::copy_tree;

#[test]
fn store_v1_fixture_opens_and_restores_both_generations() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/store-v1");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    copy_tree(&fixture.join("state"), &d.join("state"));
    copy_tree(&fixture.join("chunks"), &d.join("backup/snapsync-node"));
    let cfg = d.join("fx.cfg");
    std::fs::write(
        &cfg,
        format!(
            "prefix fx {{ on node: {}; }}\ngroup fixture {{\n host node other;\n key %fx%/key;\n include %fx%/tree;\n \
             backup-directory %fx%/backup;\n backup-generations 5;\n}}\n",
            d.display()
        ),
    )
    .unwrap();
    let config = snapsync::config::load(&cfg).unwrap();
    let engine = Engine::open(&config, "node", &d.join("state")).unwrap();

    let gens = engine.generations(&[]).unwrap();
    let summary: Vec<(u64, u64, u64)> = gens.iter().map(|g| (g.id, g.entries, g.bytes)).collect();
    assert_eq!(summary, [(1, 7, 300_018), (2, 6, 300_022)]);

    let out = d.join("out");
    engine.restore(&engine.store.writer_blocking(), 1, &[], Some(&out), &snapsync::progress::Quiet).unwrap();
    let tree = out.join(d.join("tree").strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(tree.join("a.txt")).unwrap(), b"alpha\n");
    let md = std::fs::metadata(tree.join("a.txt")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o640);
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_704_164_645, 123_456_789));
    assert_eq!(std::fs::read(tree.join("docs/b.txt")).unwrap(), b"bravo bravo\n");
    assert_eq!(std::fs::read(tree.join("docs/big.txt")).unwrap(), vec![b'z'; 300_000]);
    assert_eq!(std::fs::read_link(tree.join("link")).unwrap(), Path::new("a.txt"));
    assert!(tree.join("empty").is_dir());

    let out2 = d.join("out2");
    engine.restore(&engine.store.writer_blocking(), 2, &[], Some(&out2), &snapsync::progress::Quiet).unwrap();
    let tree2 = out2.join(d.join("tree").strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(tree2.join("a.txt")).unwrap(), b"alpha, second version\n");
    assert!(!tree2.join("docs/b.txt").exists());
}
