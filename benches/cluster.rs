//! The project's speed report (SPEC §8): snapsync side by side with
//! csync2, rsync, Unison and Syncthing on the same generated trees, on
//! loopback addresses, and the floors the machine sets.
//!
//! For each tree and each tool, on a freshly made filesystem (an ext4
//! image loop-mounted for that run alone, the same for every tool), the
//! same work in the same order: a first sync to empty peers; no-change
//! syncs; one changed file (several times); 1% of the files changed; a
//! directory of 1,000 files renamed. Then, per tool, a tree of one large
//! file: its first sync and a one-byte edit in its middle, with the bytes
//! that crossed loopback. With snapsync's `serve --watch`: no-change syncs
//! without a walk and the latency from a change to both peers holding it.
//!
//! Every sync's bytes on the wire are loopback's receive counter before
//! and after (the bench runs in a network namespace of its own when it
//! can, so nothing else counts). Every process's peak resident memory:
//! VmHWM sampled every 50 ms (and when a daemon stops), for commands,
//! daemons and what daemons fork; CPU time of commands from wait4(2). Floors per tree: a parallel `lstat` of every file, reading
//! and hashing every byte (BLAKE3, all CPUs), `cp -a` to two directories
//! at once; and QUIC throughput on loopback through snapsync's own
//! endpoints.
//!
//! snapsync alone, at scale (benches/cluster/scale.rs): one node's daemon
//! tracking `SNAPSYNC_BENCH_SCALE_FILES` small files (1,000,000; 0 skips
//! it), its first `check`, a first sync to a second node with an empty
//! tree, no-change syncs, and both daemons' peak resident memory. And the store space of three backup generations with 1% of the
//! bytes changed between them (`SNAPSYNC_BENCH_STORE_FILES` files, 5,000;
//! the same measurement as benches/store_size.rs).
//!
//! Setups: snapsync and csync2 run three nodes (a pushes to b and c);
//! rsync pushes from a to two `rsync --daemon`s with two clients at once;
//! Unison syncs two replicas (a local, b over `unison -socket`), as Unison
//! has no more; Syncthing runs three instances (`--home` each, discovery,
//! relays and NAT off) and a sync is a REST-triggered scan on a that ends
//! when a sees b and c complete. A tool that is not installed is skipped
//! with a note, never estimated.
//!
//! Trees (deterministic content: 60% xorshift bytes, like images and
//! fonts; 40% text-like tokens that zstd shrinks a few times):
//! - the *first* tree: `SNAPSYNC_BENCH_FIRST_FILES` files (default 20000,
//!   about 0.7 GiB; 300 B to 256 KiB, log-uniform);
//! - the *many* tree: `SNAPSYNC_BENCH_FILES` small files (default 100000,
//!   100 B to 8 KiB).
//!
//! A tree of 0 files is skipped. Other knobs: `SNAPSYNC_BENCH_QUICK=1`
//! (for CI: the first tree alone, of 2,000 files, as the many tree only
//! runs the same work on other file sizes; a 64 MiB large file; 5,000
//! files at scale and 500 for the store space; 3
//! repetitions; about two and a half minutes, mostly the peer tools'
//! first syncs);
//! `SNAPSYNC_BENCH_BIG_MIB` (1024), `SNAPSYNC_BENCH_QUIC_MIB` (1024),
//! `SNAPSYNC_BENCH_REPEATS` (5), `SNAPSYNC_BENCH_WATCH_SAMPLES` (20);
//! `SNAPSYNC_BENCH_SKIP=csync2,syncthing` leaves tools out
//! (`SNAPSYNC_BENCH_SKIP_CSYNC2=1` still works); `SNAPSYNC_BENCH_LOOP=0`
//! uses fresh directories instead of loop-mounted filesystems;
//! `SNAPSYNC_BENCH_NETNS=0` stays in the machine's network namespace;
//! `SNAPSYNC_BENCH_DIR` moves the work directory (default
//! `target/bench-work`, on disk, not tmpfs).
//!
//! csync2 needs its node names in `/etc/hosts` (`csbench-a` ..
//! `csbench-c` on 127.0.0.31 .. 33): they are appended when missing.
//!
//! Results: `target/bench-results/cluster.json`, `cluster.md` (the report)
//! and `cluster.png` (time against files, one line per tool; drawn by
//! `benches/cluster/chart.py` when python3 with matplotlib is there).
//! `SNAPSYNC_BENCH_WRITE_DOC=1` also writes them to `docs/benchmarks.md`
//! and `docs/benchmarks.png`. `SNAPSYNC_BENCH_RENDER=FILE.json` only
//! renders the report and chart from a saved JSON file.

