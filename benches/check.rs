//! `check` on a generated tree of asset-like files (SPEC §8, issue 2):
//! first run, no-change rerun, one changed file, compared with the floor
//! of merely walking and `lstat`ing every file.
//!
//! `SNAPSYNC_BENCH_FILES` sets the tree size (default 100000). Results go
//! to `target/bench-results/check.json`.

mod common;

use std::path::Path;
use std::time::Duration;

use rayon::prelude::*;
use snapsync::engine::Engine;

fn main() {
    let files: usize = std::env::var("SNAPSYNC_BENCH_FILES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let base = std::env::var_os("SNAPSYNC_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).unwrap();
    let tree = dir.path().join("tree");
    println!("generating {files} files in {} ...", tree.display());
    let (gen_time, (paths, total)) = common::time(|| common::generate_tree(&tree, files, 42));
    println!("  {} in {:.1?}", indicatif::HumanBytes(total), gen_time);
    // Make every file old enough that none is racily clean.
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    paths.par_iter().for_each(|p| {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_modified(old))
            .unwrap();
    });

    let config = common::config(dir.path(), &tree, None);
    let engine = Engine::open(&config, "bench", &dir.path().join("state")).unwrap();

    let (first, r) =
        common::time(|| engine.check(&engine.store.writer_blocking(), &[], &snapsync::progress::Quiet, None).unwrap());
    let read = r.groups[0].stats.bytes_read;
    println!(
        "first check:       {:>9.3?}  ({} read, {:.0} MiB/s)",
        first,
        indicatif::HumanBytes(read),
        read as f64 / first.as_secs_f64() / 1048576.0
    );

    let mut rerun = Vec::new();
    for _ in 0..5 {
        let (t, r) = common::time(|| {
            engine.check(&engine.store.writer_blocking(), &[], &snapsync::progress::Quiet, None).unwrap()
        });
        assert!(!r.groups[0].changed);
        assert_eq!(r.groups[0].stats.files_read, 0);
        rerun.push(t);
    }
    rerun.sort();
    let no_change = rerun[rerun.len() / 2];
    println!("no-change check:   {:>9.3?}  (median of 5)", no_change);

    let mut floors = Vec::new();
    for _ in 0..5 {
        let (t, n) = common::time(|| walk_lstat(&tree));
        assert_eq!(n, files);
        floors.push(t);
    }
    floors.sort();
    let floor = floors[floors.len() / 2];
    println!("walk+lstat floor:  {:>9.3?}  (parallel readdir + lstat of every entry, median of 5)", floor);
    let ratio = no_change.as_secs_f64() / floor.as_secs_f64();
    println!("no-change / floor: {ratio:>9.2}x  (target: at most 2x)");

    let victim = &paths[files / 2];
    let mut data = std::fs::read(victim).unwrap();
    data[0] ^= 1;
    std::fs::write(victim, &data).unwrap();
    let (one, r) =
        common::time(|| engine.check(&engine.store.writer_blocking(), &[], &snapsync::progress::Quiet, None).unwrap());
    assert_eq!(r.groups[0].stats.files_read, 1);
    println!("one changed file:  {:>9.3?}", one);

    common::save(
        "check",
        &serde_json::json!({
            "files": files,
            "bytes": total,
            "first_check_s": first.as_secs_f64(),
            "first_check_mib_s": read as f64 / first.as_secs_f64() / 1048576.0,
            "no_change_check_s": no_change.as_secs_f64(),
            "walk_lstat_floor_s": floor.as_secs_f64(),
            "no_change_over_floor": ratio,
            "one_changed_file_s": one.as_secs_f64(),
            "threads": rayon::current_num_threads(),
        }),
    );
}

/// The floor: list every directory and `lstat` every entry, in parallel
/// like the scan, doing nothing else. Returns the number of files.
fn walk_lstat(dir: &Path) -> usize {
    let entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries
        .par_iter()
        .map(|p| {
            let md = std::fs::symlink_metadata(p).unwrap();
            if md.is_dir() { walk_lstat(p) } else { 1 }
        })
        .sum()
}
