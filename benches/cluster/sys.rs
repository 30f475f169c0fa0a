//! Processes, memory, fresh filesystems, loopback counters and the
//! machine's description for the cluster benchmark.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read as _};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long a daemon may take to be ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a daemon may take to exit after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- one-shot commands

/// A finished command: its wall-clock time, stdout and CPU time (user +
/// system, from wait4(2)). Not its peak memory: wait4's ru_maxrss counts
/// the memory the child had before its exec, which is this process's.
pub struct Exit {
    pub program: String,
    pub elapsed: Duration,
    pub stdout: String,
    pub cpu: Duration,
}

/// Runs `cmd` to completion; exit statuses in `ok` count as success.
pub fn run(cmd: &mut Command, ok: &[i32]) -> Result<Exit, String> {
    let mut v = run_all(vec![cmd], ok)?;
    Ok(v.remove(0))
}

/// Runs `cmds` side by side and waits for all of them. Each [`Exit`]'s
/// `elapsed` runs from the common start to that command's exit.
pub fn run_all(cmds: Vec<&mut Command>, ok: &[i32]) -> Result<Vec<Exit>, String> {
    let t = Instant::now();
    let mut started = Vec::new();
    for cmd in cmds {
        let what = format!("{cmd:?}");
        let program =
            Path::new(cmd.get_program()).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{what}: cannot start: {e}"))?;
        let mut out = child.stdout.take().expect("stdout is piped");
        let mut err = child.stderr.take().expect("stderr is piped");
        let outs = std::thread::spawn(move || {
            let (mut o, mut e) = (Vec::new(), Vec::new());
            let errs = std::thread::spawn(move || {
                let _ = err.read_to_end(&mut e);
                e
            });
            let _ = out.read_to_end(&mut o);
            (o, errs.join().unwrap_or_default())
        });
        started.push((what, program, child, outs));
    }
    let mut exits = Vec::new();
    let mut failure = None;
    for (what, program, child, outs) in started {
        let (status, rusage) = wait4(&child);
        let elapsed = t.elapsed();
        let (stdout, stderr) = outs.join().unwrap_or_default();
        let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
        if !ok.contains(&code) && failure.is_none() {
            failure = Some(format!(
                "{what} exited with status {code} (wait status {status}): stderr: {}; stdout: {}",
                tail(&String::from_utf8_lossy(&stderr), 2000),
                tail(&String::from_utf8_lossy(&stdout), 1000)
            ));
        }
        let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
        exits.push(Exit {
            program,
            elapsed,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            cpu: tv(rusage.ru_utime) + tv(rusage.ru_stime),
        });
    }
    match failure {
        Some(f) => Err(f),
        None => Ok(exits),
    }
}

/// Reaps `child` with wait4(2): its wait status and resource usage.
fn wait4(child: &Child) -> (i32, libc::rusage) {
    let mut status = 0;
    // SAFETY: wait4 writes into the status and the zeroed rusage it is
    // given; the pid is our own unreaped child.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        while libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut ru) < 0 {
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return (-1, ru);
            }
        }
        (status, ru)
    }
}

pub fn tail(s: &str, n: usize) -> &str {
    let mut at = s.len().saturating_sub(n);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    s[at..].trim()
}

// ---------------------------------------------------------------- daemons

/// Daemons started by this run, by pid, with their labels: the memory
/// sampler names their processes (and what they fork) by these.
static DAEMONS: Mutex<BTreeMap<u32, String>> = Mutex::new(BTreeMap::new());

