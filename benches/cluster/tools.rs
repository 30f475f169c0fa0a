//! The tools measured, each set up on loopback addresses of its own:
//! snapsync and csync2 (three nodes), rsync (one source, two daemons),
//! Unison (two replicas over its socket mode) and Syncthing (three
//! instances driven through their REST API).

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::sys::{self, Daemon, Exit, free_tcp_port, free_udp_port, run, run_all, wait_listening};

/// How long one sync may take before the run counts as failed.
const SYNC_TIMEOUT: Duration = Duration::from_secs(3600);

/// One tool's nodes on this machine, node a holding the source tree.
pub trait Setup {
    /// The node trees, a's first: after a sync every one equals a's.
    fn trees(&self) -> Vec<PathBuf>;
    /// Starts whatever runs in the background. a's tree is in place.
    fn start(&mut self) -> Result<(), String>;
    /// One sync from a to every peer; returns once every peer holds a's
    /// tree, with the commands it ran.
    fn sync(&mut self) -> Result<Vec<Exit>, String>;
    /// Tool-specific figures to record before and after a piece of work.
    fn counters(&mut self) -> Value {
        Value::Null
    }
    /// Work only this tool does (snapsync: the local check alone, the
    /// watch mode). Called once after `trees()` exist and a's tree is
    /// written, before `start`.
    fn before_start(&mut self) -> Value {
        Value::Null
    }
    /// With the tool's change watcher: `Some` when the tool has one this
    /// bench drives.
    fn watch(&mut self, _victims: &[PathBuf], _samples: usize) -> Option<Result<Value, String>> {
        None
    }
}

/// A tool this bench knows: how to find it and set it up.
pub struct Tool {
    pub name: &'static str,
    /// Version line, or why the tool is not measured.
    pub found: Result<String, String>,
    bin: PathBuf,
}

impl Tool {
    pub fn detect(name: &'static str, snapsync: &Path, skip: &[String]) -> Tool {
        let mut bin = PathBuf::new();
        let found = if skip.iter().any(|s| s == name) {
            Err("skipped (SNAPSYNC_BENCH_SKIP)".to_owned())
        } else {
            match name {
                "snapsync" => {
                    bin = snapsync.to_owned();
                    sys::version(Command::new(snapsync).arg("--version")).ok_or_else(|| "does not run".to_owned())
                }
                "csync2" => {
                    let b = std::env::var_os("SNAPSYNC_BENCH_CSYNC2")
                        .map(PathBuf::from)
                        .or_else(|| sys::which("csync2"))
                        .or_else(|| Some(PathBuf::from("/usr/sbin/csync2")).filter(|p| p.is_file()));
                    match b {
                        None => Err("not installed (apt-get install csync2)".to_owned()),
                        Some(b) => {
                            bin = b;
                            crate::ensure_hosts().map(|()| {
                                let v = sys::version(&mut Command::new(&bin)).unwrap_or_default();
                                let v = v.lines().find(|l| l.starts_with("csync2 ")).unwrap_or("csync2").to_owned();
                                with_deb(v, "csync2")
                            })
                        }
                    }
                }
                "rsync" | "unison" | "syncthing" => match sys::which(name) {
                    None => Err(format!("not installed (apt-get install {name})")),
                    Some(b) => {
                        bin = b;
                        let arg = if name == "unison" { "-version" } else { "--version" };
                        sys::version(Command::new(&bin).arg(arg))
                            .map(|v| with_deb(v, name))
                            .ok_or_else(|| format!("{} does not run", bin.display()))
                    }
                },
                _ => Err("unknown tool".to_owned()),
            }
        };
        Tool { name, found, bin }
    }

    /// How many full copies of the tree a run of this tool holds (trees
    /// and stores), for sizing its filesystem.
    pub fn copies(&self) -> u64 {
        match self.name {
            "snapsync" => 6,
            "unison" => 2,
            _ => 3,
        }
    }

    pub fn setup(&self, dir: &Path) -> Result<Box<dyn Setup>, String> {
        Ok(match self.name {
            "snapsync" => Box::new(SnapCluster::new(&self.bin, dir)?),
            "csync2" => Box::new(CsCluster::new(&self.bin, dir)?),
            "rsync" => Box::new(RsyncSetup::new(&self.bin, dir)),
            "unison" => Box::new(UnisonSetup::new(&self.bin, dir)),
            "syncthing" => Box::new(SyncthingSetup::new(&self.bin, dir)?),
            other => return Err(format!("unknown tool {other}")),
        })
    }
}

