//! Store size of three generations of a tree with 1% of its bytes changed
//! between them, relative to one generation (SPEC §8: at most 1.05).
//!
//! Two kinds of change are measured: whole files rewritten (1% of the
//! bytes, as when assets are replaced: the target case), and scattered
//! 4 KiB in-place edits adding up to 1% of the bytes (each edit costs a
//! whole chunk, so this shows the chunk-size trade-off). Results go to
//! `target/bench-results/store_size.json`.

mod common;

fn main() {
    let files: usize = std::env::var("SNAPSYNC_BENCH_STORE_FILES").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000);
    common::save("store_size", &common::store_space::both(files));
}