mod common;
#[path = "cluster/floors.rs"]
mod floors;
#[path = "cluster/report.rs"]
mod report;
#[path = "cluster/scale.rs"]
mod scale;
#[path = "cluster/sys.rs"]
mod sys;
#[path = "cluster/tools.rs"]
mod tools;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use rayon::prelude::*;
use serde_json::{Value, json};

use crate::sys::{Fresh, Sampler};
use crate::tools::{CSYNC2_NODES, Setup, Tool};

/// The tools, in the report's order.
const TOOLS: [&str; 5] = ["snapsync", "csync2", "rsync", "unison", "syncthing"];
/// The size of the directory the rename row moves.
const RENAME_FILES: usize = 1000;

fn env_num(k: &str, d: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn env_flag(k: &str, d: bool) -> bool {
    std::env::var(k).map(|v| !matches!(v.as_str(), "" | "0")).unwrap_or(d)
}

fn quick() -> bool {
    env_flag("SNAPSYNC_BENCH_QUICK", false)
}

/// Repetitions of the no-change and one-changed-file runs.
pub fn repeats() -> usize {
    env_num("SNAPSYNC_BENCH_REPEATS", if quick() { 3 } else { 5 }).max(1)
}

fn main() {
    if let Some(json) = std::env::var_os("SNAPSYNC_BENCH_RENDER") {
        let text = std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("{}: {e}", Path::new(&json).display()));
        let v: Value = serde_json::from_str(&text).expect("a cluster.json");
        publish(&v);
        return;
    }
    // First, while this process has one thread.
    let netns = if env_flag("SNAPSYNC_BENCH_NETNS", true) {
        match sys::private_network() {
            Ok(()) => "a network namespace of its own: loopback counters count this run alone".to_owned(),
            Err(e) => format!("the machine's network namespace ({e}): loopback counters include other traffic"),
        }
    } else {
        "the machine's network namespace (SNAPSYNC_BENCH_NETNS=0): loopback counters include other traffic".to_owned()
    };
    let q = quick();
    let first_files = env_num("SNAPSYNC_BENCH_FIRST_FILES", if q { 2000 } else { 20_000 });
    let many_files = env_num("SNAPSYNC_BENCH_FILES", if q { 0 } else { 100_000 });
    let big_mib = env_num("SNAPSYNC_BENCH_BIG_MIB", if q { 64 } else { 1024 }) as u64;
    let quic_mib = env_num("SNAPSYNC_BENCH_QUIC_MIB", if q { 128 } else { 1024 }) as u64;
    let watch_samples = env_num("SNAPSYNC_BENCH_WATCH_SAMPLES", if q { 5 } else { 20 });
    let scale_files = env_num("SNAPSYNC_BENCH_SCALE_FILES", if q { 5000 } else { 1_000_000 });
    let store_files = env_num("SNAPSYNC_BENCH_STORE_FILES", if q { 500 } else { 5000 });
    let allow_loop = env_flag("SNAPSYNC_BENCH_LOOP", true);
    let mut skip: Vec<String> = std::env::var("SNAPSYNC_BENCH_SKIP")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if env_flag("SNAPSYNC_BENCH_SKIP_CSYNC2", false) {
        skip.push("csync2".into());
    }

    let snapsync = snapsync_binary();
    let load_start = sys::loadavg();
    let started = SystemTime::now();
    let base = std::env::var_os("SNAPSYNC_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-work"));
    std::fs::create_dir_all(&base).unwrap();
    let work = tempfile::tempdir_in(&base).unwrap();
    println!("snapsync: {}", snapsync.display());
    println!("work directory: {}", work.path().display());
    println!("network: {netns}");

    let tools: Vec<Tool> = TOOLS.iter().map(|t| Tool::detect(t, &snapsync, &skip)).collect();
    for t in &tools {
        match &t.found {
            Ok(v) => println!("{}: {v}", t.name),
            Err(e) => println!("{}: not measured: {e}", t.name),
        }
    }
    let sampler = Sampler::start();

    let specs = [
        TreeSpec { name: "first", shape: Shape { files: first_files, lo: 300, hi: 256 * 1024, seed: 20 } },
        TreeSpec { name: "many", shape: Shape { files: many_files, lo: 100, hi: 8 * 1024, seed: 100 } },
    ];
    let mut trees = Vec::new();
    let mut fs_kind = String::new();
    for spec in specs.iter().filter(|s| s.shape.files > 0) {
        let files = spec.shape.files;
        println!("\n==== {} tree: {files} files ====", spec.name);
        println!("\n== floors ==");
        let fl = floors::tree_floors(work.path(), spec, allow_loop);
        fs_kind = fl["filesystem"].as_str().unwrap_or("").to_owned();
        let mut per_tool = serde_json::Map::new();
        let mut bytes = fl["tree_bytes"].as_u64().unwrap_or(0);
        for t in tools.iter().filter(|t| t.found.is_ok()) {
            println!("\n== {}: {files} files ==", t.name);
            let r = measure(t, work.path(), spec, allow_loop, watch_samples, &sampler);
            bytes = bytes.max(r["tree_bytes"].as_u64().unwrap_or(0));
            per_tool.insert(t.name.to_owned(), r);
        }
        trees.push(json!({
            "name": spec.name,
            "files": files,
            "bytes": bytes,
            "file_sizes": format!("{} B to {} KiB, log-uniform", spec.shape.lo, spec.shape.hi / 1024),
            "floors": fl,
            "tools": per_tool,
        }));
    }

    println!("\n==== one large file: {big_mib} MiB ====");
    let mut big = serde_json::Map::new();
    for t in tools.iter().filter(|t| t.found.is_ok()) {
        println!("\n== {}: one {big_mib} MiB file ==", t.name);
        big.insert(t.name.to_owned(), big_file(t, work.path(), big_mib << 20, allow_loop, &sampler));
    }

    println!("\n==== QUIC on loopback ====");
    let quic = floors::quic(work.path(), quic_mib << 20);
    println!("  {quic}");

    let scale = if scale_files > 0 && tools.iter().any(|t| t.name == "snapsync" && t.found.is_ok()) {
        println!("\n==== one node, {scale_files} files ====");
        let shape = Shape { files: scale_files, lo: 100, hi: 8 * 1024, seed: 1000 };
        scale::measure(&snapsync, work.path(), &shape, allow_loop, &sampler)
    } else {
        Value::Null
    };

    let store_space = if store_files > 0 {
        println!("\n==== store space: {store_files} files, three generations ====");
        common::store_space::both(store_files)
    } else {
        Value::Null
    };

    let secs_since = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let v = json!({
        "quick": q,
        "started_unix": secs_since(started),
        "finished_unix": secs_since(SystemTime::now()),
        "load_start": load_start,
        "load_end": sys::loadavg(),
        "load_max_1min": sys::max_load(),
        "machine": sys::machine(&base),
        "network": netns,
        "filesystem": fs_kind,
        "snapsync_binary": snapsync.display().to_string(),
        "repeats": repeats(),
        "tools": tools.iter().map(|t| (t.name.to_owned(), match &t.found {
            Ok(v) => json!({"version": v}),
            Err(e) => json!({"skipped": e}),
        })).collect::<serde_json::Map<_, _>>(),
        "trees": trees,
        "big_file": { "bytes": big_mib << 20, "tools": big },
        "quic_floor": quic,
        "scale": scale,
        "store_space": store_space,
        "commands": commands(),
    });
    drop(sampler);
    common::save("cluster", &v);
    publish(&v);
    // The other tools' failures are reported, not fatal: a machine may
    // lack what they need. snapsync's mean the bench or snapsync broke.
    let snap_errors = v["trees"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| &t["tools"]["snapsync"])
        .chain([&v["big_file"]["tools"]["snapsync"], &v["scale"]])
        .any(|r| r["errors"].as_array().is_some_and(|e| !e.is_empty()));
    if snap_errors {
        eprintln!("snapsync failed in this run: see the report's FAILED lines");
        std::process::exit(1);
    }
}

