//! A cluster of nodes in one temporary directory, each with its own
//! loopback address, tree, state directory and (when started) `serve`
//! daemon, sharing one csync2-style config file and one group key.
//!
//! Every wait is bounded and waits for an event (the daemon's ready line,
//! a process's exit); no test depends on timing luck.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde_json::Value;

use crate::common::{Seen, snapshot};

/// How long a daemon may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a daemon may take to exit after SIGTERM or SIGKILL.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one command may run before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_snapsync");

/// Hands out a distinct /24 of 127/8 to every cluster of this process.
static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// What a cluster looks like.
#[derive(Clone, Debug)]
pub struct Setup {
    /// How many nodes, named a, b, c, ...
    pub nodes: usize,
    /// Nodes listed as receive-only (in parentheses).
    pub receive_only: Vec<&'static str>,
    /// Extra lines for the group (exclude, auto, ...).
    pub extra: String,
    /// `backup-generations N` with a shared `backup-directory` when above 0.
    pub backups: u32,
}

impl Setup {
    /// `n` plain nodes.
    pub fn nodes(n: usize) -> Setup {
        Setup { nodes: n, receive_only: Vec::new(), extra: String::new(), backups: 0 }
    }

    /// The same with `name` receive-only.
    pub fn receive_only(mut self, name: &'static str) -> Setup {
        self.receive_only.push(name);
        self
    }

    /// The same with `line` added to the group.
    pub fn extra(mut self, line: &str) -> Setup {
        self.extra.push_str(line);
        self.extra.push('\n');
        self
    }

    /// The same keeping `n` backup generations.
    pub fn backups(mut self, n: u32) -> Setup {
        self.backups = n;
        self
    }
}

/// One node of the cluster.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// Host name.
    pub name: String,
    /// Its loopback address.
    pub ip: Ipv4Addr,
    /// Its UDP port.
    pub port: u16,
    /// Listed in parentheses.
    pub receive_only: bool,
    /// The config file its commands read.
    pub config: PathBuf,
    /// Whether the shared config lists it.
    pub listed: bool,
    /// The name its commands give with `-N` (the host name unless changed
    /// with [`Cluster::name_as`]).
    pub cli_name: String,
}

impl NodeInfo {
    /// The host entry as the config writes it.
    fn entry(&self) -> String {
        let e = format!("{}@{}:{}", self.name, self.ip, self.port);
        if self.receive_only { format!("({e})") } else { e }
    }
}

/// A child process whose exit can be waited for with a bound.
struct Watched {
    child: Child,
    /// Gets a message once the process has exited (it is not reaped yet).
    exited: mpsc::Receiver<()>,
}

impl Watched {
    fn new(child: Child) -> Watched {
        let pid = child.id() as libc::pid_t;
        let (tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            // Waits for the exit without reaping, so the pid stays ours
            // until `Child::wait`.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let _ = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) };
            let _ = tx.send(());
        });
        Watched { child, exited }
    }

    /// Waits at most `limit` for the exit; the status, or `None` if the
    /// process did not exit in time (it is then killed and reaped).
    fn wait(mut self, limit: Duration) -> Option<ExitStatus> {
        let exited = self.exited.recv_timeout(limit).is_ok();
        if !exited {
            let _ = self.child.kill();
        }
        let status = self.child.wait().ok();
        if exited { status } else { None }
    }

    /// Sends `signal` and waits (bounded) for the exit, as [`Watched::wait`].
    fn signal_and_wait(self, signal: libc::c_int) -> Option<ExitStatus> {
        // The process is ours and not reaped yet (only `Child::wait`
        // reaps), so its pid cannot have been reused.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, signal);
        }
        self.wait(EXIT_TIMEOUT)
    }
}

/// A command running in the background, its output going to files.
pub struct Background {
    proc: Option<Watched>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Background {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().expect("running").child.id()
    }

    /// Waits at most `limit` for the command; panics (after killing it)
    /// if it does not end in time.
    pub fn wait(mut self, limit: Duration) -> Out {
        let status = self.proc.take().expect("running").wait(limit);
        let out = Out {
            code: status.and_then(|s| s.code()).unwrap_or(-1),
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        };
        assert!(status.is_some(), "background command did not end within {limit:?}; stderr:\n{}", out.stderr);
        out
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(p) = self.proc.take() {
            let _ = p.signal_and_wait(libc::SIGKILL);
        }
    }
}

