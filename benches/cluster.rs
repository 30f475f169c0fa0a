//! Cluster sync side by side with csync2 (SPEC §8): three nodes on
//! loopback addresses, the same generated tree for both tools, and the
//! same work timed for each: a first sync to two empty peers, a no-change
//! sync and a sync of one changed file. Also where snapsync's first sync
//! spends its time: the local check alone, the transfer, bytes and
//! throughput, one peer against two.
//!
//! Terms:
//! - The *first tree*: `SNAPSYNC_BENCH_FIRST_FILES` asset-like files
//!   (default 20000, about 0.7 GiB; 300 B to 256 KiB, log-uniform), for the
//!   first-sync row.
//! - The *many tree*: `SNAPSYNC_BENCH_FILES` small files (default 100000,
//!   about 1.8 KiB average), for the no-change and one-changed-file rows;
//!   each tool first syncs it once (reported as a row too).
//! - Content is deterministic: 60% of files are xorshift bytes (images,
//!   fonts: incompressible), 40% are text-like tokens (scripts, styles:
//!   zstd shrinks them a few times, csync2 sends them as they are).
//!
//! `SNAPSYNC_BENCH_WATCH_SAMPLES` sets how many single-file changes the
//! watch-mode latency row takes (default 20, for its p50 and p99);
//! `SNAPSYNC_BENCH_SKIP_CSYNC2=1` measures snapsync alone;
//! `SNAPSYNC_BENCH_PEER_SPLIT=0` skips the one-peer/two-peer transfers;
//! `SNAPSYNC_BENCH_DIR` moves the work directory (default
//! `target/bench-work`, on disk, not tmpfs). csync2 needs its node names in
//! `/etc/hosts` (`csbench-a` .. `csbench-c` on 127.0.0.31 .. 33): they are
//! appended when missing. Results go to `target/bench-results/cluster.txt`
//! and `cluster.json`.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use rayon::prelude::*;
use serde_json::{Value, json};

/// How long a daemon may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a daemon may take to exit after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Repetitions of the no-change and one-changed-file runs.
const REPEATS: usize = 5;
/// The snapsync nodes' addresses.
const SNAP_NODES: [(&str, Ipv4Addr); 3] =
    [("a", Ipv4Addr::new(127, 0, 0, 21)), ("b", Ipv4Addr::new(127, 0, 0, 22)), ("c", Ipv4Addr::new(127, 0, 0, 23))];
/// The csync2 nodes' names and addresses (csync2 resolves names itself).
const CSYNC2_NODES: [(&str, Ipv4Addr); 3] = [
    ("csbench-a", Ipv4Addr::new(127, 0, 0, 31)),
    ("csbench-b", Ipv4Addr::new(127, 0, 0, 32)),
    ("csbench-c", Ipv4Addr::new(127, 0, 0, 33)),
];
/// csync2's config name (`-C`): csync2 allows only `[a-z0-9]+`.
const CSYNC2_CONFIG: &str = "snapbench";

fn main() {
    let env_num = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let env_flag = |k: &str, d: bool| std::env::var(k).map(|v| !matches!(v.as_str(), "" | "0")).unwrap_or(d);
    let first_files = env_num("SNAPSYNC_BENCH_FIRST_FILES", 20_000);
    let many_files = env_num("SNAPSYNC_BENCH_FILES", 100_000);
    let skip_csync2 = env_flag("SNAPSYNC_BENCH_SKIP_CSYNC2", false);
    let peer_split = env_flag("SNAPSYNC_BENCH_PEER_SPLIT", true);

    let snapsync = snapsync_binary();
    // Other work on the machine skews wall-clock figures: record it.
    let load_start = loadavg();
    let base = std::env::var_os("SNAPSYNC_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-work"));
    std::fs::create_dir_all(&base).unwrap();
    let work = tempfile::tempdir_in(&base).unwrap();
    println!("snapsync: {}", snapsync.display());
    println!("work directory: {}", work.path().display());

    let csync2 = if skip_csync2 {
        Err("skipped (SNAPSYNC_BENCH_SKIP_CSYNC2)".to_owned())
    } else {
        Csync2::find().and_then(|c| ensure_hosts().map(|()| c))
    };
    match &csync2 {
        Ok(c) => println!("csync2: {} ({})", c.bin.display(), c.version),
        Err(e) => println!("csync2: not measured: {e}"),
    }

    let shape_first = Shape { files: first_files, lo: 300, hi: 256 * 1024, seed: 20 };
    let shape_many = Shape { files: many_files, lo: 100, hi: 8 * 1024, seed: 100 };
    let mut snap = Figures::default();
    let mut cs = Figures::default();
    let mut details = Details::default();

    println!("\n== snapsync: first sync, {first_files} files ==");
    if let Err(e) =
        snapsync_first(&snapsync, &work.path().join("ss-first"), &shape_first, peer_split, &mut snap, &mut details)
    {
        println!("snapsync first sync failed: {e}");
        snap.errors.push(e);
    }
    if let Ok(c) = &csync2 {
        println!("\n== csync2: first sync, {first_files} files ==");
        if let Err(e) = c.first(&work.path().join("cs-first"), &shape_first, &mut cs) {
            println!("csync2 first sync failed: {e}");
            cs.errors.push(e);
        }
    }
    println!("\n== snapsync: {many_files} files: first, no-change, one changed ==");
    if let Err(e) = snapsync_many(&snapsync, &work.path().join("ss-many"), &shape_many, &mut snap, &mut details) {
        println!("snapsync {many_files}-file runs failed: {e}");
        snap.errors.push(e);
    }
    if let Ok(c) = &csync2 {
        println!("\n== csync2: {many_files} files: first, no-change, one changed ==");
        if let Err(e) = c.many(&work.path().join("cs-many"), &shape_many, &mut cs) {
            println!("csync2 {many_files}-file runs failed: {e}");
            cs.errors.push(e);
        }
    }

    let report =
        report(&snap, &cs, &details, csync2.as_ref().map_err(Clone::clone), first_files, many_files, &load_start);
    println!("\n{report}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    std::fs::create_dir_all(&dir).unwrap();
    let txt = dir.join("cluster.txt");
    std::fs::write(&txt, &report).unwrap();
    println!("results written to {}", txt.display());
    common::save(
        "cluster",
        &json!({
            "first_files": first_files,
            "many_files": many_files,
            "csync2": cs.to_json(),
            "snapsync": snap.to_json(),
            "snapsync_details": details.to_json(),
        }),
    );
}