/// The command line that reproduces this run (its environment knobs).
fn commands() -> Vec<String> {
    let mut env: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("SNAPSYNC_BENCH_") && k != "SNAPSYNC_BENCH_WRITE_DOC")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.sort();
    env.push("cargo bench --bench cluster".into());
    vec![
        "sudo apt-get install -y csync2 rsync unison syncthing python3-matplotlib".into(),
        "cargo build --release".into(),
        env.join(" "),
    ]
}

/// Writes the report and the chart next to the JSON, and to docs/ when
/// asked.
fn publish(v: &Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    std::fs::create_dir_all(&dir).unwrap();
    let md = report::markdown(v);
    let md_path = dir.join("cluster.md");
    std::fs::write(&md_path, &md).unwrap();
    println!("\n{md}");
    println!("report written to {}", md_path.display());
    let json_path = dir.join("cluster-render.json");
    std::fs::write(&json_path, serde_json::to_string(v).unwrap()).unwrap();
    let png = dir.join("cluster.png");
    let chart = chart(&json_path, &png);
    match &chart {
        Ok(()) => println!("chart written to {}", png.display()),
        Err(e) => println!("no chart: {e}"),
    }
    if env_flag("SNAPSYNC_BENCH_WRITE_DOC", false) {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::write(docs.join("benchmarks.md"), &md).unwrap();
        if chart.is_ok() {
            std::fs::copy(&png, docs.join("benchmarks.png")).unwrap();
        }
        println!("written to docs/benchmarks.md and docs/benchmarks.png");
    }
}