/// The outcome of one command.
#[derive(Debug)]
pub struct Out {
    /// Exit status (-1 when killed by a signal or the timeout).
    pub code: i32,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

impl Out {
    /// Stdout parsed as JSON (`Null` when empty or not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or(Value::Null)
    }
}

/// N nodes in one temporary directory.
pub struct Cluster {
    /// Holds everything; removed on drop.
    pub dir: tempfile::TempDir,
    /// The nodes, a first.
    pub nodes: Vec<NodeInfo>,
    setup: Setup,
    /// The /24 the nodes' addresses come from.
    net: (u8, u8),
    daemons: HashMap<String, Watched>,
}

impl Cluster {
    /// A cluster of `n` plain nodes.
    pub fn new(n: usize) -> Cluster {
        Cluster::with(Setup::nodes(n))
    }

    /// A cluster laid out as `setup` says: trees, state directories, the
    /// key and the shared config. No daemon runs yet.
    pub fn with(setup: Setup) -> Cluster {
        let dir = tempfile::Builder::new().prefix("snapsync-cluster-").tempdir().expect("temp dir");
        // 127.P.Q.x: P from the process id, Q from a per-process counter,
        // x per node. Parallel tests of this process never share a /24;
        // another process gets another P unless pids collide modulo 250,
        // and the ports are free ones anyway.
        let k = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let p = (std::process::id() % 250) as u8 + 1;
        let q = (k % 250) as u8 + 1;
        let mut c = Cluster { dir, nodes: Vec::new(), setup: setup.clone(), net: (p, q), daemons: HashMap::new() };
        c.keygen(&c.key_path());
        for i in 0..setup.nodes {
            let name = ((b'a' + i as u8) as char).to_string();
            let ro = setup.receive_only.contains(&name.as_str());
            c.add_node_info(&name, ro, true);
        }
        c.write_shared_config();
        c
    }

    fn add_node_info(&mut self, name: &str, receive_only: bool, listed: bool) {
        let x = self.nodes.len() as u8 + 1;
        let ip = Ipv4Addr::new(127, self.net.0, self.net.1, x);
        let port = free_udp_port(ip);
        std::fs::create_dir_all(self.root().join(name).join("tree")).unwrap();
        std::fs::create_dir_all(self.root().join(name).join("state")).unwrap();
        let config = self.root().join("csync2.cfg");
        let cli_name = name.to_owned();
        self.nodes.push(NodeInfo { name: name.to_owned(), ip, port, receive_only, config, listed, cli_name });
    }

    /// The temporary directory.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The shared group key.
    pub fn key_path(&self) -> PathBuf {
        self.root().join("key")
    }

    /// The shared config file.
    pub fn config_path(&self) -> PathBuf {
        self.root().join("csync2.cfg")
    }

