//! The fuzz corpus, replayed without libFuzzer: every input committed under
//! `fixtures/fuzz/<target>/`, and every input under its `regressions/`
//! that once made a check fail, goes through the same check as the fuzz
//! target (`snapsync::fuzzing`), so a crash found once stays fixed.
//! `tests/fuzz/run` builds and runs the targets themselves.

use std::path::{Path, PathBuf};

use snapsync::fuzzing::{TARGETS, check_for};

/// The files under `dir`, at any depth, sorted.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() { todo.push(path) } else { out.push(path) }
        }
    }
    out.sort();
    out
}

#[test]
fn every_committed_fuzz_input_passes_its_targets_checks() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fuzz");
    // Every directory is a target's, and every target has a corpus.
    for entry in std::fs::read_dir(&corpus).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(check_for(&name).is_some(), "fixtures/fuzz/{name} is not a fuzz target");
    }
    let mut total = 0;
    for (target, check) in TARGETS {
        let inputs = files_below(&corpus.join(target));
        assert!(inputs.len() >= 3, "fixtures/fuzz/{target} holds {} inputs", inputs.len());
        for input in &inputs {
            let data = std::fs::read(input).unwrap();
            // A failed check panics; name the input it failed on.
            let result = std::panic::catch_unwind(|| check(&data));
            assert!(result.is_ok(), "{} fails its {target} check", input.display());
        }
        total += inputs.len();
    }
    assert!(total >= 6 * 3);
}