/// Draws the chart with `benches/cluster/chart.py` (python3 and
/// matplotlib); the reason when it cannot.
fn chart(json: &Path, png: &Path) -> Result<(), String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/cluster/chart.py");
    // Debian's python3 first: its python3-matplotlib is where the
    // reproduction commands install matplotlib.
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| Command::new(p).args(["-c", "import matplotlib"]).output().is_ok_and(|o| o.status.success()))
        .ok_or("python3 with matplotlib not found (apt-get install python3-matplotlib)")?;
    sys::run(Command::new(python).arg(script).arg(json).arg(png), &[0]).map(|_| ())
}

// ---------------------------------------------------------------- the work

/// A tree to measure on.
pub struct TreeSpec {
    pub name: &'static str,
    pub shape: Shape,
}

/// A generated tree's shape.
pub struct Shape {
    pub files: usize,
    pub lo: u64,
    pub hi: u64,
    pub seed: u64,
}

impl Shape {
    /// An upper bound of the tree's size.
    fn max_bytes(&self) -> u64 {
        self.files as u64 * self.hi.min(self.lo.max(1) * 64).max(self.hi / 4) + (64 << 20)
    }
}

/// Runs of one piece of work: times, loopback bytes, the commands' peak
/// memory.
#[derive(Default)]
struct Work {
    runs: Vec<Duration>,
    wire: Vec<u64>,
    counters: Vec<Value>,
}

impl Work {
    fn to_json(&self) -> Value {
        json!({
            "runs_s": self.runs.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>(),
            "median_s": median(&self.runs).map(|d| d.as_secs_f64()),
            "wire_bytes": self.wire,
            "wire_bytes_median": median_u64(&self.wire),
            "counters": self.counters,
        })
    }
}

/// Everything measured for one tool on one tree.
struct Run {
    setup: Box<dyn Setup>,
    works: BTreeMap<&'static str, Work>,
    commands: BTreeMap<String, (u64, Duration)>,
}