    /// A node's description.
    pub fn node(&self, name: &str) -> &NodeInfo {
        self.nodes.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    fn node_mut(&mut self, name: &str) -> &mut NodeInfo {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    /// A node's tree.
    pub fn tree(&self, name: &str) -> PathBuf {
        self.root().join(name).join("tree")
    }

    /// A node's state directory (`-D`).
    pub fn state(&self, name: &str) -> PathBuf {
        self.root().join(name).join("state")
    }

    /// A path in a node's tree.
    pub fn path(&self, name: &str, rel: &str) -> PathBuf {
        self.tree(name).join(rel)
    }

    /// The daemon log of a node (its stderr, every run appended).
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.root().join(name).join("serve.log")
    }

    /// The daemon log of a node.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// A config listing `hosts` (with their addresses), keyed by `key`,
    /// with the cluster's extras.
    pub fn config_text(&self, hosts: &[&str], key: &Path) -> String {
        let mut t = String::from("prefix tree {\n");
        for n in &self.nodes {
            writeln!(t, "  on {}: {};", n.name, self.tree(&n.name).display()).unwrap();
        }
        t.push_str("}\n\ngroup g {\n  host");
        for h in hosts {
            write!(t, " {}", self.node(h).entry()).unwrap();
        }
        t.push_str(";\n");
        writeln!(t, "  key {};", key.display()).unwrap();
        t.push_str("  include %tree%;\n");
        if self.setup.backups > 0 {
            writeln!(t, "  backup-directory {};", self.root().join("backup").display()).unwrap();
            writeln!(t, "  backup-generations {};", self.setup.backups).unwrap();
        }
        for line in self.setup.extra.lines() {
            writeln!(t, "  {line}").unwrap();
        }
        t.push_str("}\n");
        t
    }

    fn write_shared_config(&self) {
        let hosts: Vec<&str> = self.nodes.iter().filter(|n| n.listed).map(|n| n.name.as_str()).collect();
        std::fs::write(self.config_path(), self.config_text(&hosts, &self.key_path())).unwrap();
    }

    /// Gives node `name` its own config file with `text` (its state then
    /// lives under another config name: call before using the node).
    pub fn use_own_config(&mut self, name: &str, text: &str) {
        let path = self.root().join(name).join("own.cfg");
        std::fs::write(&path, text).unwrap();
        self.node_mut(name).config = path;
    }

    /// Adds a node the shared config does not list; it gets its own config
    /// listing every node and itself.
    pub fn add_outsider(&mut self, name: &str) {
        self.add_node_info(name, false, false);
        // The shared config's prefix must not change the others' paths;
        // rewriting it only adds an `on` line for the outsider.
        self.write_shared_config();
        let hosts: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let text = self.config_text(&hosts, &self.key_path());
        self.use_own_config(name, &text);
    }

    /// Makes node `name`'s commands give `-N given` (another spelling of
    /// its name, say) instead of `-N name`.
    pub fn name_as(&mut self, name: &str, given: &str) {
        self.node_mut(name).cli_name = given.to_owned();
    }

    /// Writes a new group key with `snapsync keygen` (which needs no config).
    pub fn keygen(&self, path: &Path) {
        Command::new(BIN).env_remove("RUST_LOG").arg("keygen").arg(path).timeout(COMMAND_TIMEOUT).assert().success();
    }

    /// `snapsync --config CFG -N name -D STATE` for node `name`.
    pub fn cmd(&self, name: &str) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(&self.node(name).config);
        c.arg("-N").arg(&self.node(name).cli_name);
        c.arg("-D").arg(self.state(name));
        c.env_remove("RUST_LOG");
        c.timeout(COMMAND_TIMEOUT);
        c
    }

    /// The same as a plain std command (to spawn in the background).
    pub fn std_cmd(&self, name: &str) -> std::process::Command {
        let mut c = std::process::Command::new(BIN);
        c.arg("--config").arg(&self.node(name).config);
        c.arg("-N").arg(&self.node(name).cli_name);
        c.arg("-D").arg(self.state(name));
        c.env_remove("RUST_LOG");
        c
    }

    /// Runs a command of node `name`.
    pub fn run(&self, name: &str, args: &[&str]) -> Out {
        let out = self.cmd(name).args(args).output().expect("command runs");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `status` of `name` exits 0: nothing is left to do with any peer.
    pub fn assert_status_clean(&self, name: &str) {
        let (code, v) = self.json(name, &["status"]);
        assert_eq!(code, 0, "nothing is left to do on {name}: {v:#}");
    }

    /// Runs a command of node `name` with `--json`: exit status and the
    /// document (`Null` if it printed none).
    pub fn json(&self, name: &str, args: &[&str]) -> (i32, Value) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(name, &all);
        let v = out.json();
        if v.is_null() || out.code != 0 {
            eprintln!(
                "[{name}] snapsync {all:?} exited {}\nstderr:\n{}\nstdout:\n{}",
                out.code, out.stderr, out.stdout
            );
        }
        (out.code, v)
    }

    /// `sync --json ARGS` on node `name`.
    pub fn sync(&self, name: &str, args: &[&str]) -> (i32, Value) {
        let mut all = vec!["sync"];
        all.extend_from_slice(args);
        self.json(name, &all)
    }

