//! `snapsync demo`: a guided run on an embedded default configuration.
//!
//! It lays out a demo directory with the configuration in
//! `fixtures/demo/snapsync.cfg` (three nodes, `alpha`, `beta` and `gamma`,
//! on loopback addresses, their trees kept apart through a `%demo%`
//! prefix), a generated sample tree on `alpha`, and then shows the local
//! engine at work: a first check, an edit and a deletion recorded as a new
//! generation, a restore of the first generation into a separate directory,
//! and a verify.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::config;
use crate::engine::Engine;

const CONFIG: &str = include_str!("../../fixtures/demo/snapsync.cfg");

/// Runs the demo in `dir` (a fresh directory under the system temp
/// directory when `None`).
pub fn run(dir: Option<&Path>) -> Result<()> {
    let dir = match dir {
        Some(d) => Engine::absolute_path(d),
        None => std::env::temp_dir().join(format!("snapsync-demo-{}", std::process::id())),
    };
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} is not empty; name a new directory with --dir", dir.display());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let cfg_path = dir.join("snapsync.cfg");
    std::fs::write(&cfg_path, CONFIG.replace("@DEMO@", &dir.to_string_lossy()))?;
    crate::key::write_new(&dir.join("demo.key"))?;
    let config = config::load(&cfg_path)?;

    let host = "alpha";
    let www = dir.join(host).join("www");
    let files = write_sample_tree(&www)?;
    let state = super::node_state_dir(&dir.join("state"), &super::config_name_of_file(&cfg_path), host);
    let engine = Engine::open(&config, host, &state)?;

    step("first check of alpha's tree");
    let r = engine.check(&[])?;
    for g in &r.groups {
        println!(
            "  {}: {} entries, {} files read, root {}",
            g.group,
            g.stats.entries_seen,
            g.stats.files_read,
            &g.root[..16]
        );
    }

    step("no-change check: nothing is opened");
    let r = engine.check(&[])?;
    for g in &r.groups {
        println!("  {}: changed={}, files read={}", g.group, g.changed, g.stats.files_read);
    }

    step("edit one file, delete another, check again");
    let edited = &files[0];
    std::fs::OpenOptions::new().append(true).open(edited)?.write_all(b"one more line\n")?;
    std::fs::remove_file(&files[1])?;
    let r = engine.check(&[])?;
    for g in &r.groups {
        let generation = g.generation.map_or("none".to_owned(), |id| id.to_string());
        println!("  {}: {} entries changed, generation {generation}", g.group, g.stats.entries_changed);
    }

    step("generations");
    let gens = engine.generations(&[])?;
    for g in &gens {
        println!(
            "  {:>3}  {}  {:<12} {:>6} entries {:>10} bytes (+{} stored)",
            g.id,
            super::output::time(g.time),
            g.cause,
            g.entries,
            g.bytes,
            g.added_bytes
        );
    }

    let first = gens.first().context("no generation was recorded")?.id;
    let restored = dir.join("restored");
    step(&format!("restore generation {first} into {}", restored.display()));
    let r = engine.restore(first, &[], Some(&restored))?;
    println!("  {} files written, {} bytes", r.files_written, r.bytes_written);
    let back = restored.join(files[1].strip_prefix("/").unwrap_or(&files[1]));
    println!("  the deleted file is back: {}", back.display());

    step("verify files and stored chunks");
    let v = engine.verify()?;
    println!("  {} files, {} chunks, {} mismatches", v.files_checked, v.chunks_checked, v.mismatches.len());

    println!();
    println!("Everything is in {}:", dir.display());
    println!("  config     {}", cfg_path.display());
    println!("  tree       {}", www.display());
    println!("  state      {}", state.display());
    println!("  backups    {}", dir.join(host).join("backup").display());
    println!("  restored   {}", restored.display());
    println!("Try: snapsync --config {} -N alpha -D {} ls", cfg_path.display(), dir.join("state").display());
    Ok(())
}

fn step(what: &str) {
    println!("\n== {what}");
}

/// A small asset-like tree: nested directories, text and binary files of
/// a few hundred bytes to a few hundred KiB, a symlink, an empty
/// directory, and an excluded cache directory.
fn write_sample_tree(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut seed = 0x5eed_u64;
    for d in ["css", "js", "img/icons", "img/photos", "fonts"] {
        std::fs::create_dir_all(root.join(d))?;
        for i in 0..40 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = 300 + (seed % (if d.starts_with("img/photos") { 300_000 } else { 20_000 })) as usize;
            let path = root.join(d).join(format!("asset-{i:03}.bin"));
            let body: Vec<u8> = (0..len).map(|j| ((j as u64).wrapping_mul(seed) >> 13) as u8).collect();
            std::fs::write(&path, body)?;
            files.push(path);
        }
    }
    std::fs::create_dir_all(root.join("empty"))?;
    std::fs::create_dir_all(root.join("cache"))?;
    std::fs::write(root.join("cache/ignored.dat"), b"not tracked")?;
    std::fs::write(root.join("css/draft.tmp"), b"not tracked")?;
    std::os::unix::fs::symlink("css/asset-000.bin", root.join("main.css"))?;
    // Files written this very second are "racily clean" and would be read
    // again by the next check; a real tree is older than that.
    let yesterday = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
    for f in &files {
        std::fs::File::options().write(true).open(f)?.set_times(std::fs::FileTimes::new().set_modified(yesterday))?;
    }
    Ok(files)
}
