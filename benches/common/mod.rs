//! Shared by the benchmarks: tree generation, timing, result files.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub mod store_space;

/// A seeded xorshift generator: benchmarks must be repeatable.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `n` pseudo-random bytes (incompressible, like images and fonts).
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }

    /// A size spread log-uniformly from `lo` to `hi` bytes: many small
    /// files, few large ones, as in a static asset tree.
    pub fn size(&mut self, lo: u64, hi: u64) -> usize {
        let f = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        ((lo as f64) * ((hi as f64) / (lo as f64)).powf(f)) as usize
    }
}

/// Writes `files` asset-like files (300 B to 300 KiB) below `root`, 100 to
/// a directory, 3 levels deep. Returns the file paths and total bytes.
pub fn generate_tree(root: &Path, files: usize, seed: u64) -> (Vec<PathBuf>, u64) {
    let mut rng = Rng(seed | 1);
    let mut paths = Vec::with_capacity(files);
    let mut total = 0u64;
    for i in 0..files {
        let dir = root.join(format!("d{:02}/e{:03}", i / 10_000, (i / 100) % 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        let len = rng.size(300, 300 * 1024);
        let p = dir.join(format!("asset-{i:06}.bin"));
        std::fs::write(&p, rng.bytes(len)).unwrap();
        total += len as u64;
        paths.push(p);
    }
    (paths, total)
}

/// Time of one run of `f`.
pub fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let r = f();
    (t.elapsed(), r)
}

/// Writes a benchmark's figures as JSON to `target/bench-results/NAME.json`
/// (so runs can be compared) and prints where.
pub fn save(name: &str, value: &serde_json::Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(value).unwrap()).unwrap();
    println!("results written to {}", path.display());
}

/// A config with one group including `tree`, with backups in `backup` if given.
pub fn config(dir: &Path, tree: &Path, backup: Option<(&Path, u32)>) -> snapsync::config::Config {
    let backup =
        backup.map(|(b, n)| format!("backup-directory {};\n backup-generations {n};", b.display())).unwrap_or_default();
    let text = format!(
        "group bench {{\n host bench other;\n key {}/key;\n include {};\n {backup}\n}}\n",
        dir.display(),
        tree.display()
    );
    let path = dir.join("bench.cfg");
    std::fs::write(&path, text).unwrap();
    snapsync::config::load(&path).unwrap()
}

/// Drops the page cache when allowed (root), so "cold" means cold.
pub fn drop_caches() -> bool {
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}