// ---------------------------------------------------------------- figures

/// What one tool measured; `None` where a step failed or did not run.
#[derive(Default)]
struct Figures {
    /// First sync of the first tree, to two empty peers.
    first: Option<Duration>,
    /// The first tree's size.
    first_bytes: u64,
    /// First sync of the many tree.
    many_first: Option<Duration>,
    /// The many tree's size.
    many_bytes: u64,
    /// No-change sync of the many tree, every run.
    no_change: Vec<Duration>,
    /// One changed file among the many tree, every run.
    one_change: Vec<Duration>,
    /// CPU time (user + system) per run of each piece of work, by process:
    /// work, then (process, CPU time).
    cpu: Vec<(String, Vec<(String, Duration)>)>,
    /// What went wrong.
    errors: Vec<String>,
}

impl Figures {
    fn to_json(&self) -> Value {
        let s = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        let all = |v: &[Duration]| v.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>();
        json!({
            "first_sync_s": s(self.first),
            "first_tree_bytes": self.first_bytes,
            "many_first_sync_s": s(self.many_first),
            "many_tree_bytes": self.many_bytes,
            "no_change_sync_median_s": s(median(&self.no_change)),
            "no_change_sync_runs_s": all(&self.no_change),
            "one_change_sync_median_s": s(median(&self.one_change)),
            "one_change_sync_runs_s": all(&self.one_change),
            "cpu_per_run_s": self.cpu.iter().map(|(w, parts)| {
                json!({"work": w, "cpu_s": parts.iter().map(|(p, c)| json!({"process": p, "s": c.as_secs_f64()})).collect::<Vec<_>>()})
            }).collect::<Vec<_>>(),
            "errors": self.errors,
        })
    }
}

/// Where snapsync's time goes.
#[derive(Default)]
struct Details {
    /// `check` of a's first tree alone on a fresh state: scan, chunk, hash.
    check: Option<Duration>,
    /// What that check read.
    check_bytes_read: u64,
    /// Chunk bytes (stored form) b and c received in the first sync.
    received: Vec<(String, u64, u64)>,
    /// Entries each peer applied in the first sync.
    pushed: Vec<(String, u64)>,
    /// Transfer to b alone, a's check already done (first tree).
    one_peer: Option<Duration>,
    /// Transfer to b and c, a's check already done (first tree).
    two_peers: Option<Duration>,
    /// Chunk bytes b received in the one-peer run.
    one_peer_bytes: u64,
    /// No-change `check` of the many tree, alone (through a's daemon).
    many_check: Vec<Duration>,
    /// No-change `sync` of the many tree with a's daemon watching.
    watch_no_change: Vec<Duration>,
    /// With a's daemon watching: from a file's change on a until both
    /// peers hold it.
    watch_latency: Vec<Duration>,
}

impl Details {
    fn received_total(&self) -> u64 {
        self.received.iter().map(|r| r.1).sum()
    }

    fn to_json(&self) -> Value {
        let s = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        json!({
            "check_s": s(self.check),
            "check_bytes_read": self.check_bytes_read,
            "received": self.received.iter().map(|(p, b, c)| json!({"peer": p, "bytes": b, "chunks": c})).collect::<Vec<_>>(),
            "pushed": self.pushed.iter().map(|(p, n)| json!({"peer": p, "entries": n})).collect::<Vec<_>>(),
            "one_peer_transfer_s": s(self.one_peer),
            "one_peer_bytes": self.one_peer_bytes,
            "two_peer_transfer_s": s(self.two_peers),
            "many_no_change_check_median_s": s(median(&self.many_check)),
            "watch_no_change_sync_median_s": s(median(&self.watch_no_change)),
            "watch_change_to_peers_s": self.watch_latency.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>(),
            "watch_change_to_peers_p50_s": s(quantile(&self.watch_latency, 0.5)),
            "watch_change_to_peers_p99_s": s(quantile(&self.watch_latency, 0.99)),
        })
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default()
}

fn median(v: &[Duration]) -> Option<Duration> {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied()
}

/// The `q` quantile (0 < q <= 1) of `v`, nearest rank.
fn quantile(v: &[Duration], q: f64) -> Option<Duration> {
    let mut v = v.to_vec();
    v.sort();
    let rank = ((q * v.len() as f64).ceil() as usize).max(1);
    v.get(rank - 1).copied()
}

fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.3} s", d.as_secs_f64())).unwrap_or_else(|| "-".to_owned())
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