impl Run {
    /// One timed sync, recorded as a run of `work`.
    fn sync(&mut self, work: &'static str) -> Result<Duration, String> {
        let lo = sys::lo_bytes();
        let before = self.setup.counters();
        let t = Instant::now();
        let exits = self.setup.sync()?;
        let elapsed = t.elapsed();
        let wire = sys::lo_bytes() - lo;
        let after = self.setup.counters();
        let w = self.works.entry(work).or_default();
        w.runs.push(elapsed);
        w.wire.push(wire);
        if !before.is_null() {
            w.counters.push(json!({"before": before, "after": after}));
        }
        // CPU time from wait4(2); peak memory from the sampler, as
        // wait4's ru_maxrss also counts the memory of this process that
        // the child had before its exec.
        for e in exits {
            self.commands.entry(format!("{} (command)", e.program)).or_default().1 += e.cpu;
        }
        println!("  {work}: {:.3} s, {} on loopback", elapsed.as_secs_f64(), human_bytes(wire));
        Ok(elapsed)
    }

    fn verify(&self, every: usize, extra: &[PathBuf]) -> Result<(), String> {
        let trees = self.setup.trees();
        for other in &trees[1..] {
            let (files, bytes) = verify(&trees[0], other, every, extra)?;
            println!("  verified {}: {files} files, {}", other.display(), human_bytes(bytes));
        }
        Ok(())
    }

    fn to_json(&self) -> Value {
        Value::Object(self.works.iter().map(|(k, w)| ((*k).to_owned(), w.to_json())).collect())
    }
}

/// Peak memory and CPU time of every process of a run: VmHWM as sampled;
/// the commands' CPU time from wait4(2), the daemons' as sampled; and a
/// daemon's resident memory when it was stopped, after all its work.
fn processes(commands: &BTreeMap<String, (u64, Duration)>, sampler: &Sampler) -> Value {
    let mut all: BTreeMap<String, (u64, Duration, Option<u64>)> =
        commands.iter().map(|(k, (h, c))| (k.clone(), (*h, *c, None))).collect();
    for (label, hwm, cpu, rss) in sampler.take() {
        // Daemons' labels name their node in parentheses; other processes
        // go by command name, and those wait4 measured are left to it.
        let daemon = label.contains('(');
        let key = if daemon { label.clone() } else { format!("{label} (command)") };
        let exact_cpu = commands.contains_key(&key);
        let e = all.entry(key).or_default();
        e.0 = e.0.max(hwm);
        if !exact_cpu {
            e.1 += cpu;
        }
        if daemon && !label.ends_with("(forked)") {
            e.2 = Some(rss);
        }
    }
    all.into_iter()
        .filter(|(_, (peak, _, _))| *peak > 0)
        .map(|(p, (peak, cpu, end))| {
            json!({"process": p, "peak_rss_bytes": peak, "cpu_s": cpu.as_secs_f64(), "end_rss_bytes": end})
        })
        .collect()
}

/// The whole list of work for `tool` on a fresh copy of `spec`'s tree.
fn measure(tool: &Tool, base: &Path, spec: &TreeSpec, allow_loop: bool, samples: usize, sampler: &Sampler) -> Value {
    let size = spec.shape.max_bytes() * tool.copies() * 2 + (1 << 30);
    let fresh = Fresh::new(base, &format!("{}-{}", tool.name, spec.name), size, allow_loop);
    let mut out = json!({ "filesystem": fresh.kind });
    let setup = match tool.setup(&fresh.path) {
        Ok(s) => s,
        Err(e) => {
            println!("  {} set-up failed: {e}", tool.name);
            out["errors"] = json!([e]);
            return out;
        }
    };
    let mut run = Run { setup, works: BTreeMap::new(), commands: BTreeMap::new() };
    let a = run.setup.trees()[0].clone();
    let (t, tree) = common::time(|| generate(&a, &spec.shape));
    println!("  generated {} files, {} in {:.1?}", tree.files.len(), human_bytes(tree.bytes), t);
    out["tree_bytes"] = json!(tree.bytes);
    syncfs(&a);
    out["before_start"] = run.setup.before_start();
    sampler.take();
    let mut errors = Vec::new();
    if let Err(e) = work_list(&mut run, &tree, samples, &mut out) {
        println!("  {} FAILED: {e}", tool.name);
        errors.push(e);
    }
    out["works"] = run.to_json();
    drop(run.setup);
    out["processes"] = processes(&run.commands, sampler);
    out["errors"] = json!(errors);
    drop(fresh);
    out
}