fn with_deb(v: String, pkg: &str) -> String {
    match sys::deb_version(pkg) {
        Some(d) => format!("{v} (Debian package {d})"),
        None => v,
    }
}

fn mkdirs(dir: &Path, nodes: &[&str]) -> Vec<PathBuf> {
    nodes
        .iter()
        .map(|n| {
            let t = dir.join(n).join("tree");
            std::fs::create_dir_all(&t).unwrap();
            t
        })
        .collect()
}

// ---------------------------------------------------------------- snapsync

/// The snapsync nodes' addresses.
const SNAP_NODES: [(&str, Ipv4Addr); 3] =
    [("a", Ipv4Addr::new(127, 0, 0, 21)), ("b", Ipv4Addr::new(127, 0, 0, 22)), ("c", Ipv4Addr::new(127, 0, 0, 23))];

/// Three snapsync nodes sharing one config, in `dir/{a,b,c}`.
pub struct SnapCluster {
    bin: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    daemons: Vec<Daemon>,
}

impl SnapCluster {
    fn new(bin: &Path, dir: &Path) -> Result<SnapCluster, String> {
        mkdirs(dir, &["a", "b", "c"]);
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

    fn state(&self, node: &str) -> PathBuf {
        self.dir.join(node).join("state")
    }

    /// `snapsync --config CFG -N node -D state ...`.
    fn cmd(&self, node: &str, state: &Path) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--config").arg(&self.config).arg("-N").arg(node).arg("-D").arg(state);
        c
    }

    /// A command run by `node`'s daemon (forwarded through its socket).
    fn at(&self, node: &str, args: &[&str]) -> Command {
        let mut c = self.cmd(node, &self.state(node));
        c.args(args);
        c
    }

    /// Starts `node`'s daemon as `serve ARGS`.
    fn start_args(&mut self, node: &str, args: &[&str]) -> Result<(), String> {
        let mut cmd = self.cmd(node, &self.state(node));
        cmd.arg("serve").args(args);
        let log = self.dir.join(format!("{node}.log"));
        self.daemons.push(Daemon::start(cmd, &format!("snapsync serve ({node})"), "snapsync serve:", log)?);
        Ok(())
    }

    fn stop(&mut self, node: &str) {
        let name = format!("snapsync serve ({node})");
        self.daemons.retain(|d| d.name != name);
    }

    /// `served` counters of `node`'s daemon (`status --json`).
    fn served(&self, node: &str) -> Result<Value, String> {
        let out = run(&mut self.at(node, &["--json", "status"]), &[0, 3])?.stdout;
        let v: Value = serde_json::from_str(&out).map_err(|e| format!("status --json on {node}: {e}: {out}"))?;
        Ok(v["served"].clone())
    }
}

impl Setup for SnapCluster {
    fn trees(&self) -> Vec<PathBuf> {
        ["a", "b", "c"].map(|n| self.tree(n)).to_vec()
    }

    fn start(&mut self) -> Result<(), String> {
        SNAP_NODES.iter().try_for_each(|(n, _)| self.start_args(n, &[]))
    }

    fn sync(&mut self) -> Result<Vec<Exit>, String> {
        let exit = run(&mut self.at("a", &["--json", "sync"]), &[0])?;
        let v: Value = serde_json::from_str(&exit.stdout)
            .map_err(|e| format!("sync --json: {e}: {}", sys::tail(&exit.stdout, 500)))?;
        for p in v["peers"].as_array().into_iter().flatten() {
            if let Some(e) = p["error"].as_str() {
                return Err(format!("sync with {}: {e}", p["peer"]));
            }
        }
        Ok(vec![exit])
    }

    /// Chunk bytes and chunks b and c received so far.
    fn counters(&mut self) -> Value {
        let mut out = serde_json::Map::new();
        for n in ["b", "c"] {
            if let Ok(s) = self.served(n) {
                out.insert(
                    n.to_owned(),
                    json!({"bytes_received": s["bytes_received"], "chunks_received": s["chunks_received"]}),
                );
            }
        }
        Value::Object(out)
    }