    /// `sync` on node `name`, which must exit 0.
    pub fn sync_ok(&self, name: &str) -> Value {
        let (code, v) = self.sync(name, &[]);
        assert_eq!(code, 0, "sync on {name} failed: {v:#}");
        v
    }

    /// `sync ARGS` on node `name`, which must exit 0.
    pub fn sync_ok_with(&self, name: &str, args: &[&str]) -> Value {
        let (code, v) = self.sync(name, args);
        assert_eq!(code, 0, "sync {args:?} on {name} failed: {v:#}");
        v
    }

    /// `check` on node `name`, which must succeed.
    pub fn check(&self, name: &str) {
        let out = self.run(name, &["check"]);
        assert_eq!(out.code, 0, "check on {name}: {}", out.stderr);
    }

    /// `conflicts --json` of node `name`: the list.
    pub fn conflicts(&self, name: &str) -> Vec<Value> {
        let (code, v) = self.json(name, &["conflicts"]);
        let list = v["conflicts"].as_array().cloned().unwrap_or_default();
        assert_eq!(code, if list.is_empty() { 0 } else { 3 }, "conflicts on {name}: {v:#}");
        list
    }

    /// `ls --json` of node `name`.
    pub fn ls(&self, name: &str) -> Value {
        let (code, v) = self.json(name, &["ls"]);
        assert_eq!(code, 0, "ls on {name}");
        v
    }

    /// Starts `snapsync ARGS` of node `name` in the background; its output
    /// goes to files in the node's directory (`tag` names them).
    pub fn spawn(&self, name: &str, tag: &str, args: &[&str]) -> Background {
        let (mut cmd, stdout, stderr) = self.background_cmd(name, tag, args);
        let child = cmd.spawn().expect("command starts");
        Background { proc: Some(Watched::new(child)), stdout, stderr }
    }

    /// Starts `snapsync ARGS` of several nodes at the same instant, as
    /// cron starts a job on many hosts in the same second: one thread per
    /// command, all released by one barrier. `runs` are (node, tag, args)
    /// as [`Cluster::spawn`] takes them.
    pub fn spawn_together(&self, runs: &[(&str, String, Vec<String>)]) -> Vec<Background> {
        let prepared: Vec<_> = runs
            .iter()
            .map(|(name, tag, args)| {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                self.background_cmd(name, tag, &args)
            })
            .collect();
        let barrier = std::sync::Barrier::new(prepared.len());
        std::thread::scope(|s| {
            let threads: Vec<_> = prepared
                .into_iter()
                .map(|(mut cmd, stdout, stderr)| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        let child = cmd.spawn().expect("command starts");
                        (child, stdout, stderr)
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| {
                    let (child, stdout, stderr) = t.join().expect("spawning thread");
                    Background { proc: Some(Watched::new(child)), stdout, stderr }
                })
                .collect()
        })
    }