fn work_list(run: &mut Run, tree: &Tree, samples: usize, out: &mut Value) -> Result<(), String> {
    let a = run.setup.trees()[0].clone();
    run.setup.start()?;
    run.sync("first")?;
    run.verify(50, &[])?;
    for _ in 0..repeats() {
        run.sync("no_change")?;
    }
    let victims = victims(tree);
    for v in &victims {
        touch_content(&a.join(v));
        run.sync("one_change")?;
    }
    run.verify(1000, &victims)?;
    // 1%: every hundredth file, outside the directory the rename moves.
    let changed: Vec<PathBuf> = tree.files[tree.rename_files..].iter().step_by(100).cloned().collect();
    for p in &changed {
        touch_content(&a.join(p));
    }
    run.sync("pct1_change")?;
    run.verify(1000, &changed)?;
    out["pct1_files"] = json!(changed.len());
    // One directory of `rename_files` files gets a new name.
    let (from, to) = (a.join(&tree.rename_dir), a.join(format!("{}-renamed", tree.rename_dir.display())));
    std::fs::rename(&from, &to).map_err(|e| format!("rename {}: {e}", from.display()))?;
    run.sync("rename_dir")?;
    run.verify(200, &[])?;
    out["rename_dir_files"] = json!(tree.rename_files);
    if let Some(w) = run.setup.watch(&victims, samples) {
        out["watch"] = w?;
    }
    Ok(())
}

/// A tree of one large file of incompressible bytes: its first sync and
/// a one-byte edit in its middle.
fn big_file(tool: &Tool, base: &Path, bytes: u64, allow_loop: bool, sampler: &Sampler) -> Value {
    let fresh = Fresh::new(base, &format!("{}-big", tool.name), bytes * tool.copies() * 2 + (1 << 30), allow_loop);
    let mut out = json!({ "filesystem": fresh.kind });
    let setup = match tool.setup(&fresh.path) {
        Ok(s) => s,
        Err(e) => {
            out["errors"] = json!([e]);
            return out;
        }
    };
    let mut run = Run { setup, works: BTreeMap::new(), commands: BTreeMap::new() };
    let a = run.setup.trees()[0].clone();
    let file = a.join("large.bin");
    {
        let mut f = std::fs::File::create(&file).unwrap();
        let mut rng = common::Rng(7);
        let mut left = bytes;
        while left > 0 {
            let n = left.min(8 << 20);
            f.write_all(&rng.bytes(n as usize)).unwrap();
            left -= n;
        }
    }
    let old = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_times(std::fs::FileTimes::new().set_modified(old)))
        .unwrap();
    syncfs(&a);
    sampler.take();
    let r = (|| -> Result<(), String> {
        run.setup.start()?;
        run.sync("first")?;
        run.verify(1, &[])?;
        // One byte in the middle, written in place.
        let f = std::fs::File::options().write(true).open(&file).map_err(|e| e.to_string())?;
        std::os::unix::fs::FileExt::write_all_at(&f, &[0x5a], bytes / 2).map_err(|e| e.to_string())?;
        drop(f);
        run.sync("one_byte_edit")?;
        run.verify(1, &[])
    })();
    out["works"] = run.to_json();
    drop(run.setup);
    out["processes"] = processes(&run.commands, sampler);
    out["errors"] = json!(r.err().into_iter().collect::<Vec<_>>());
    drop(fresh);
    out
}