fn mib_s(bytes: u64, d: Duration) -> String {
    format!("{:.0} MiB/s", bytes as f64 / 1048576.0 / d.as_secs_f64())
}

fn report(
    snap: &Figures,
    cs: &Figures,
    d: &Details,
    csync2: Result<&Csync2, String>,
    first_files: usize,
    many_files: usize,
    load_start: &str,
) -> String {
    let mut o = String::new();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let _ = writeln!(o, "cluster sync, 3 nodes on loopback, {cpus} CPUs, Linux {}", kernel.trim());
    let _ = writeln!(o, "load average at start: {}; at end: {}", load_start.trim(), loadavg().trim());
    match &csync2 {
        Ok(c) => {
            let _ = writeln!(
                o,
                "csync2: {} (plain TCP: `nossl * *`, which favours csync2; snapsync uses QUIC + TLS 1.3)",
                c.version
            );
        }
        Err(e) => {
            let _ = writeln!(o, "csync2: not measured: {e}");
        }
    }
    let _ = writeln!(o, "trees freshly written (warm page cache); times are wall clock of the initiating command;");
    let _ = writeln!(o, "the three nodes share this machine's CPUs: work done on b and c competes with a's\n");
    let _ = writeln!(o, "{:<52} {:>10} {:>10} {:>8} {:>7}", "work", "csync2", "snapsync", "ratio", "target");
    let row = |o: &mut String, what: String, c: Option<Duration>, s: Option<Duration>, target: &str| {
        let ratio = match (c, s) {
            (Some(c), Some(s)) => format!("{:.1}x", c.as_secs_f64() / s.as_secs_f64()),
            _ => "-".to_owned(),
        };
        let _ = writeln!(o, "{what:<52} {:>10} {:>10} {ratio:>8} {target:>7}", secs(c), secs(s));
    };
    let first_bytes = snap.first_bytes.max(cs.first_bytes);
    let many_bytes = snap.many_bytes.max(cs.many_bytes);
    row(&mut o, format!("first sync {first_files} files/{} to 2 peers", gib(first_bytes)), cs.first, snap.first, "10x");
    row(
        &mut o,
        format!("no-change sync {many_files} files (median of {REPEATS})"),
        median(&cs.no_change),
        median(&snap.no_change),
        "5x",
    );
    row(
        &mut o,
        format!("one changed file among {many_files} (median of {REPEATS})"),
        median(&cs.one_change),
        median(&snap.one_change),
        "5x",
    );
    row(
        &mut o,
        format!("first sync {many_files} files/{} to 2 peers", gib(many_bytes)),
        cs.many_first,
        snap.many_first,
        "10x",
    );
    let runs = |v: &[Duration]| v.iter().map(|d| format!("{:.3}", d.as_secs_f64())).collect::<Vec<_>>().join(" ");
    let _ =
        writeln!(o, "\nall runs (s): no-change csync2 [{}] snapsync [{}]", runs(&cs.no_change), runs(&snap.no_change));
    let _ =
        writeln!(o, "              one-change csync2 [{}] snapsync [{}]", runs(&cs.one_change), runs(&snap.one_change));

    let _ = writeln!(o, "\nsnapsync, first sync of {first_files} files ({}):", gib(snap.first_bytes));
    if let Some(c) = d.check {
        let _ = writeln!(
            o,
            "  check of a's tree alone, fresh state (walk+read+chunk+hash): {:.3} s, {} read, {}",
            c.as_secs_f64(),
            gib(d.check_bytes_read),
            mib_s(d.check_bytes_read, c)
        );
    }
    if let Some(s) = snap.first {
        let _ = writeln!(o, "  whole first sync (check + transfer to b and c + apply):  {:.3} s", s.as_secs_f64());
    }
    for (peer, bytes, chunks) in &d.received {
        let _ = writeln!(
            o,
            "  chunk bytes received by {peer} (stored, zstd where it helps): {} in {chunks} chunks",
            gib(*bytes)
        );
    }
    for (peer, n) in &d.pushed {
        let _ = writeln!(o, "  entries {peer} applied: {n}");
    }

    if let (Some(s), Some(c)) = (snap.first, d.check)
        && s > c
    {
        let t = s - c;
        let _ = writeln!(
            o,
            "  estimate: sync minus check = {:.3} s for transfer+apply; throughput {} of chunk bytes, {} of file bytes (2 peers)",
            t.as_secs_f64(),
            mib_s(d.received_total(), t),
            mib_s(2 * snap.first_bytes, t)
        );
    }
    if let Some(t) = d.one_peer {
        let _ = writeln!(
            o,
            "  sync to 1 peer (b, emptied; a's check no-change):  {:.3} s, {} of chunk bytes",
            t.as_secs_f64(),
            mib_s(d.one_peer_bytes, t)
        );
    }
    if let Some(t) = d.two_peers {
        let _ = writeln!(o, "  sync to 2 peers (b, c emptied; a's check no-change): {:.3} s", t.as_secs_f64());
    }
    if let (Some(nc), Some(check)) = (median(&snap.no_change), median(&d.many_check)) {
        let _ = writeln!(o, "\nsnapsync, {many_files} files, no change:");
        let _ = writeln!(o, "  check alone (through a's daemon, median of {REPEATS}): {:.3} s", check.as_secs_f64());
        let _ = writeln!(
            o,
            "  sync (median of {REPEATS}): {:.3} s; estimate of the peer comparison, sync minus check: {:.3} s",
            nc.as_secs_f64(),
            nc.as_secs_f64() - check.as_secs_f64()
        );
    }
    if let Some(nc) = median(&d.watch_no_change) {
        let _ = writeln!(o, "\nsnapsync, {many_files} files, a's daemon running `serve --watch`:");
        let _ = writeln!(o, "  no-change sync (median of {REPEATS}, no walk): {:.3} s", nc.as_secs_f64());
        let _ = writeln!(
            o,
            "  one changed file, from the write until both peers hold it ({} changes): p50 {}, p99 {}, max {}",
            d.watch_latency.len(),
            secs(quantile(&d.watch_latency, 0.5)),
            secs(quantile(&d.watch_latency, 0.99)),
            secs(d.watch_latency.iter().max().copied())
        );
    }
    let _ = writeln!(o, "\nCPU time (user+system) per run, by process (snapsync: the daemons; csync2: `csync2 -x`");
    let _ = writeln!(o, "only, its receiving daemons fork per connection and are not counted):");
    for (tool, f) in [("snapsync", snap), ("csync2", cs)] {
        for (work, parts) in &f.cpu {
            let parts = parts.iter().map(|(p, c)| format!("{p} {:.2} s", c.as_secs_f64())).collect::<Vec<_>>();
            let _ = writeln!(o, "  {tool:<8} {work:<24} {}", parts.join(", "));
        }
    }
    for (tool, f) in [("snapsync", snap), ("csync2", cs)] {
        for e in &f.errors {
            let _ = writeln!(o, "\n{tool} FAILED: {e}");
        }
    }
    o
}