    /// The command [`Cluster::spawn`] starts, and the files its output
    /// goes to.
    fn background_cmd(&self, name: &str, tag: &str, args: &[&str]) -> (std::process::Command, PathBuf, PathBuf) {
        let stdout = self.root().join(name).join(format!("{tag}.out"));
        let stderr = self.root().join(name).join(format!("{tag}.err"));
        let mut cmd = self.std_cmd(name);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap());
        (cmd, stdout, stderr)
    }

    /// Starts node `name`'s daemon and waits (bounded) for its ready line.
    pub fn start(&mut self, name: &str) {
        self.start_with(name, &[]);
    }

    /// Starts node `name`'s daemon as `serve ARGS` and waits (bounded) for
    /// its ready line.
    pub fn start_with(&mut self, name: &str, args: &[&std::ffi::OsStr]) {
        self.start_with_env(name, args, &[]);
    }

    /// Starts node `name`'s daemon with `args` after `serve`, and `env`
    /// set in its environment.
    pub fn start_with_env(&mut self, name: &str, args: &[&std::ffi::OsStr], env: &[(&str, &str)]) {
        assert!(!self.daemons.contains_key(name), "{name} already runs");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(name)).unwrap();
        let mut child = self
            .std_cmd(name)
            .envs(env.iter().copied())
            .arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("serve starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("snapsync serve:") && line.contains(" listening on ") {
                    let _ = ready_tx.send(line);
                }
            }
        });
        let daemon = Watched::new(child);
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => {
                let want = format!("{}:{}", self.node(name).ip, self.node(name).port);
                assert!(line.contains(&want), "{name} listens elsewhere: {line}");
                self.daemons.insert(name.to_owned(), daemon);
            }
            Err(e) => {
                let status = daemon.signal_and_wait(libc::SIGKILL);
                panic!("{name}: no ready line ({e:?}; exit {status:?}); log:\n{}", self.log(name));
            }
        }
    }

    /// Starts every node's daemon.
    pub fn start_all(&mut self) {
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        for n in names {
            self.start(&n);
        }
    }

    /// Waits (at most `limit`) until node `name`'s daemon log holds
    /// `what` `n` times.
    pub fn wait_for_log(&self, name: &str, what: &str, n: usize, limit: Duration) {
        let start = Instant::now();
        while self.log(name).matches(what).count() < n {
            assert!(
                start.elapsed() < limit,
                "{name} did not log {what:?} {n} times within {limit:?}:\n{}",
                self.log(name)
            );
            // The log is a file: looked at again shortly.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id of node `name`'s daemon.
    pub fn daemon_pid(&self, name: &str) -> u32 {
        self.daemons.get(name).unwrap_or_else(|| panic!("{name} does not run")).child.id()
    }

    /// Whether node `name`'s daemon runs (as far as this cluster knows).
    pub fn running(&self, name: &str) -> bool {
        self.daemons.contains_key(name)
    }

    /// Stops node `name`'s daemon with SIGTERM; it must exit 0 in time.
    pub fn stop(&mut self, name: &str) {
        let d = self.daemons.remove(name).unwrap_or_else(|| panic!("{name} does not run"));
        let status = d.signal_and_wait(libc::SIGTERM);
        assert!(
            status.is_some_and(|s| s.success()),
            "{name} did not stop cleanly on SIGTERM: {status:?}; log:\n{}",
            self.log(name)
        );
    }

    /// Kills node `name`'s daemon with SIGKILL and waits for it.
    pub fn kill(&mut self, name: &str) {
        let d = self.daemons.remove(name).unwrap_or_else(|| panic!("{name} does not run"));
        let status = d.signal_and_wait(libc::SIGKILL);
        assert!(status.is_some(), "{name} did not die on SIGKILL");
    }

    /// Waits (at most `limit`) for node `name`'s daemon to exit on its own
    /// (a kill point, say): its exit status, or `None` if it still ran
    /// (it is then killed). Either way the daemon no longer runs.
    pub fn wait_exit(&mut self, name: &str, limit: Duration) -> Option<ExitStatus> {
        let d = self.daemons.remove(name).unwrap_or_else(|| panic!("{name} does not run"));
        d.wait(limit)
    }

    /// snapsync's temporary files in node `name`'s tree, and the entries
    /// of its journal of temporaries: both empty once a run is over.
    pub fn temporaries(&self, name: &str) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = snapshot(&self.tree(name))
            .into_keys()
            .filter(|p| p.file_name().is_some_and(|f| f.as_bytes().starts_with(b".snapsync-")))
            .map(|p| self.tree(name).join(p))
            .collect();
        let journal = self.node_state_dir(name).join("incoming").join("temps");
        out.extend(std::fs::read_dir(&journal).into_iter().flat_map(|d| d.flatten().map(|e| e.path())));
        out
    }

    /// Node `name`'s state directory for its current config:
    /// `STATE/CONFIG_NAME/HOST`, as the binary names it.
    pub fn node_state_dir(&self, name: &str) -> PathBuf {
        let cfg = std::path::absolute(&self.node(name).config).unwrap();
        let config_name = snapsync::cli::config_name_of_file(&cfg);
        snapsync::cli::node_state_dir(&self.state(name), &config_name, name)
    }

    /// Files below `dir` named `file_name`.
    pub fn find_files(dir: &Path, file_name: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else { continue };
            for e in rd {
                let e = e.unwrap();
                let ft = e.file_type().unwrap();
                if ft.is_dir() {
                    stack.push(e.path());
                } else if e.file_name().as_bytes() == file_name.as_bytes() {
                    out.push(e.path());
                }
            }
        }
        out
    }

    /// What node `name`'s tree holds.
    pub fn snapshot(&self, name: &str) -> BTreeMap<PathBuf, Seen> {
        snapshot(&self.tree(name))
    }

    /// Asserts that the trees of `a` and `b` are identical: kinds,
    /// content, modes, link targets and file mtimes.
    pub fn assert_same(&self, a: &str, b: &str) {
        let (sa, sb) = (self.snapshot(a), self.snapshot(b));
        let diff = diff_trees(&sa, &sb);
        assert!(diff.is_empty(), "trees of {a} and {b} differ:\n{}", diff.join("\n"));
    }

    /// Asserts that every node's tree equals `a`'s.
    pub fn assert_all_same(&self) {
        let first = &self.nodes[0].name;
        for n in &self.nodes[1..] {
            self.assert_same(first, &n.name);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGKILL: fast and certain, whatever state a failing test left.
        for (_, d) in self.daemons.drain() {
            let _ = d.signal_and_wait(libc::SIGKILL);
        }
    }
}