/// Flushes the filesystem holding `path`, so what a tool measures is not
/// the generator's writeback.
fn syncfs(path: &Path) {
    if let Ok(f) = std::fs::File::open(path) {
        use std::os::fd::AsRawFd as _;
        // SAFETY: syncfs(2) on an open descriptor.
        unsafe { libc::syncfs(f.as_raw_fd()) };
    }
}

pub fn median(v: &[Duration]) -> Option<Duration> {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied()
}

fn median_u64(v: &[u64]) -> Option<u64> {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied()
}

pub fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

// ---------------------------------------------------------------- trees

/// Relative paths of a generated tree's files, and its total size.
pub struct Tree {
    pub files: Vec<PathBuf>,
    pub bytes: u64,
    /// The directory the rename row moves, and how many files it holds
    /// (its files are `files[..rename_files]`).
    rename_dir: PathBuf,
    rename_files: usize,
}

/// Tokens of the text-like files: enough repetition for zstd to find.
const WORDS: &[&str] = &[
    "function", "return", "const", "let", "var", "if", "else", "for", "while", "this", "new", "null", "true", "false",
    "import", "export", "from", "class", "extends", "async", "await", "=>", "{", "}", "(", ")", ";", "=", "+", ".",
    ",", "\n", "color:", "margin:", "padding:", "px;", "div", "span", "0", "1", "#fff", "@media",
];

/// Writes `shape.files` files below `root`: the first 1,000 (half of a
/// smaller tree) in one directory, `d00/r000`, for the rename row; the
/// rest 100 to a directory, three levels deep. Every file's mtime is an
/// hour back (so no file is racily clean and any later edit changes it).
pub fn generate(root: &Path, shape: &Shape) -> Tree {
    let mut rng = common::Rng(shape.seed | 1);
    let mut files = Vec::with_capacity(shape.files);
    let mut bytes = 0u64;
    let rename_files = RENAME_FILES.min(shape.files / 2);
    let rename_dir = PathBuf::from("d00/r000");
    std::fs::create_dir_all(root.join(&rename_dir)).unwrap();
    for i in 0..shape.files {
        let dir = if i < rename_files {
            rename_dir.clone()
        } else {
            PathBuf::from(format!("d{:02}/e{:03}", i / 10_000, (i / 100) % 100))
        };
        if i == rename_files || i % 100 == 0 {
            std::fs::create_dir_all(root.join(&dir)).unwrap();
        }
        let len = rng.size(shape.lo, shape.hi);
        let (data, ext) = if rng.next() % 10 < 4 { (text(&mut rng, len), "js") } else { (rng.bytes(len), "bin") };
        let rel = dir.join(format!("asset-{i:06}.{ext}"));
        std::fs::write(root.join(&rel), data).unwrap();
        bytes += len as u64;
        files.push(rel);
    }
    let old = SystemTime::now() - Duration::from_secs(3600);
    files.par_iter().for_each(|p| {
        let f = std::fs::File::options().write(true).open(root.join(p)).unwrap();
        f.set_times(std::fs::FileTimes::new().set_modified(old)).unwrap();
    });
    Tree { files, bytes, rename_dir, rename_files }
}

/// `len` bytes of text: tokens, and every fourth one a random identifier.
fn text(rng: &mut common::Rng, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 16);
    while v.len() < len {
        let r = rng.next();
        if r.is_multiple_of(4) {
            let _ = write!(v, "x{:06x} ", (r >> 8) & 0xff_ffff);
        } else {
            v.extend_from_slice(WORDS[(r >> 8) as usize % WORDS.len()].as_bytes());
            v.push(b' ');
        }
    }
    v.truncate(len);
    v
}

/// The files to change in the one-changed-file runs: spread over the
/// tree, outside the directory the rename moves.
fn victims(tree: &Tree) -> Vec<PathBuf> {
    let rest = &tree.files[tree.rename_files..];
    let n = rest.len();
    (0..repeats()).map(|k| rest[(n / 3 + k * 7919) % n].clone()).collect()
}