/// A daemon, stopped with SIGTERM when dropped (also on a panic).
pub struct Daemon {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` with stderr to `log` and waits for a stdout line
    /// starting with `ready`, for at most [`READY_TIMEOUT`].
    pub fn start(mut cmd: Command, name: &str, ready: &'static str, log: PathBuf) -> Result<Daemon, String> {
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
        let mut daemon = Daemon::adopt(child, name, log);
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(_) => Ok(daemon),
            Err(e) => {
                daemon.stop();
                Err(format!("{what} did not say {ready:?} ({e}); its log: {}", daemon.log_tail()))
            }
        }
    }

    /// Starts `cmd` with stdout and stderr to `log`; readiness is the
    /// caller's to wait for.
    pub fn spawn(mut cmd: Command, name: &str, log: PathBuf) -> Result<Daemon, String> {
        let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| format!("{}: {e}", log.display()))?;
        let what = format!("{cmd:?}");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{what}: cannot start: {e}"))?;
        Ok(Daemon::adopt(child, name, log))
    }

    fn adopt(child: Child, name: &str, log: PathBuf) -> Daemon {
        DAEMONS.lock().unwrap().insert(child.id(), name.to_owned());
        Daemon { name: name.to_owned(), child: Some(child), log }
    }

    pub fn log_tail(&self) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 2000).to_owned()
    }

    /// SIGTERM, then a bounded wait, then SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = child.id();
        // Its peak memory, before it is gone.
        SAMPLES.lock().unwrap().sample_one(pid);
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let t = Instant::now();
        let mut exited = false;
        while !exited && t.elapsed() < EXIT_TIMEOUT {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => exited = true,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        if !exited {
            eprintln!("{} did not exit {EXIT_TIMEOUT:?} after SIGTERM; killing it", self.name);
            let _ = child.kill();
            let _ = child.wait();
        }
        // Reaped: its pid may be given to another process from now on.
        DAEMONS.lock().unwrap().remove(&pid);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until a TCP socket listens on `ip:port` (read from
/// /proc/net/tcp, so nothing connects to it before its owner is ready).
pub fn wait_listening(ip: Ipv4Addr, port: u16, daemon: &Daemon) -> Result<(), String> {
    let want = format!("{:08X}:{:04X}", u32::from_le_bytes(ip.octets()), port);
    let t = Instant::now();
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        let listening = table.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&want.as_str()) && f.get(3) == Some(&"0A")
        });
        if listening {
            return Ok(());
        }
        if t.elapsed() > READY_TIMEOUT {
            return Err(format!("{} did not listen on {ip}:{port}; its log: {}", daemon.name, daemon.log_tail()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A UDP port free on every address in `ips` right now.
pub fn free_udp_port(ips: &[Ipv4Addr]) -> u16 {
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
pub fn free_tcp_port(ips: &[Ipv4Addr]) -> u16 {
    for _ in 0..50 {
        let s = TcpListener::bind((ips[0], 0)).unwrap();
        let port = s.local_addr().unwrap().port();
        if ips[1..].iter().all(|ip| TcpListener::bind((*ip, port)).is_ok()) {
            return port;
        }
    }
    panic!("no TCP port free on all of {ips:?}");
}

// ---------------------------------------------------------------- memory

/// Peak resident memory (VmHWM) and CPU time of every process this run
/// started, daemons and what they fork included, sampled every
/// [`SAMPLE_EVERY`] and once more when a daemon is stopped; for a daemon
/// also its resident memory (VmRSS) then.
static SAMPLES: Mutex<Samples> = Mutex::new(Samples { seen: None });
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

struct Samples {
    /// (pid, start time) -> what was seen of it. The start time tells
    /// apart processes that had the same pid: a run starts tens of
    /// thousands of processes and threads, and pids wrap at
    /// `kernel.pid_max` (32768 by default), so a daemon could get the pid
    /// of a command that ran before it.
    seen: Option<HashMap<(u32, u64), Seen>>,
}

/// A process's label, peak bytes, CPU time and resident bytes when stopped.
type Seen = (String, u64, Duration, u64);

impl Samples {
    fn sample_one(&mut self, pid: u32) {
        let daemons = DAEMONS.lock().unwrap();
        let Some(label) = daemons.get(&pid) else { return };
        if let Some(Usage { start, hwm, rss, cpu }) = usage(pid) {
            let e = self.seen.get_or_insert_with(HashMap::new).entry((pid, start)).or_insert((
                label.clone(),
                0,
                Duration::ZERO,
                0,
            ));
            e.1 = e.1.max(hwm);
            e.2 = e.2.max(cpu);
            e.3 = rss;
        }
    }
}

/// What [`usage`] reads of a process.
struct Usage {
    /// When it started, in clock ticks after boot.
    start: u64,
    /// VmHWM in bytes.
    hwm: u64,
    /// VmRSS in bytes.
    rss: u64,
    /// User + system CPU time.
    cpu: Duration,
}

/// Start time, VmHWM, VmRSS and CPU time of `pid`.
fn usage(pid: u32) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok()
    };
    let (kb, rss_kb) = (field("VmHWM:")?, field("VmRSS:")?);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let start: u64 = f.get(19)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Usage { start, hwm: kb * 1024, rss: rss_kb * 1024, cpu: Duration::from_millis(ticks * 1000 / hz) })
}

/// Every process: pid -> (parent pid, command name).
fn processes() -> HashMap<u32, (u32, String)> {
    let mut out = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let comm = stat[open + 1..close].to_owned();
        let ppid = stat[close + 2..].split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        out.insert(pid, (ppid, comm));
    }
    out
}

/// The highest one-minute load average seen while sampling, times 100.
static MAX_LOAD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The highest one-minute load average seen while the sampler ran.
pub fn max_load() -> f64 {
    MAX_LOAD.load(Ordering::Relaxed) as f64 / 100.0
}

/// Samples in the background until dropped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub fn start() -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let me = std::process::id();
            let mut n = 0u32;
            while !flag.load(Ordering::Relaxed) {
                sample_descendants(me);
                if n.is_multiple_of(20) {
                    let load: f64 = loadavg().split_whitespace().next().and_then(|l| l.parse().ok()).unwrap_or(0.0);
                    MAX_LOAD.fetch_max((load * 100.0) as u64, Ordering::Relaxed);
                }
                n = n.wrapping_add(1);
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        Sampler { stop, handle: Some(handle) }
    }

    /// Peak memory, CPU time and the resident memory last sampled (a
    /// daemon's: when it was stopped) by process label since the last
    /// call, and forgets them.
    pub fn take(&self) -> Vec<(String, u64, Duration, u64)> {
        sample_descendants(std::process::id());
        let seen = SAMPLES.lock().unwrap().seen.take().unwrap_or_default();
        let mut by: BTreeMap<String, (u64, Duration, u64)> = BTreeMap::new();
        for (label, hwm, cpu, rss) in seen.into_values() {
            let e = by.entry(label).or_default();
            e.0 = e.0.max(hwm);
            e.1 += cpu;
            e.2 = e.2.max(rss);
        }
        by.into_iter().map(|(l, (h, c, r))| (l, h, c, r)).collect()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Records every descendant of `root`: daemons by their label, what a
/// daemon forked as "LABEL (forked)", others by command name.
fn sample_descendants(root: u32) {
    let procs = processes();
    // A child of this process between fork and exec still has its name.
    let own = procs.get(&root).map(|p| p.1.clone()).unwrap_or_default();
    let daemons = DAEMONS.lock().unwrap().clone();
    let mut samples = SAMPLES.lock().unwrap();
    let seen = samples.seen.get_or_insert_with(HashMap::new);
    for (&pid, (_, comm)) in &procs {
        // The chain of parents up to `root`, if it leads there.
        let mut label = None;
        let mut at = pid;
        let mut first = true;
        let mut ours = false;
        for _ in 0..64 {
            if at == root {
                ours = !first;
                break;
            }
            if label.is_none()
                && let Some(d) = daemons.get(&at)
            {
                label = Some(if first { d.clone() } else { format!("{d} (forked)") });
            }
            first = false;
            match procs.get(&at) {
                Some((ppid, _)) if *ppid != 0 => at = *ppid,
                _ => break,
            }
        }
        if !ours || *comm == own {
            continue;
        }
        let label = label.unwrap_or_else(|| comm.clone());
        if let Some(Usage { start, hwm, rss, cpu }) = usage(pid) {
            let e = seen.entry((pid, start)).or_insert((label, 0, Duration::ZERO, 0));
            e.1 = e.1.max(hwm);
            e.2 = e.2.max(cpu);
            e.3 = rss;
        }
    }
}

// ---------------------------------------------------------------- network

/// Moves this process into a network namespace of its own with only
/// loopback up, so loopback's byte counters count this run's traffic
/// alone (other work on the machine may use 127.0.0.x too). Must run
/// before any thread starts: threads started later inherit it.
pub fn private_network() -> Result<(), String> {
    // SAFETY: unshare(2) affects only this (still single-threaded) process.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error()));
    }
    // Loopback starts down in a new namespace.
    // SAFETY: a plain socket and two ioctls on a zeroed ifreq naming "lo".
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        let ok = fd >= 0 && libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) == 0 && {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) == 0
        };
        let err = std::io::Error::last_os_error();
        if fd >= 0 {
            libc::close(fd);
        }
        if !ok {
            return Err(format!("cannot bring loopback up in the new namespace: {err}"));
        }
    }
    Ok(())
}

/// Bytes received on loopback so far (on loopback every byte sent is
/// received once).
pub fn lo_bytes() -> u64 {
    let dev = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    dev.lines()
        .find_map(|l| l.trim_start().strip_prefix("lo:"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------- fresh filesystems

/// A freshly made filesystem for one measurement: an ext4 image on a
/// loop device, mounted at `path`, removed when dropped. Where loop
/// mounts are not possible (no root, no loop devices) a fresh directory
/// after sync(2) instead; `kind` says which.
pub struct Fresh {
    pub path: PathBuf,
    image: Option<PathBuf>,
    pub kind: String,
}

impl Fresh {
    /// A filesystem of up to `bytes` (the image is sparse: it takes the
    /// space written to it) named `name` below `base`.
    pub fn new(base: &Path, name: &str, bytes: u64, allow_loop: bool) -> Fresh {
        let path = base.join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        // SAFETY: sync(2) has no preconditions.
        unsafe { libc::sync() };
        if allow_loop {
            let image = base.join(format!("{name}.ext4"));
            match make_ext4(&image, &path, bytes) {
                Ok(()) => {
                    return Fresh {
                        path,
                        image: Some(image),
                        kind: "ext4 made for this measurement (an inode per 4 KiB) on a loop-mounted sparse image file"
                            .to_owned(),
                    };
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&image);
                    return Fresh {
                        path,
                        image: None,
                        kind: format!("a fresh directory after sync(2) (no loop-mounted ext4: {e})"),
                    };
                }
            }
        }
        Fresh { path, image: None, kind: "a fresh directory after sync(2)".to_owned() }
    }
}

fn make_ext4(image: &Path, at: &Path, bytes: u64) -> Result<(), String> {
    let f = std::fs::File::create(image).map_err(|e| format!("{}: {e}", image.display()))?;
    f.set_len(bytes).map_err(|e| format!("{}: {e}", image.display()))?;
    drop(f);
    // Lazy inode tables and no background zeroing (noinit_itable): the
    // filesystem does no work of its own while the tools run. An inode per
    // 4 KiB (ext4's default is 16 KiB): three copies of a tree of small
    // files (the copy floor) need more inodes than bytes.
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-i", "4096", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
            .arg(image),
        &[0],
    )?;
    run(Command::new("mount").args(["-o", "loop,noinit_itable"]).arg(image).arg(at), &[0])?;
    Ok(())
}

impl Drop for Fresh {
    fn drop(&mut self) {
        if let Some(image) = &self.image {
            let mut ok = false;
            for _ in 0..50 {
                if run(Command::new("umount").arg(&self.path), &[0]).is_ok() {
                    ok = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            if ok {
                let _ = std::fs::remove_file(image);
            } else {
                eprintln!("cannot unmount {}; leaving {}", self.path.display(), image.display());
                return;
            }
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------- the machine

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned()
}

/// CPUs, CPU model, memory, kernel, and the filesystem holding `dir`.
pub fn machine(dir: &Path) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .unwrap_or("")
        .trim_matches('"')
        .to_owned();
    // The longest mount point that is a prefix of `dir`.
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let fs = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 3 && dir.starts_with(f[1])).then(|| (f[1].len(), format!("{} ({} on {})", f[2], f[0], f[1])))
        })
        .max()
        .map(|(_, s)| s)
        .unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu_model": model,
        "memory_bytes": mem_kb * 1024,
        "kernel": kernel,
        "os": os,
        "work_filesystem": fs,
    })
}

/// The first line of `cmd`'s output (stdout, else stderr), if it runs.
pub fn version(cmd: &mut Command) -> Option<String> {
    let out = cmd.stdin(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_owned)
}

/// Where `name` is on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// The Debian package's version of `pkg`, if installed that way.
pub fn deb_version(pkg: &str) -> Option<String> {
    let o = Command::new("dpkg-query").args(["-W", "-f", "${Version}", pkg]).output().ok()?;
    (o.status.success() && !o.stdout.is_empty()).then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}