/// A UDP port free on `ip` right now.
fn free_udp_port(ip: Ipv4Addr) -> u16 {
    let s = UdpSocket::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
    s.local_addr().unwrap().port()
}

/// Differences between two snapshots, one line each.
pub fn diff_trees(a: &BTreeMap<PathBuf, Seen>, b: &BTreeMap<PathBuf, Seen>) -> Vec<String> {
    let mut out = Vec::new();
    for (p, va) in a {
        match b.get(p) {
            None => out.push(format!("only in first: {}", p.display())),
            Some(vb) if va != vb => out.push(format!("differs: {}: {} vs {}", p.display(), show(va), show(vb))),
            _ => {}
        }
    }
    for p in b.keys().filter(|p| !a.contains_key(*p)) {
        out.push(format!("only in second: {}", p.display()));
    }
    out
}

fn show(s: &Seen) -> String {
    let body = if s.3.len() <= 40 {
        format!("{:?}", String::from_utf8_lossy(&s.3))
    } else {
        format!("{} bytes {}", s.3.len(), snapsync::hash::Hash::of(&s.3).short())
    };
    format!("{} mode {:o} mtime {:?} {}", s.0, s.1, s.2, body)
}

/// Sets a file's mtime to `secs.nanos` without following links.
pub fn set_mtime(path: &Path, secs: i64, nanos: u32) {
    let t = std::time::UNIX_EPOCH + Duration::new(secs as u64, nanos);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_modified(t))
        .unwrap();
}

/// Writes a file (creating its directories) and gives it mtime `secs`.
pub fn write_at(path: &Path, data: &[u8], secs: i64) {
    crate::common::write(path, data);
    set_mtime(path, secs, 0);
}

/// The `(action, path)` pairs of a list of changes.
pub fn changes(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|c| (c["action"].as_str().unwrap_or("").to_owned(), c["path"].as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The report of `peer` in a sync document.
pub fn peer_report<'a>(v: &'a Value, peer: &str) -> &'a Value {
    v["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["peer"] == peer))
        .unwrap_or_else(|| panic!("no report for peer {peer} in {v:#}"))
}

/// The problems peer `peer` reported in a sync document (what it could not
/// apply of what was pushed to it), and their total.
pub fn problems_on(v: &Value, peer: &str) -> (Vec<String>, u64) {
    let p = peer_report(v, peer);
    let listed = p["pushed_problems"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    (listed, p["pushed_problems_total"].as_u64().unwrap_or(0))
}

/// Whether any peer report of a sync document lists a conflict.
pub fn any_conflict(v: &Value) -> bool {
    v["peers"].as_array().into_iter().flatten().any(|p| {
        p["pulled"]["conflicts"].as_array().is_some_and(|c| !c.is_empty())
            || changes(&p["pushed"]).iter().any(|(a, _)| a == "conflict")
    })
}