    /// The local part of a first sync alone: `check` of a's tree on a
    /// fresh state (walk, read, chunk, hash).
    fn before_start(&mut self) -> Value {
        let scratch = self.dir.join("check-state");
        let r = run(self.cmd("a", &scratch).args(["--json", "check"]), &[0]);
        let _ = std::fs::remove_dir_all(&scratch);
        match r {
            Ok(e) => {
                let v: Value = serde_json::from_str(&e.stdout).unwrap_or(Value::Null);
                json!({
                    "check_alone_s": e.elapsed.as_secs_f64(),
                    "check_bytes_read": v["groups"][0]["stats"]["bytes_read"],
                })
            }
            Err(e) => json!({ "check_alone_error": e }),
        }
    }

    /// a's daemon restarted with `--watch`: no-change syncs without a
    /// walk, and from a file's change on a until both peers hold it.
    fn watch(&mut self, victims: &[PathBuf], samples: usize) -> Option<Result<Value, String>> {
        Some(self.watch_runs(victims, samples))
    }
}

impl SnapCluster {
    fn watch_runs(&mut self, victims: &[PathBuf], samples: usize) -> Result<Value, String> {
        self.stop("a");
        self.start_args("a", &["--watch"])?;
        let log = self.dir.join("a.log");
        let start = Instant::now();
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("sync run: full reconcile") {
            if start.elapsed() > sys::READY_TIMEOUT * 10 {
                return Err("a's watcher did not finish its first full reconcile".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut no_change = Vec::new();
        for _ in 0..crate::repeats() {
            no_change.push(run(&mut self.at("a", &["-q", "sync"]), &[0])?.elapsed.as_secs_f64());
        }
        let mut latency = Vec::new();
        // Changes one at a time, a moment apart: each its own watch run.
        for v in victims.iter().cycle().take(samples) {
            std::thread::sleep(Duration::from_millis(200));
            crate::touch_content(&self.tree("a").join(v));
            let want = std::fs::read(self.tree("a").join(v)).unwrap();
            let start = Instant::now();
            while ["b", "c"].iter().any(|n| std::fs::read(self.tree(n).join(v)).is_ok_and(|got| got != want)) {
                if start.elapsed() > Duration::from_secs(60) {
                    return Err(format!("{} did not reach the peers within 60 s of its change", v.display()));
                }
                // Fine enough for latencies of a few ms; reading two small
                // files costs a few µs.
                std::thread::sleep(Duration::from_micros(500));
            }
            latency.push(start.elapsed().as_secs_f64());
        }
        Ok(json!({ "watch_no_change": no_change, "watch_change_to_peers": latency }))
    }
}

// ---------------------------------------------------------------- csync2

/// The csync2 nodes' names and addresses (csync2 resolves names itself).
pub const CSYNC2_NODES: [(&str, Ipv4Addr); 3] = [
    ("csbench-a", Ipv4Addr::new(127, 0, 0, 31)),
    ("csbench-b", Ipv4Addr::new(127, 0, 0, 32)),
    ("csbench-c", Ipv4Addr::new(127, 0, 0, 33)),
];
/// csync2's config name (`-C`): csync2 allows only `[a-z0-9]+`.
const CSYNC2_CONFIG: &str = "snapbench";

/// Three csync2 nodes in `dir/{a,b,c}`: trees, database directories, and
/// `dir/etc` as `CSYNC2_SYSTEM_DIR` holding the config. Plain TCP
/// (`nossl * *`), which favours csync2.
pub struct CsCluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    daemons: Vec<Daemon>,
}

impl CsCluster {
    fn new(bin: &Path, dir: &Path) -> Result<CsCluster, String> {
        let short = ["a", "b", "c"];
        mkdirs(dir, &short);
        for n in short {
            std::fs::create_dir_all(dir.join(n).join("db")).unwrap();
        }
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        let key = dir.join("key");
        run(Command::new(bin).arg("-k").arg(&key), &[0])?;
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
        Ok(CsCluster { bin: bin.to_owned(), dir: dir.to_owned(), port, daemons: Vec::new() })
    }

    /// `-N name -D db -C snapbench -p PORT` for node `i`.
    fn args(&self, i: usize) -> Vec<std::ffi::OsString> {
        let db = self.dir.join(["a", "b", "c"][i]).join("db");
        let mut v: Vec<std::ffi::OsString> = vec!["-N".into(), CSYNC2_NODES[i].0.into(), "-D".into(), db.into()];
        v.extend(["-C".into(), CSYNC2_CONFIG.into(), "-p".into(), self.port.to_string().into()]);
        v
    }
}

impl Setup for CsCluster {
    fn trees(&self) -> Vec<PathBuf> {
        ["a", "b", "c"].map(|n| self.dir.join(n).join("tree")).to_vec()
    }

    /// The stand-alone daemons (`-ii`), each bound to its own address by
    /// `-N` (a's is never used: the initiator only pushes; it runs for
    /// symmetry). csync2 prints its ready line through stdio's buffer, so
    /// it runs under `stdbuf -o0`.
    fn start(&mut self) -> Result<(), String> {
        for (i, (name, _)) in CSYNC2_NODES.iter().enumerate() {
            let mut cmd = Command::new("stdbuf");
            cmd.env("CSYNC2_SYSTEM_DIR", self.dir.join("etc")).arg("-o0").arg(&self.bin).args(self.args(i)).arg("-ii");
            let log = self.dir.join(format!("{name}.log"));
            self.daemons.push(Daemon::start(cmd, &format!("csync2 -ii ({name})"), "Csync2 daemon running", log)?);
        }
        Ok(())
    }

    /// `csync2 -x` on a: check everything, push what is dirty to b and c.
    fn sync(&mut self) -> Result<Vec<Exit>, String> {
        let mut c = Command::new(&self.bin);
        c.env("CSYNC2_SYSTEM_DIR", self.dir.join("etc")).args(self.args(0)).arg("-x");
        Ok(vec![run(&mut c, &[0])?])
    }
}

// ---------------------------------------------------------------- rsync

const RSYNC_PEERS: [(&str, Ipv4Addr); 2] = [("b", Ipv4Addr::new(127, 0, 0, 42)), ("c", Ipv4Addr::new(127, 0, 0, 43))];

/// a pushes with `rsync -a --delete` to rsync daemons for b and c, both
/// at once (two clients side by side, as snapsync and csync2 serve both
/// peers in one run).
pub struct RsyncSetup {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    daemons: Vec<Daemon>,
}

impl RsyncSetup {
    fn new(bin: &Path, dir: &Path) -> RsyncSetup {
        mkdirs(dir, &["a", "b", "c"]);
        let port = free_tcp_port(&RSYNC_PEERS.map(|p| p.1));
        RsyncSetup { bin: bin.to_owned(), dir: dir.to_owned(), port, daemons: Vec::new() }
    }
}

impl Setup for RsyncSetup {
    fn trees(&self) -> Vec<PathBuf> {
        ["a", "b", "c"].map(|n| self.dir.join(n).join("tree")).to_vec()
    }

    fn start(&mut self) -> Result<(), String> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        for (n, ip) in RSYNC_PEERS {
            let conf = self.dir.join(format!("rsyncd-{n}.conf"));
            let mut text = format!("port = {}\naddress = {ip}\nuse chroot = no\n", self.port);
            if root {
                text.push_str("uid = root\ngid = root\n");
            }
            let _ = write!(
                text,
                "pid file = {}\n[tree]\n  path = {}\n  read only = no\n",
                self.dir.join(format!("rsyncd-{n}.pid")).display(),
                self.dir.join(n).join("tree").display()
            );
            std::fs::write(&conf, text).unwrap();
            let mut cmd = Command::new(&self.bin);
            cmd.arg("--daemon").arg("--no-detach").arg(format!("--config={}", conf.display()));
            let d = Daemon::spawn(cmd, &format!("rsync --daemon ({n})"), self.dir.join(format!("rsyncd-{n}.log")))?;
            wait_listening(ip, self.port, &d)?;
            self.daemons.push(d);
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<Vec<Exit>, String> {
        let src = format!("{}/", self.dir.join("a").join("tree").display());
        let mut cmds: Vec<Command> = RSYNC_PEERS
            .iter()
            .map(|(_, ip)| {
                let mut c = Command::new(&self.bin);
                c.args(["-a", "--delete"]).arg(&src).arg(format!("rsync://{ip}:{}/tree/", self.port));
                c
            })
            .collect();
        run_all(cmds.iter_mut().collect(), &[0])
    }
}

// ---------------------------------------------------------------- Unison

const UNISON_SERVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 52);

/// Two replicas: a (local to the client) and b, served by `unison
/// -socket` on its own address. Unison synchronizes pairs of replicas,
/// so it runs with one peer where the others have two.
///
/// `-fastcheck false`: with its Unix default (`true`) Unison 2.52 missed
/// same-size in-place edits of files it had propagated shortly before
/// (the one-changed-file and one-byte-edit rows failed verification), so
/// here it reads every file on each sync.
pub struct UnisonSetup {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    daemons: Vec<Daemon>,
}

impl UnisonSetup {
    fn new(bin: &Path, dir: &Path) -> UnisonSetup {
        mkdirs(dir, &["a", "b"]);
        for n in ["a", "b"] {
            std::fs::create_dir_all(dir.join(n).join("unison")).unwrap();
        }
        let port = free_tcp_port(&[UNISON_SERVER]);
        UnisonSetup { bin: bin.to_owned(), dir: dir.to_owned(), port, daemons: Vec::new() }
    }
}

impl Setup for UnisonSetup {
    fn trees(&self) -> Vec<PathBuf> {
        ["a", "b"].map(|n| self.dir.join(n).join("tree")).to_vec()
    }

    fn start(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(&self.bin);
        cmd.env("UNISON", self.dir.join("b").join("unison")).env("HOME", self.dir.join("b")).current_dir("/").args([
            "-socket",
            &self.port.to_string(),
            "-listen",
            &UNISON_SERVER.to_string(),
        ]);
        let d = Daemon::spawn(cmd, "unison -socket (b)", self.dir.join("unison-b.log"))?;
        wait_listening(UNISON_SERVER, self.port, &d)?;
        self.daemons.push(d);
        Ok(())
    }

    fn sync(&mut self) -> Result<Vec<Exit>, String> {
        let mut c = Command::new(&self.bin);
        c.env("UNISON", self.dir.join("a").join("unison"))
            .env("HOME", self.dir.join("a"))
            .arg(self.dir.join("a").join("tree"))
            .arg(format!("socket://{UNISON_SERVER}:{}/{}", self.port, self.dir.join("b").join("tree").display()))
            .args([
                "-batch",
                "-auto",
                "-times",
                "-silent",
                "-ui",
                "text",
                "-confirmbigdel=false",
                "-fastcheck",
                "false",
            ]);
        Ok(vec![run(&mut c, &[0])?])
    }
}

// ---------------------------------------------------------------- Syncthing

const SYNCTHING_NODES: [(&str, Ipv4Addr); 3] =
    [("a", Ipv4Addr::new(127, 0, 0, 61)), ("b", Ipv4Addr::new(127, 0, 0, 62)), ("c", Ipv4Addr::new(127, 0, 0, 63))];
const SYNCTHING_FOLDER: &str = "bench";
const SYNCTHING_KEY: &str = "snapsync-bench-api-key";

/// Three Syncthing instances (`--home` each), sharing one folder; a's is
/// paused until the first sync so that its first scan is part of it.
/// Discovery, relays, NAT traversal and usage reporting are off; devices
/// dial each other's static loopback addresses; file watching is off and
/// periodic rescans are an hour apart, so each sync is a REST-triggered
/// scan on a, complete when a sees b and c at 100%.
pub struct SyncthingSetup {
    bin: PathBuf,
    dir: PathBuf,
    listen: u16,
    gui: u16,
    ids: Vec<String>,
    daemons: Vec<Daemon>,
    first: bool,
}

impl SyncthingSetup {
    fn new(bin: &Path, dir: &Path) -> Result<SyncthingSetup, String> {
        let trees = mkdirs(dir, &["a", "b", "c"]);
        let mut ids = Vec::new();
        for ((n, _), tree) in SYNCTHING_NODES.iter().zip(&trees) {
            // Syncthing's folder marker, in every tree alike.
            std::fs::create_dir_all(tree.join(".stfolder")).unwrap();
            let home = dir.join(n).join("home");
            run(
                Command::new(bin).arg("generate").arg(format!("--home={}", home.display())).arg("--no-default-folder"),
                &[0],
            )?;
            let id = run(Command::new(bin).arg("--device-id").arg(format!("--home={}", home.display())), &[0])?;
            ids.push(id.stdout.trim().to_owned());
        }
        let ips = SYNCTHING_NODES.map(|n| n.1);
        let listen = free_tcp_port(&ips);
        let mut gui = free_tcp_port(&ips);
        while gui == listen {
            gui = free_tcp_port(&ips);
        }
        Ok(SyncthingSetup {
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            listen,
            gui,
            ids,
            daemons: Vec::new(),
            first: true,
        })
    }

    fn config(&self, i: usize) -> String {
        let (_, ip) = SYNCTHING_NODES[i];
        let tree = self.dir.join(SYNCTHING_NODES[i].0).join("tree");
        let mut devices = String::new();
        let mut folder_devices = String::new();
        for (j, (n, peer_ip)) in SYNCTHING_NODES.iter().enumerate() {
            let id = &self.ids[j];
            let _ = writeln!(folder_devices, "    <device id=\"{id}\"></device>");
            let _ = writeln!(
                devices,
                "  <device id=\"{id}\" name=\"{n}\" compression=\"metadata\" introducer=\"false\" skipIntroductionRemovals=\"false\" introducedBy=\"\">\n    <address>tcp://{peer_ip}:{}</address>\n    <autoAcceptFolders>false</autoAcceptFolders>\n  </device>",
                self.listen
            );
        }
        let paused = i == 0;
        format!(
            r#"<configuration version="36">
  <folder id="{SYNCTHING_FOLDER}" label="{SYNCTHING_FOLDER}" path="{}" type="sendreceive" rescanIntervalS="3600" fsWatcherEnabled="false" fsWatcherDelayS="1" ignorePerms="false" autoNormalize="true">
    <filesystemType>basic</filesystemType>
{folder_devices}    <minDiskFree unit="%">0</minDiskFree>
    <paused>{paused}</paused>
  </folder>
{devices}  <gui enabled="true" tls="false" debugging="false">
    <address>{ip}:{}</address>
    <apikey>{SYNCTHING_KEY}</apikey>
  </gui>
  <options>
    <listenAddress>tcp://{ip}:{}</listenAddress>
    <globalAnnounceEnabled>false</globalAnnounceEnabled>
    <localAnnounceEnabled>false</localAnnounceEnabled>
    <relaysEnabled>false</relaysEnabled>
    <natEnabled>false</natEnabled>
    <startBrowser>false</startBrowser>
    <urAccepted>-1</urAccepted>
    <autoUpgradeIntervalH>0</autoUpgradeIntervalH>
    <crashReportingEnabled>false</crashReportingEnabled>
    <minHomeDiskFree unit="%">0</minHomeDiskFree>
    <setLowPriority>false</setLowPriority>
  </options>
</configuration>
"#,
            tree.display(),
            self.gui,
            self.listen
        )
    }

    fn api(&self, i: usize) -> SocketAddr {
        (SYNCTHING_NODES[i].1, self.gui).into()
    }

    fn get(&self, i: usize, path: &str) -> Result<Value, String> {
        let (code, body) = http(self.api(i), "GET", path, "")?;
        if code != 200 {
            return Err(format!("GET {path} on {}: HTTP {code}: {body}", SYNCTHING_NODES[i].0));
        }
        serde_json::from_str(&body).map_err(|e| format!("GET {path}: {e}: {body}"))
    }

    /// Waits until a's folder is idle with `want_files` files scanned
    /// (`None`: any), b and c are idle holding what a holds, and a sees b
    /// and c complete (which, after a scan on a, needs b's and c's index
    /// updates: b's own status alone may not know of a's change yet).
    fn wait_complete(&self, want_files: Option<u64>) -> Result<(), String> {
        let t = Instant::now();
        let folder = format!("folder={SYNCTHING_FOLDER}");
        loop {
            let st = self.get(0, &format!("/rest/db/status?{folder}"))?;
            let mut done = st["state"] == "idle" && want_files.is_none_or(|n| st["localFiles"].as_u64() == Some(n));
            for j in 1..3 {
                if !done {
                    break;
                }
                let peer = self.get(j, &format!("/rest/db/status?{folder}"))?;
                done &= peer["state"] == "idle"
                    && peer["needTotalItems"].as_u64() == Some(0)
                    && peer["localFiles"] == st["localFiles"]
                    && peer["localBytes"] == st["localBytes"]
                    && peer["localDirectories"] == st["localDirectories"];
                let c = self.get(0, &format!("/rest/db/completion?{folder}&device={}", self.ids[j]))?;
                done &= c["completion"].as_f64() == Some(100.0)
                    && c["needItems"].as_u64() == Some(0)
                    && c["needDeletes"].as_u64() == Some(0)
                    && c["remoteState"].as_str().is_none_or(|s| s == "valid");
            }
            if done {
                return Ok(());
            }
            if t.elapsed() > SYNC_TIMEOUT {
                return Err(format!("syncthing did not complete within {SYNC_TIMEOUT:?}: a's status {st}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Setup for SyncthingSetup {
    fn trees(&self) -> Vec<PathBuf> {
        ["a", "b", "c"].map(|n| self.dir.join(n).join("tree")).to_vec()
    }

    fn start(&mut self) -> Result<(), String> {
        for (i, (n, _)) in SYNCTHING_NODES.iter().enumerate() {
            let home = self.dir.join(n).join("home");
            std::fs::write(home.join("config.xml"), self.config(i)).unwrap();
            let mut cmd = Command::new(&self.bin);
            cmd.arg("serve")
                .arg(format!("--home={}", home.display()))
                .args(["--no-browser", "--no-restart", "--no-upgrade", "--no-default-folder"])
                .env("STNODEFAULTFOLDER", "1")
                .env("STNOUPGRADE", "1")
                .env("STNORESTART", "1")
                .env("HOME", self.dir.join(n));
            let d = Daemon::spawn(cmd, &format!("syncthing ({n})"), self.dir.join(format!("syncthing-{n}.log")))?;
            self.daemons.push(d);
        }
        // Every REST API up, then every pair connected.
        let t = Instant::now();
        for i in 0..3 {
            while http(self.api(i), "GET", "/rest/system/ping", "").map(|r| r.0) != Ok(200) {
                if t.elapsed() > sys::READY_TIMEOUT {
                    return Err(format!("syncthing {} did not answer; its log: {}", i, self.daemons[i].log_tail()));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for i in 0..3 {
            loop {
                let c = self.get(i, "/rest/system/connections")?;
                let all = (0..3)
                    .filter(|j| *j != i)
                    .all(|j| c["connections"][&self.ids[j]]["connected"] == Value::Bool(true));
                if all {
                    break;
                }
                if t.elapsed() > sys::READY_TIMEOUT {
                    return Err(format!("syncthing {i} did not connect to its peers: {c}"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<Vec<Exit>, String> {
        if self.first {
            // The files a holds now (the scan's target), counted before
            // it is unpaused.
            let files = count_files(&self.dir.join("a").join("tree"));
            self.first = false;
            let (code, body) =
                http(self.api(0), "PATCH", &format!("/rest/config/folders/{SYNCTHING_FOLDER}"), "{\"paused\":false}")?;
            if code != 200 {
                return Err(format!("unpausing a's folder: HTTP {code}: {body}"));
            }
            self.wait_complete(Some(files))?;
        } else {
            // Returns when the scan is done.
            let (code, body) = http(self.api(0), "POST", &format!("/rest/db/scan?folder={SYNCTHING_FOLDER}"), "")?;
            if code != 200 {
                return Err(format!("scan on a: HTTP {code}: {body}"));
            }
            self.wait_complete(None)?;
        }
        Ok(Vec::new())
    }
}

/// Regular files below `root`, Syncthing's marker directory left out.
fn count_files(root: &Path) -> u64 {
    crate::listing(root).iter().filter(|(p, s)| s.is_some() && !p.starts_with(".stfolder")).count() as u64
}

/// One HTTP/1.0 request with Syncthing's API key (HTTP/1.0: the answer
/// is never chunked and the connection closes after it).
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let addr = addr.to_socket_addrs().map_err(|e| e.to_string())?.next().ok_or("no address")?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(SYNC_TIMEOUT)).map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nX-API-Key: {SYNCTHING_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| format!("{addr}: {e}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| format!("{addr} {path}: {e}"))?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_owned()))
}
