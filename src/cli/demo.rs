//! `snapsync demo`: a three-node cluster on this machine, at work.
//!
//! It lays out a demo directory with the configuration in
//! `fixtures/demo/snapsync.cfg` (three nodes, `alpha`, `beta` and `gamma`,
//! on loopback addresses 127.0.0.1-3, their trees kept apart through a
//! `%demo%` prefix), a generated sample tree on `alpha`, starts one
//! `snapsync serve` daemon per node, and runs the commands a user would:
//! a first sync, a change travelling, a no-change sync, a conflict and its
//! resolution, generations and a restore. Every command is printed as it
//! would be typed, with its output. The daemons are stopped at the end;
//! the directory stays for a look around.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::engine::Engine;

const CONFIG: &str = include_str!("../../fixtures/demo/snapsync.cfg");

const NODES: [(&str, &str); 3] = [("alpha", "127.0.0.1"), ("beta", "127.0.0.2"), ("gamma", "127.0.0.3")];

/// How long a daemon may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The demo's daemons; stopped (SIGTERM, then waited for) when dropped.
struct Daemons(Vec<Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SAFETY: sending a signal to a child process this demo started.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

struct Demo {
    exe: PathBuf,
    cfg: PathBuf,
    state: PathBuf,
}

impl Demo {
    fn tree(&self, node: &str) -> PathBuf {
        self.cfg.with_file_name(node).join("www")
    }

    fn command(&self, node: &str, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.arg("--config").arg(&self.cfg).args(["-N", node, "-D"]).arg(&self.state).args(args);
        c.env("RUST_LOG", "error");
        c
    }

    /// The command line that runs `args` as `node`, as one can paste it.
    fn shown(&self, node: &str, args: &[&str]) -> String {
        let words = [
            self.exe.to_string_lossy().into_owned(),
            "--config".into(),
            self.cfg.to_string_lossy().into_owned(),
            "-N".into(),
            node.into(),
            "-D".into(),
            self.state.to_string_lossy().into_owned(),
        ];
        words
            .iter()
            .map(String::as_str)
            .chain(args.iter().copied())
            .map(|w| String::from_utf8_lossy(&crate::engine::shell_quote(w.as_bytes())).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs `snapsync ARGS` as `node`, printing the command line (as one
    /// can paste it) and its output; returns the exit status.
    fn run(&self, node: &str, args: &[&str]) -> Result<i32> {
        println!("$ {}", self.shown(node, args));
        let out = self.command(node, args).output().context("running snapsync")?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            println!("  {line}");
        }
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            println!("  {line}");
        }
        let code = out.status.code().unwrap_or(1);
        if code != 0 {
            println!("  (exit status {code})");
        }
        Ok(code)
    }

    fn start(&self) -> Result<Daemons> {
        let mut daemons = Daemons(Vec::new());
        let (tx, rx) = mpsc::channel();
        for (node, _) in NODES {
            let mut child = self
                .command(node, &["serve"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting a daemon")?;
            let stdout = child.stdout.take().expect("piped");
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = BufReader::new(stdout).read_line(&mut line);
                let _ = tx.send(line);
            });
            daemons.0.push(child);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        for _ in NODES {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("snapsync serve:") => println!("  {}", line.trim_end()),
                Ok(_) => bail!("a daemon exited before it was ready (is another snapsync using the port?)"),
                Err(_) => bail!("the daemons did not start within {START_TIMEOUT:?}"),
            }
        }
        Ok(daemons)
    }
}

/// Runs the demo in `dir` (a fresh directory under the system temp
/// directory when `None`).
pub fn run(dir: Option<&Path>) -> Result<()> {
    // A directory of its own is removed at the end; one the user named
    // is kept.
    let keep = dir.is_some();
    let dir = match dir {
        Some(d) => Engine::absolute_path(d),
        None => std::env::temp_dir().join(format!("snapsync-demo-{}", std::process::id())),
    };
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} is not empty; name a new directory with --dir", dir.display());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let port = free_port()?;
    let cfg = dir.join("snapsync.cfg");
    std::fs::write(&cfg, CONFIG.replace("@DEMO@", &dir.to_string_lossy()).replace("@PORT@", &port.to_string()))?;
    crate::key::write_new(&dir.join("demo.key"))?;
    let demo = Demo { exe: std::env::current_exe()?, cfg, state: dir.join("state") };
    for (node, _) in NODES {
        std::fs::create_dir_all(demo.tree(node))?;
    }
    let files = write_sample_tree(&demo.tree("alpha"))?;

    step("start one daemon per node (each owns its state; commands go through it)");
    let daemons = demo.start()?;

    step("first sync from alpha: beta and gamma get the whole tree");
    demo.run("alpha", &["sync", "-q"])?;
    for (node, _) in NODES {
        println!("  {node}: {} files", count_files(&demo.tree(node)));
    }
    println!("  (alpha's two excluded files, cache/ and *.tmp, stay on alpha)");

    step("a change on beta travels to alpha and gamma");
    let edited = demo.tree("beta").join(files[0].strip_prefix(demo.tree("alpha"))?);
    std::fs::OpenOptions::new().append(true).open(&edited)?.write_all(b"one more line from beta\n")?;
    std::fs::remove_file(demo.tree("beta").join(files[1].strip_prefix(demo.tree("alpha"))?))?;
    demo.run("beta", &["sync"])?;

    step("nothing changed: one root comparison per peer");
    let t = Instant::now();
    demo.run("gamma", &["sync"])?;
    println!("  took {:.0?}", t.elapsed());

    step("alpha and gamma edit the same file differently: a conflict, nothing overwritten");
    let rel = files[2].strip_prefix(demo.tree("alpha"))?;
    std::fs::write(demo.tree("alpha").join(rel), b"alpha's version\n")?;
    std::fs::write(demo.tree("gamma").join(rel), b"gamma's version\n")?;
    demo.run("alpha", &["sync"])?;
    demo.run("gamma", &["conflicts"])?;

    step("gamma's version wins: force it, sync again");
    let gamma_copy = demo.tree("gamma").join(rel);
    demo.run("gamma", &["force", &gamma_copy.to_string_lossy()])?;
    demo.run("gamma", &["sync"])?;
    for (node, _) in NODES {
        let text = std::fs::read_to_string(demo.tree(node).join(rel))?;
        println!("  {node}: {}", text.trim_end());
    }

    step("beta's generations: every applied change is restorable");
    demo.run("beta", &["generations"])?;
    demo.run("beta", &["history", &edited.to_string_lossy()])?;
    let listed = demo.command("beta", &["--json", "generations"]).output()?;
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).context("reading generations")?;
    let oldest = listed["generations"][0]["id"].as_u64().context("beta has no generation")?.to_string();
    let restored = dir.join("restored");
    demo.run("beta", &["restore", "--generation", &oldest, "--to", &restored.to_string_lossy(), "-q"])?;
    println!("  generation {oldest} of beta restored into {}", restored.display());

    step("stop the daemons");
    drop(daemons);

    println!();
    if !keep {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        println!("Removed {} (name a directory with `demo --dir DIR` to keep it and look around).", dir.display());
        return Ok(());
    }
    println!("Everything is in {}:", dir.display());
    println!("  config     {}", demo.cfg.display());
    for (node, addr) in NODES {
        println!("  {node:<6}     tree {}  (daemon on {addr}:{port})", demo.tree(node).display());
    }
    println!("  state      {}", demo.state.display());
    println!("  restored   {}", restored.display());
    println!("Try: {}", demo.shown("beta", &["ls"]));
    Ok(())
}

fn step(what: &str) {
    println!("\n== {what}");
}

/// A UDP port free on all three demo addresses.
fn free_port() -> Result<u16> {
    for _ in 0..20 {
        let probe = std::net::UdpSocket::bind((NODES[0].1, 0))?;
        let port = probe.local_addr()?.port();
        let free = NODES.iter().skip(1).all(|(_, a)| std::net::UdpSocket::bind((*a, port)).is_ok());
        if free {
            return Ok(port);
        }
    }
    bail!("found no UDP port free on 127.0.0.1-3")
}

fn count_files(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => n += 1,
                Err(_) => {}
            }
        }
    }
    n
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