/// Changes one byte in the middle of `path` (same size, new mtime).
pub fn touch_content(path: &Path) {
    let mut data = std::fs::read(path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x5a;
    std::fs::write(path, data).unwrap();
}

/// Checks that `other` holds the same tree as `a`: the same entries with
/// the same sizes, and equal content for every `every`-th file and for
/// `extra`. Returns the file count and bytes.
fn verify(a: &Path, other: &Path, every: usize, extra: &[PathBuf]) -> Result<(usize, u64), String> {
    let want = listing(a);
    let got = listing(other);
    if want != got {
        let missing = want.keys().find(|k| got.get(*k) != want.get(*k));
        let surplus = got.keys().find(|k| !want.contains_key(*k));
        return Err(format!(
            "{} differs from {}: {} entries vs {}; first missing or different: {missing:?}; first surplus: {surplus:?}",
            other.display(),
            a.display(),
            got.len(),
            want.len()
        ));
    }
    let files: Vec<&PathBuf> = want.iter().filter(|(_, s)| s.is_some()).map(|(p, _)| p).collect();
    let sample: Vec<&PathBuf> = files.iter().step_by(every.max(1)).copied().chain(extra.iter()).collect();
    for p in sample {
        let (x, y) = (std::fs::read(a.join(p)), std::fs::read(other.join(p)));
        match (x, y) {
            (Ok(x), Ok(y)) if blake3::hash(&x) == blake3::hash(&y) => {}
            _ => return Err(format!("{} differs from {}", other.join(p).display(), a.join(p).display())),
        }
    }
    let bytes = want.values().flatten().sum();
    Ok((files.len(), bytes))
}

/// Every entry below `root`: relative path to file size (`None`: directory).
pub fn listing(root: &Path) -> BTreeMap<PathBuf, Option<u64>> {
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Option<u64>>) {
        let Ok(rd) = std::fs::read_dir(root.join(rel)) else { return };
        for e in rd.flatten() {
            let rel = rel.join(e.file_name());
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                out.insert(rel.clone(), None);
                walk(root, &rel, out);
            } else {
                out.insert(rel, Some(md.len()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out);
    out
}

// ---------------------------------------------------------------- binaries and hosts

/// The snapsync binary: the one Cargo built for this bench, else the one
/// next to the bench executable, else `target/release/snapsync`.
fn snapsync_binary() -> PathBuf {
    let mut candidates: Vec<PathBuf> = option_env!("CARGO_BIN_EXE_snapsync").map(PathBuf::from).into_iter().collect();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent().and_then(Path::parent)
    {
        candidates.push(dir.join("snapsync"));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/snapsync"));
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("no snapsync binary found: run `cargo build --release` first (looked for target/release/snapsync)")
    })
}

/// Makes every csync2 node name resolve to its own loopback address,
/// appending to `/etc/hosts` what is missing.
pub fn ensure_hosts() -> Result<(), String> {
    let hosts = std::fs::read_to_string("/etc/hosts").map_err(|e| format!("/etc/hosts: {e}"))?;
    let mut add = String::new();
    for (name, ip) in CSYNC2_NODES {
        let listed = hosts.lines().any(|l| {
            let l = l.split('#').next().unwrap_or("");
            l.split_whitespace().skip(1).any(|w| w == name)
        });
        if !listed {
            let _ = writeln!(add, "{ip} {name}");
        }
    }
    if !add.is_empty() {
        std::fs::OpenOptions::new()
            .append(true)
            .open("/etc/hosts")
            .and_then(|mut f| f.write_all(add.as_bytes()))
            .map_err(|e| format!("cannot add csync2's node names to /etc/hosts ({e}); add these lines:\n{add}"))?;
        println!("added to /etc/hosts:\n{}", add.trim_end());
    }
    for (name, ip) in CSYNC2_NODES {
        let got: Vec<SocketAddr> =
            (name, 0).to_socket_addrs().map_err(|e| format!("{name} does not resolve: {e}"))?.collect();
        if !got.iter().any(|a| a.ip() == ip) {
            return Err(format!("{name} resolves to {got:?}, not {ip}: fix /etc/hosts"));
        }
    }
    Ok(())
}
