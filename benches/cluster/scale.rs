//! The scale stage: one node tracking a tree of many small files
//! (`SNAPSYNC_BENCH_SCALE_FILES`, 1,000,000 by default), for SPEC §8's
//! "under 400 MiB resident at 1M tracked files, on the first scan too"
//! and the "1M files: no-change sync under 3 s".
//!
//! The nodes' daemons do the work, as in production: a first `check` on
//! a (walk, read and hash every file, one commit), a first `sync` to b,
//! whose tree is empty (b receives and records every file), then
//! no-change `sync`s on a: its walk and one `GetRoots` round trip to b.
//! The other tools are not run at this size: csync2's first sync of 100k
//! files already takes several minutes, so at 1M each tool's would take
//! about an hour.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde_json::{Value, json};

use crate::sys::{self, Daemon, Fresh, Sampler};
use crate::{Shape, generate, human_bytes, repeats, syncfs};

/// The nodes' addresses (the cluster's use 127.0.0.21 to 23).
const ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 24);
const ADDR_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 25);
/// The daemons' labels in the memory samples.
const LABEL: &str = "snapsync serve (scale)";
const LABEL_B: &str = "snapsync serve (scale, receiver)";

/// Generates the tree on a fresh filesystem and measures; errors end up
/// in the result's `errors`.
pub fn measure(bin: &Path, base: &Path, shape: &Shape, allow_loop: bool, sampler: &Sampler) -> Value {
    // Two trees and their states.
    let fresh = Fresh::new(base, "snapsync-scale", shape.max_bytes() * 3 + (1 << 30), allow_loop);
    let mut out = json!({ "files": shape.files, "filesystem": fresh.kind });
    let dir = fresh.path.clone();
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let (t, generated) = crate::common::time(|| generate(&tree, shape));
    println!("  generated {} files, {} in {:.1?}", generated.files.len(), human_bytes(generated.bytes), t);
    out["bytes"] = json!(generated.bytes);
    syncfs(&tree);
    sampler.take();
    let mut daemons = Vec::new();
    if let Err(e) = work(bin, &dir, &mut daemons, &mut out) {
        println!("  scale FAILED: {e}");
        out["errors"] = json!([e]);
    }
    for mut d in daemons {
        d.stop();
    }
    let rows = sampler.take();
    for (label, key) in [(LABEL, "daemon"), (LABEL_B, "receiver")] {
        let daemon = rows.iter().filter(|(l, ..)| l == label);
        out[format!("{key}_peak_rss_bytes")] = json!(daemon.clone().map(|(_, hwm, ..)| *hwm).max());
        out[format!("{key}_cpu_s")] = json!(daemon.map(|(_, _, cpu, _)| cpu.as_secs_f64()).sum::<f64>());
    }
    drop(fresh);
    out
}

fn work(bin: &Path, dir: &Path, daemons: &mut Vec<Daemon>, out: &mut Value) -> Result<(), String> {
    let key = dir.join("key");
    sys::run(Command::new(bin).arg("keygen").arg(&key), &[0])?;
    let port = sys::free_udp_port(&[ADDR, ADDR_B]);
    let config = dir.join("scale.cfg");
    let tree_b = dir.join("tree-b");
    std::fs::create_dir_all(&tree_b).map_err(|e| format!("{}: {e}", tree_b.display()))?;
    std::fs::write(
        &config,
        format!(
            "prefix tree {{ on a: {}; on b: {}; }}\ngroup g {{\n  host a@{ADDR}:{port} b@{ADDR_B}:{port};\n  key {};\n  \
             include %tree%;\n}}\n",
            dir.join("tree").display(),
            tree_b.display(),
            key.display(),
        ),
    )
    .map_err(|e| format!("{}: {e}", config.display()))?;
    let on = |node: &str, args: &[&str]| {
        let mut c = Command::new(bin);
        c.arg("--config").arg(&config).args(["-N", node, "-D"]).arg(dir.join(format!("state-{node}"))).args(args);
        c
    };
    let at = |args: &[&str]| on("a", args);
    daemons.push(Daemon::start(at(&["serve"]), LABEL, "snapsync serve:", dir.join("a.log"))?);
    daemons.push(Daemon::start(on("b", &["serve"]), LABEL_B, "snapsync serve:", dir.join("b.log"))?);

    let t = Instant::now();
    let first = sys::run(&mut at(&["-q", "check"]), &[0])?;
    let first_s = t.elapsed().as_secs_f64();
    println!("  first check: {first_s:.1} s");
    out["first_check_s"] = json!(first_s);
    out["first_check_command_cpu_s"] = json!(first.cpu.as_secs_f64());

    let t = Instant::now();
    sys::run(&mut at(&["-q", "sync"]), &[0])?;
    let first_sync_s = t.elapsed().as_secs_f64();
    println!("  first sync to b: {first_sync_s:.1} s");
    out["first_sync_s"] = json!(first_sync_s);

    let mut no_change = Vec::new();
    for _ in 0..repeats() {
        let e = sys::run(&mut at(&["-q", "sync"]), &[0])?;
        println!("  no_change: {:.3} s", e.elapsed.as_secs_f64());
        no_change.push(e.elapsed.as_secs_f64());
    }
    out["no_change_sync_s"] = json!(no_change);
    Ok(())
}