// ---------------------------------------------------------------- trees

/// A generated tree's shape.
struct Shape {
    files: usize,
    lo: u64,
    hi: u64,
    seed: u64,
}

/// Relative paths of a generated tree's files, and its total size.
struct Tree {
    files: Vec<PathBuf>,
    bytes: u64,
}

/// Tokens of the text-like files: enough repetition for zstd to find.
const WORDS: &[&str] = &[
    "function", "return", "const", "let", "var", "if", "else", "for", "while", "this", "new", "null", "true", "false",
    "import", "export", "from", "class", "extends", "async", "await", "=>", "{", "}", "(", ")", ";", "=", "+", ".",
    ",", "\n", "color:", "margin:", "padding:", "px;", "div", "span", "0", "1", "#fff", "@media",
];

/// Writes `shape.files` files below `root`, 100 to a directory, three
/// levels deep, every file's mtime an hour back (so no file is racily
/// clean and any later edit changes it).
fn generate(root: &Path, shape: &Shape) -> Tree {
    let mut rng = common::Rng(shape.seed | 1);
    let mut files = Vec::with_capacity(shape.files);
    let mut bytes = 0u64;
    for i in 0..shape.files {
        let dir = PathBuf::from(format!("d{:02}/e{:03}", i / 10_000, (i / 100) % 100));
        if i % 100 == 0 {
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
    Tree { files, bytes }
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

/// The files to change in the one-changed-file runs: spread over the tree.
fn victims(tree: &Tree) -> Vec<PathBuf> {
    let n = tree.files.len();
    (0..REPEATS).map(|k| tree.files[(n / 3 + k * 7919) % n].clone()).collect()
}

/// Changes one byte in the middle of `path` (same size, new mtime).
fn touch_content(path: &Path) {
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
fn listing(root: &Path) -> BTreeMap<PathBuf, Option<u64>> {
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

fn verify_peers(dir: &Path, nodes: &[&str], every: usize, extra: &[PathBuf]) -> Result<(), String> {
    let a = dir.join(nodes[0]).join("tree");
    for n in &nodes[1..] {
        let (files, bytes) = verify(&a, &dir.join(n).join("tree"), every, extra)?;
        println!("  verified {n}: {files} files, {} equal to a's", gib(bytes));
    }
    Ok(())
}

// ---------------------------------------------------------------- processes

/// Runs `cmd` to completion; its time and stdout, or why it failed.
/// Exit statuses in `ok` count as success.
fn run(cmd: &mut Command, ok: &[i32]) -> Result<(Duration, String), String> {
    let what = format!("{cmd:?}");
    let t = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{what}: cannot start: {e}"))?;
    let elapsed = t.elapsed();
    let code = out.status.code().unwrap_or(-1);
    if !ok.contains(&code) {
        return Err(format!(
            "{what} exited with {}: stderr: {}; stdout: {}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 2000),
            tail(&String::from_utf8_lossy(&out.stdout), 1000)
        ));
    }
    Ok((elapsed, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn tail(s: &str, n: usize) -> &str {
    let mut at = s.len().saturating_sub(n);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    s[at..].trim()
}

/// A daemon, stopped with SIGTERM when dropped (also on a panic).
struct Daemon {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` with stderr to `log` and waits for a stdout line
    /// starting with `ready`, for at most [`READY_TIMEOUT`].
    fn start(mut cmd: Command, name: &str, ready: &'static str, log: PathBuf) -> Result<Daemon, String> {
        let err = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{what}: cannot start: {e}"))?;
        let out = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        // Reads to the end, so the daemon never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line.starts_with(ready) {
                    let _ = tx.send(line);
                }
            }
        });
        let mut daemon = Daemon { name: name.to_owned(), child: Some(child), log };
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(_) => Ok(daemon),
            Err(e) => {
                daemon.stop();
                Err(format!("{what} did not say {ready:?} ({e}); its log: {}", daemon.log_tail()))
            }
        }
    }

    fn log_tail(&self) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 2000).to_owned()
    }

    /// CPU time (user + system, all threads) the daemon used so far.
    fn cpu(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.as_ref()?.id())).ok()?;
        // Fields after the parenthesised command name; utime and stime are
        // fields 14 and 15 of stat(5), in clock ticks.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Some(Duration::from_millis(ticks * 1000 / hz))
    }

    /// SIGTERM, then a bounded wait, then SIGKILL.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < EXIT_TIMEOUT {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        eprintln!("{} did not exit {EXIT_TIMEOUT:?} after SIGTERM; killing it", self.name);
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// CPU time each daemon has used so far.
fn daemons_cpu(daemons: &[Daemon]) -> Vec<(String, Option<Duration>)> {
    daemons.iter().map(|d| (d.name.clone(), d.cpu())).collect()
}

/// CPU used per run since `before`, over `runs` runs.
fn daemons_cpu_since(daemons: &[Daemon], before: &[(String, Option<Duration>)], runs: u32) -> Vec<(String, Duration)> {
    daemons_cpu(daemons)
        .into_iter()
        .zip(before)
        .filter_map(|((n, now), (_, then))| Some((n, now?.saturating_sub((*then)?) / runs.max(1))))
        .collect()
}

/// CPU time of this process's reaped children (user + system).
fn children_cpu() -> Duration {
    // SAFETY: getrusage only writes into the zeroed struct it is given.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u
    };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// A UDP port free on every address in `ips` right now.
fn free_udp_port(ips: &[Ipv4Addr]) -> u16 {
    for _ in 0..50 {
        let s = UdpSocket::bind((ips[0], 0)).unwrap();
        let port = s.local_addr().unwrap().port();
        if ips[1..].iter().all(|ip| UdpSocket::bind((*ip, port)).is_ok()) {
            return port;
        }
    }
    panic!("no UDP port free on all of {ips:?}");
}

/// A TCP port free on every address in `ips` right now.
fn free_tcp_port(ips: &[Ipv4Addr]) -> u16 {
    for _ in 0..50 {
        let s = TcpListener::bind((ips[0], 0)).unwrap();
        let port = s.local_addr().unwrap().port();
        if ips[1..].iter().all(|ip| TcpListener::bind((*ip, port)).is_ok()) {
            return port;
        }
    }
    panic!("no TCP port free on all of {ips:?}");
}

// ---------------------------------------------------------------- snapsync

/// The release binary: the one Cargo built for this bench, else the one
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

/// Three snapsync nodes sharing one config, in `dir/{a,b,c}`.
struct SnapCluster {
    bin: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    daemons: Vec<Daemon>,
}

impl SnapCluster {
    fn new(bin: &Path, dir: &Path) -> Result<SnapCluster, String> {
        for (n, _) in SNAP_NODES {
            std::fs::create_dir_all(dir.join(n).join("tree")).unwrap();
        }
        let key = dir.join("key");
        run(Command::new(bin).arg("keygen").arg(&key), &[0])?;
        let port = free_udp_port(&SNAP_NODES.map(|n| n.1));
        let on = SNAP_NODES.map(|(n, _)| format!("on {n}: {}/{n}/tree;", dir.display())).join(" ");
        let hosts = SNAP_NODES.map(|(n, ip)| format!("{n}@{ip}:{port}")).join(" ");
        let text = format!(
            "prefix tree {{ {on} }}\ngroup g {{\n  host {hosts};\n  key {};\n  include %tree%;\n}}\n",
            key.display()
        );
        let config = dir.join("cluster.cfg");
        std::fs::write(&config, text).unwrap();
        Ok(SnapCluster { bin: bin.to_owned(), dir: dir.to_owned(), config, daemons: Vec::new() })
    }

    fn tree(&self, node: &str) -> PathBuf {
        self.dir.join(node).join("tree")
    }

    /// `snapsync --config CFG -N node -D state ...`.
    fn cmd(&self, node: &str, state: &Path) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--config").arg(&self.config).arg("-N").arg(node).arg("-D").arg(state);
        c
    }

    fn state(&self, node: &str) -> PathBuf {
        self.dir.join(node).join("state")
    }

    /// A command run by `node`'s daemon (forwarded through its socket).
    fn at(&self, node: &str, args: &[&str]) -> Command {
        let mut c = self.cmd(node, &self.state(node));
        c.args(args);
        c
    }

    fn start(&mut self, node: &str) -> Result<(), String> {
        self.start_args(node, &[])
    }

    /// Starts `node`'s daemon as `serve ARGS`.
    fn start_args(&mut self, node: &str, args: &[&str]) -> Result<(), String> {
        let mut cmd = self.cmd(node, &self.state(node));
        cmd.arg("serve").args(args);
        let log = self.dir.join(format!("{node}.log"));
        self.daemons.push(Daemon::start(cmd, node, "snapsync serve:", log)?);
        Ok(())
    }

    fn start_all(&mut self) -> Result<(), String> {
        SNAP_NODES.iter().try_for_each(|(n, _)| self.start(n))
    }

    fn stop(&mut self, node: &str) {
        self.daemons.retain(|d| d.name != node);
    }

    /// Stops `node`, deletes its tree and state (node key included), and
    /// starts it again empty; a forgets its pinned key.
    fn empty(&mut self, node: &str) -> Result<(), String> {
        self.stop(node);
        std::fs::remove_dir_all(self.tree(node)).unwrap();
        std::fs::remove_dir_all(self.state(node)).unwrap();
        std::fs::create_dir_all(self.tree(node)).unwrap();
        self.start(node)?;
        run(&mut self.at("a", &["trust", "--peer", node]), &[0])?;
        Ok(())
    }

    /// `served` counters of `node`'s daemon (`status --json`).
    fn served(&self, node: &str) -> Result<Value, String> {
        let (_, out) = run(&mut self.at(node, &["--json", "status"]), &[0, 3])?;
        let v: Value = serde_json::from_str(&out).map_err(|e| format!("status --json on {node}: {e}: {out}"))?;
        Ok(v["served"].clone())
    }
}

fn snapsync_first(
    bin: &Path,
    dir: &Path,
    shape: &Shape,
    peer_split: bool,
    f: &mut Figures,
    d: &mut Details,
) -> Result<(), String> {
    let mut cl = SnapCluster::new(bin, dir)?;
    let (t, tree) = common::time(|| generate(&cl.tree("a"), shape));
    println!("  generated {} files, {} in {:.1?}", tree.files.len(), gib(tree.bytes), t);
    f.first_bytes = tree.bytes;

    // The local part alone: a check of the same tree on a fresh state.
    let scratch = dir.join("check-state");
    let (t, out) = run(cl.cmd("a", &scratch).args(["--json", "check"]), &[0])?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("check --json: {e}"))?;
    d.check = Some(t);
    d.check_bytes_read = v["groups"][0]["stats"]["bytes_read"].as_u64().unwrap_or(0);
    println!("  check alone: {:.3} s ({} read)", t.as_secs_f64(), gib(d.check_bytes_read));
    std::fs::remove_dir_all(&scratch).unwrap();

    cl.start_all()?;
    let before = daemons_cpu(&cl.daemons);
    let (t, out) = run(&mut cl.at("a", &["--json", "sync"]), &[0])?;
    f.first = Some(t);
    f.cpu.push(("first sync (first tree)".into(), daemons_cpu_since(&cl.daemons, &before, 1)));
    println!("  first sync: {:.3} s", t.as_secs_f64());
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("sync --json: {e}: {}", tail(&out, 500)))?;
    for p in v["peers"].as_array().into_iter().flatten() {
        if let Some(e) = p["error"].as_str() {
            return Err(format!("first sync with {}: {e}", p["peer"]));
        }
        let n = p["pushed"].as_array().map_or(0, |a| a.len() as u64) + p["pushed_more"].as_u64().unwrap_or(0);
        d.pushed.push((p["peer"].as_str().unwrap_or("?").to_owned(), n));
    }
    verify_peers(dir, &["a", "b", "c"], 50, &[])?;
    for peer in ["b", "c"] {
        let s = cl.served(peer)?;
        let bytes = s["bytes_received"].as_u64().unwrap_or(0);
        let chunks = s["chunks_received"].as_u64().unwrap_or(0);
        println!("  {peer} received {} in {chunks} chunks", gib(bytes));
        d.received.push((peer.to_owned(), bytes, chunks));
    }

    if peer_split {
        // The transfer alone, to one peer and to two: b and c emptied, so
        // a's check finds nothing new and the sync is all transfer.
        cl.empty("b")?;
        cl.empty("c")?;
        let (t, _) = run(&mut cl.at("a", &["-q", "sync", "--peer", "b"]), &[0])?;
        println!("  sync to b alone: {:.3} s", t.as_secs_f64());
        verify_peers(dir, &["a", "b"], 50, &[])?;
        d.one_peer = Some(t);
        d.one_peer_bytes = cl.served("b")?["bytes_received"].as_u64().unwrap_or(0);
        cl.empty("b")?;
        let (t, _) = run(&mut cl.at("a", &["-q", "sync"]), &[0])?;
        println!("  sync to b and c: {:.3} s", t.as_secs_f64());
        verify_peers(dir, &["a", "b", "c"], 50, &[])?;
        d.two_peers = Some(t);
    }
    drop(cl);
    std::fs::remove_dir_all(dir).unwrap();
    Ok(())
}

fn snapsync_many(bin: &Path, dir: &Path, shape: &Shape, f: &mut Figures, d: &mut Details) -> Result<(), String> {
    let mut cl = SnapCluster::new(bin, dir)?;
    let (t, tree) = common::time(|| generate(&cl.tree("a"), shape));
    println!("  generated {} files, {} in {:.1?}", tree.files.len(), gib(tree.bytes), t);
    f.many_bytes = tree.bytes;
    cl.start_all()?;
    let before = daemons_cpu(&cl.daemons);
    let (t, _) = run(&mut cl.at("a", &["-q", "sync"]), &[0])?;
    println!("  first sync: {:.3} s", t.as_secs_f64());
    f.many_first = Some(t);
    f.cpu.push(("first sync (many tree)".into(), daemons_cpu_since(&cl.daemons, &before, 1)));
    verify_peers(dir, &["a", "b", "c"], 200, &[])?;

    let before = daemons_cpu(&cl.daemons);
    for _ in 0..REPEATS {
        let (t, _) = run(&mut cl.at("a", &["-q", "sync"]), &[0])?;
        f.no_change.push(t);
    }
    f.cpu.push(("no-change sync".into(), daemons_cpu_since(&cl.daemons, &before, REPEATS as u32)));
    println!("  no-change sync: median {}", secs(median(&f.no_change)));
    for _ in 0..REPEATS {
        let (t, _) = run(&mut cl.at("a", &["-q", "check"]), &[0])?;
        d.many_check.push(t);
    }
    println!("  no-change check alone: median {}", secs(median(&d.many_check)));

    let victims = victims(&tree);
    let before = daemons_cpu(&cl.daemons);
    for v in &victims {
        touch_content(&cl.tree("a").join(v));
        let (t, _) = run(&mut cl.at("a", &["-q", "sync"]), &[0])?;
        f.one_change.push(t);
    }
    f.cpu.push(("one changed file".into(), daemons_cpu_since(&cl.daemons, &before, REPEATS as u32)));
    println!("  one changed file: median {}", secs(median(&f.one_change)));
    verify_peers(dir, &["a", "b", "c"], 1000, &victims)?;

    // The same with a's daemon watching its tree (SPEC §8: no walk).
    cl.stop("a");
    cl.start_args("a", &["--watch"])?;
    let log = cl.dir.join("a.log");
    let start = Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("sync run: full reconcile") {
        if start.elapsed() > READY_TIMEOUT * 10 {
            return Err("a's watcher did not finish its first full reconcile".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..REPEATS {
        let (t, _) = run(&mut cl.at("a", &["-q", "sync"]), &[0])?;
        d.watch_no_change.push(t);
    }
    println!("  no-change sync, watching: median {}", secs(median(&d.watch_no_change)));
    // Changes one at a time, a moment apart: each its own watch run.
    let samples: usize = std::env::var("SNAPSYNC_BENCH_WATCH_SAMPLES").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    for v in victims.iter().cycle().take(samples) {
        std::thread::sleep(Duration::from_millis(200));
        touch_content(&cl.tree("a").join(v));
        let want = std::fs::read(cl.tree("a").join(v)).unwrap();
        let start = Instant::now();
        while ["b", "c"].iter().any(|n| std::fs::read(cl.tree(n).join(v)).is_ok_and(|got| got != want)) {
            if start.elapsed() > Duration::from_secs(60) {
                return Err(format!("{} did not reach the peers within 60 s of its change", v.display()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        d.watch_latency.push(start.elapsed());
    }
    println!(
        "  one changed file, watching: from the write to both peers, p50 {}, p99 {}",
        secs(quantile(&d.watch_latency, 0.5)),
        secs(quantile(&d.watch_latency, 0.99))
    );
    drop(cl);
    std::fs::remove_dir_all(dir).unwrap();
    Ok(())
}

// ---------------------------------------------------------------- csync2

/// The csync2 binary and its version line.
struct Csync2 {
    bin: PathBuf,
    version: String,
}

/// Makes every csync2 node name resolve to its own loopback address,
/// appending to `/etc/hosts` what is missing.
fn ensure_hosts() -> Result<(), String> {
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

impl Csync2 {
    fn find() -> Result<Csync2, String> {
        let bin =
            std::env::var_os("SNAPSYNC_BENCH_CSYNC2").map(PathBuf::from).unwrap_or_else(|| "/usr/sbin/csync2".into());
        if !bin.is_file() {
            return Err(format!("{} not found (apt-get install -y csync2)", bin.display()));
        }
        // Without arguments csync2 prints its help, version first.
        let out = Command::new(&bin).stdin(Stdio::null()).output().map_err(|e| format!("{}: {e}", bin.display()))?;
        let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        let mut version =
            text.lines().find(|l| l.starts_with("csync2 ")).unwrap_or("csync2 (unknown version)").to_owned();
        if let Ok(o) = Command::new("dpkg-query").args(["-W", "-f", "${Version}", "csync2"]).output()
            && o.status.success()
        {
            let _ = write!(version, "; Debian package {}", String::from_utf8_lossy(&o.stdout));
        }
        Ok(Csync2 { bin, version })
    }

    fn first(&self, dir: &Path, shape: &Shape, f: &mut Figures) -> Result<(), String> {
        let mut cl = CsCluster::new(self, dir)?;
        let (t, tree) = common::time(|| generate(&cl.tree(0), shape));
        println!("  generated {} files, {} in {:.1?}", tree.files.len(), gib(tree.bytes), t);
        f.first_bytes = tree.bytes;
        cl.start_all()?;
        let before = children_cpu();
        let (t, _) = run(&mut cl.sync(), &[0])?;
        println!("  first sync: {:.3} s", t.as_secs_f64());
        f.first = Some(t);
        f.cpu.push(("first sync (first tree)".into(), vec![("csync2 -x".into(), children_cpu() - before)]));
        verify_peers(dir, &["a", "b", "c"], 50, &[])?;
        drop(cl);
        std::fs::remove_dir_all(dir).unwrap();
        Ok(())
    }

    fn many(&self, dir: &Path, shape: &Shape, f: &mut Figures) -> Result<(), String> {
        let mut cl = CsCluster::new(self, dir)?;
        let (t, tree) = common::time(|| generate(&cl.tree(0), shape));
        println!("  generated {} files, {} in {:.1?}", tree.files.len(), gib(tree.bytes), t);
        f.many_bytes = tree.bytes;
        cl.start_all()?;
        let before = children_cpu();
        let (t, _) = run(&mut cl.sync(), &[0])?;
        println!("  first sync: {:.3} s", t.as_secs_f64());
        f.many_first = Some(t);
        f.cpu.push(("first sync (many tree)".into(), vec![("csync2 -x".into(), children_cpu() - before)]));
        verify_peers(dir, &["a", "b", "c"], 200, &[])?;
        let before = children_cpu();
        for _ in 0..REPEATS {
            let (t, _) = run(&mut cl.sync(), &[0])?;
            f.no_change.push(t);
        }
        f.cpu.push(("no-change sync".into(), vec![("csync2 -x".into(), (children_cpu() - before) / REPEATS as u32)]));
        println!("  no-change sync: median {}", secs(median(&f.no_change)));
        let victims = victims(&tree);
        let before = children_cpu();
        for v in &victims {
            touch_content(&cl.tree(0).join(v));
            let (t, _) = run(&mut cl.sync(), &[0])?;
            f.one_change.push(t);
        }
        f.cpu.push(("one changed file".into(), vec![("csync2 -x".into(), (children_cpu() - before) / REPEATS as u32)]));
        println!("  one changed file: median {}", secs(median(&f.one_change)));
        verify_peers(dir, &["a", "b", "c"], 1000, &victims)?;
        drop(cl);
        std::fs::remove_dir_all(dir).unwrap();
        Ok(())
    }
}

/// Three csync2 nodes in `dir/{a,b,c}`: trees, database directories, and
/// `dir/etc` as `CSYNC2_SYSTEM_DIR` holding the config.
struct CsCluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    daemons: Vec<Daemon>,
}

impl CsCluster {
    fn new(cs: &Csync2, dir: &Path) -> Result<CsCluster, String> {
        let short = ["a", "b", "c"];
        for n in short {
            std::fs::create_dir_all(dir.join(n).join("tree")).unwrap();
            std::fs::create_dir_all(dir.join(n).join("db")).unwrap();
        }
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        let key = dir.join("key");
        run(Command::new(&cs.bin).arg("-k").arg(&key), &[0])?;
        let on = (0..3)
            .map(|i| format!("on {}: {}/{}/tree;", CSYNC2_NODES[i].0, dir.display(), short[i]))
            .collect::<Vec<_>>();
        let hosts = CSYNC2_NODES.map(|n| n.0).join(" ");
        let text = format!(
            "nossl * *;\nprefix tree {{ {} }}\ngroup g {{\n  host {hosts};\n  key {};\n  include %tree%;\n}}\n",
            on.join(" "),
            key.display()
        );
        std::fs::write(dir.join("etc").join(format!("csync2_{CSYNC2_CONFIG}.cfg")), text).unwrap();
        let port = free_tcp_port(&CSYNC2_NODES.map(|n| n.1));
        Ok(CsCluster { bin: cs.bin.clone(), dir: dir.to_owned(), port, daemons: Vec::new() })
    }

    fn tree(&self, i: usize) -> PathBuf {
        self.dir.join(["a", "b", "c"][i]).join("tree")
    }

    /// `-N name -D db -C snapbench -p PORT` for node `i`.
    fn args(&self, i: usize) -> Vec<std::ffi::OsString> {
        let db = self.dir.join(["a", "b", "c"][i]).join("db");
        let port = self.port.to_string();
        [
            "-N".as_ref(),
            CSYNC2_NODES[i].0.as_ref(),
            "-D".as_ref(),
            db.as_os_str(),
            "-C".as_ref(),
            CSYNC2_CONFIG.as_ref(),
        ]
        .into_iter()
        .chain(["-p".as_ref(), port.as_ref()])
        .map(std::ffi::OsStr::to_owned)
        .collect()
    }

    /// `csync2 -x` on a: check everything, push what is dirty to b and c.
    /// The config's directory is `CSYNC2_SYSTEM_DIR`.
    fn sync(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("CSYNC2_SYSTEM_DIR", self.dir.join("etc")).args(self.args(0)).arg("-x");
        c
    }

    /// The stand-alone daemons (`-ii`), each bound to its own address by
    /// `-N` (a's is never used: the initiator only pushes; it runs for
    /// symmetry). csync2 prints its ready line through stdio's buffer, so
    /// it runs under `stdbuf -o0`.
    fn start_all(&mut self) -> Result<(), String> {
        for (i, (name, _)) in CSYNC2_NODES.iter().enumerate() {
            let mut cmd = Command::new("stdbuf");
            cmd.env("CSYNC2_SYSTEM_DIR", self.dir.join("etc")).arg("-o0").arg(&self.bin).args(self.args(i)).arg("-ii");
            let log = self.dir.join(format!("{name}.log"));
            self.daemons.push(Daemon::start(cmd, name, "Csync2 daemon running", log)?);
        }
        Ok(())
    }
}
