//! Store space of backup generations (SPEC §8: three generations of a
//! tree with 1% of its bytes changed between them take at most 1.05 times
//! the space of one). Shared by `benches/store_size.rs` and the cluster
//! benchmark's report.

use std::path::Path;

use snapsync::engine::Engine;

/// Runs both kinds of change on `files` generated files.
pub fn both(files: usize) -> serde_json::Value {
    serde_json::json!({
        "files": files,
        "rewrite_files": measure(files, Change::RewriteFiles),
        "scattered_edits": measure(files, Change::ScatteredEdits),
    })
}

/// How 1% of the bytes change between generations.
#[derive(Clone, Copy, Debug)]
pub enum Change {
    RewriteFiles,
    ScatteredEdits,
}

/// One generation of `files` generated files, then two more with 1% of
/// the bytes changed by `change` before each: the store's size after the
/// first and after the third.
pub fn measure(files: usize, change: Change) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let (paths, total) = super::generate_tree(&tree, files, 7);
    let backup = dir.path().join("backup");
    let config = super::config(dir.path(), &tree, Some((&backup, 3)));
    let state = dir.path().join("state");
    // Each step opens the node afresh, as a command would: an open
    // database preallocates its journal, which is not data.
    let check = || {
        let engine = Engine::open(&config, "bench", &state).unwrap();
        engine.check(&engine.store.writer_blocking(), &[], &snapsync::progress::Quiet, None).unwrap()
    };
    let size = || stored_bytes(&Engine::open(&config, "bench", &state).unwrap(), &state);
    let mut rng = super::Rng(99);

    check();
    let one = size();
    for _ in 0..2 {
        let mut budget = total / 100;
        while budget > 0 {
            let p = &paths[(rng.next() % files as u64) as usize];
            let mut data = std::fs::read(p).unwrap();
            match change {
                Change::RewriteFiles => {
                    budget = budget.saturating_sub(data.len() as u64);
                    data = rng.bytes(data.len());
                }
                Change::ScatteredEdits => {
                    let n = 4096.min(data.len());
                    let at = (rng.next() % (data.len() - n + 1) as u64) as usize;
                    data[at..at + n].copy_from_slice(&rng.bytes(n));
                    budget = budget.saturating_sub(n as u64);
                }
            }
            std::fs::write(p, data).unwrap();
        }
        check();
    }
    let gens = Engine::open(&config, "bench", &state).unwrap().generations(&[]).unwrap();
    assert_eq!(gens.len(), 3);
    let three = size();
    let ratio = three as f64 / one as f64;
    println!(
        "{change:?}: tree {} in {files} files; store after 1 generation {}, after 3 {}: {ratio:.3}x (target at most 1.05x for rewritten files)",
        indicatif::HumanBytes(total),
        indicatif::HumanBytes(one),
        indicatif::HumanBytes(three)
    );
    serde_json::json!({ "tree_bytes": total, "one_generation_bytes": one, "three_generations_bytes": three, "ratio": ratio })
}

/// Bytes the store holds: stored chunk bytes plus the state's metadata
/// (nodes, manifests, records) as the state directory takes on disk.
fn stored_bytes(engine: &Engine, state_dir: &Path) -> u64 {
    let chunks: u64 = engine.chunk_store(0).unwrap().list().unwrap().iter().map(|(_, s)| s).sum();
    let state = dir_size(state_dir);
    println!("  chunks {} + state {}", indicatif::HumanBytes(chunks), indicatif::HumanBytes(state));
    chunks + state
}

fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let md = e.metadata().unwrap();
        n += if md.is_dir() { dir_size(&e.path()) } else { md.len() };
    }
    n
}
