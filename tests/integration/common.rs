//! A node laid out in a temporary directory, and helpers to look at trees.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// One node: a config, a key, a tree and a state directory, all in one
/// temporary directory.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub name: String,
}

impl Node {
    /// A node `name` whose group `g` includes `<dir>/tree` and keeps
    /// `generations` backups (none when 0). `extra` goes into the group.
    pub fn new(name: &str, generations: u32, extra: &str) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path().display().to_string();
        let backup = if generations > 0 {
            format!("backup-directory {d}/backup;\n  backup-generations {generations};")
        } else {
            String::new()
        };
        let config = format!(
            "group g {{\n  host {name} other;\n  key {d}/key;\n  include {d}/tree;\n  {backup}\n  {extra}\n}}\n"
        );
        std::fs::write(dir.path().join("snapsync.cfg"), config).unwrap();
        std::fs::create_dir_all(dir.path().join("tree")).unwrap();
        let node = Node { dir, name: name.to_owned() };
        node.cmd().args(["keygen"]).arg(node.path("key")).assert().success();
        node
    }

    /// A path inside the node's directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Rewrites the node's config file through `edit`.
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let cfg = self.path("snapsync.cfg");
        let text = std::fs::read_to_string(&cfg).unwrap();
        std::fs::write(&cfg, edit(text)).unwrap();
    }

    /// The node's tree.
    pub fn tree(&self) -> PathBuf {
        self.path("tree")
    }

    /// `snapsync --config ... -N name -D state`.
    pub fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("snapsync").unwrap();
        c.arg("--config").arg(self.path("snapsync.cfg"));
        c.arg("-N").arg(&self.name);
        c.arg("-D").arg(self.path("state"));
        c.env_remove("RUST_LOG");
        c
    }

    /// Runs a command with `--json` and parses its output.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cmd().arg("--json").args(args).output().unwrap();
        assert!(out.status.success(), "{args:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// Writes a file, creating its directories.
pub fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// Waits (bounded) for `path` to exist: how a test hook in a daemon
/// (`snapsync::peer::PAUSE_ENV`) announces that it has paused.
pub fn wait_for_file(path: &Path, limit: std::time::Duration) {
    // The one place a poll is fine: the hook announces its pause with a
    // file; the wait is bounded.
    let started = std::time::Instant::now();
    while !path.exists() {
        assert!(started.elapsed() < limit, "{} did not appear within {limit:?}", path.display());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

/// One entry as [`snapshot`] sees it: kind, mode, mtime for files, and
/// content or link target.
pub type Seen = (String, u32, Option<(i64, i64)>, Vec<u8>);

/// What a tree holds: relative path → [`Seen`].
pub type Snapshot = BTreeMap<PathBuf, Seen>;

/// What a tree holds, for comparisons.
pub fn snapshot(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    for e in walkdir(root) {
        let md = std::fs::symlink_metadata(&e).unwrap();
        let rel = e.strip_prefix(root).unwrap().to_path_buf();
        let ft = md.file_type();
        let v = if ft.is_symlink() {
            ("link".into(), 0, None, std::fs::read_link(&e).unwrap().into_os_string().into_encoded_bytes())
        } else if ft.is_dir() {
            ("dir".into(), md.permissions().mode() & 0o7777, None, Vec::new())
        } else {
            (
                "file".into(),
                md.permissions().mode() & 0o7777,
                Some((md.mtime(), md.mtime_nsec())),
                std::fs::read(&e).unwrap(),
            )
        };
        out.insert(rel, v);
    }
    out
}

fn walkdir(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// Entries below `dir` named like snapsync's temporary files (`.snapsync…`).
pub fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(".snapsync") {
                out.push(e.path());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    out
}

/// Copies a tree: files with their mtimes, links as links, directories
/// with their modes.
pub fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    let md = std::fs::metadata(from).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            copy_tree(&e.path(), &dest);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), &dest).unwrap();
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
            let src = std::fs::metadata(e.path()).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&dest)
                .unwrap()
                .set_times(std::fs::FileTimes::new().set_modified(src.modified().unwrap()))
                .unwrap();
        }
    }
    std::fs::set_permissions(to, md.permissions()).unwrap();
}

/// A field of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...), in kB.
pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process's /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

/// The unprivileged uid and gid tests run commands as (nobody).
pub const NOBODY: u32 = 65534;

/// `program` run as [`NOBODY`] with no supplementary groups, through
/// setpriv; `None`, with the reason printed, where that cannot be done (the
/// tests do not run as root, or setpriv is missing).
pub fn as_nobody(program: impl AsRef<std::ffi::OsStr>) -> Option<std::process::Command> {
    if !is_root() {
        eprintln!("skipped: running a command as another user needs root");
        return None;
    }
    if std::process::Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: setpriv (util-linux) is not installed");
        return None;
    }
    let mut cmd = std::process::Command::new("setpriv");
    cmd.arg(format!("--reuid={NOBODY}")).arg(format!("--regid={NOBODY}")).args(["--clear-groups", "--"]);
    cmd.arg(program);
    Some(cmd)
}

/// Makes `dir` reachable by other users: every directory from `dir`'s
/// parent up to (not including) `outer` gets `o+x`. False, with the reason
/// printed, when `outer` itself is not traversable by them.
pub fn traversable_to(dir: &Path, outer: &Path) -> bool {
    if std::fs::metadata(outer).unwrap().mode() & 0o001 == 0 {
        eprintln!("skipped: {} is not traversable by other users", outer.display());
        return false;
    }
    let mut p = dir.parent().unwrap();
    while p != outer {
        let mode = std::fs::metadata(p).unwrap().permissions().mode();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o711)).unwrap();
        p = p.parent().unwrap();
    }
    true
}

/// A small tmpfs mounted over a directory for the length of a test, with
/// the directory's mode (a tmpfs root is 1777); unmounted when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it, e.g. `8m`)
    /// over `dir`; `None`, with the reason printed, where that cannot be
    /// done (not root, or no mount).
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        if !is_root() {
            eprintln!("skipped: mounting a small filesystem needs root");
            return None;
        }
        let mode = std::fs::metadata(dir).expect("the directory exists").permissions().mode() & 0o7777;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode={mode:o}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_path_buf())),
            Ok(o) => {
                eprintln!("skipped: cannot mount a tmpfs: {}", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }

    /// Gives the filesystem `size`.
    pub fn resize(&self, size: &str) {
        let out = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .expect("mount runs");
        assert!(out.status.success(), "remount: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Fills the filesystem with one file; returns its path.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0xa5u8; 64 * 1024];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        // The last partial block: byte by byte.
        while f.write(&[0]).is_ok_and(|n| n == 1) {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Opens an engine in this test process. The state's lock is an `flock`,
/// and a child that another test thread forks while a previous engine of
/// this test held it keeps a copy of the descriptor (and so the lock) until
/// it execs: a reopen right after may find the lock held for a moment. It
/// is retried for at most 10 s (the snapsync command waits likewise).
pub fn open_engine(config: &snapsync::config::Config, host: &str, state: &Path) -> snapsync::engine::Engine {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match snapsync::engine::Engine::open(config, host, state) {
            Err(snapsync::engine::EngineError::Store(snapsync::store::StoreError::Locked { .. }))
                if std::time::Instant::now() < deadline =>
            {
                // A lock held by a child's inherited descriptor: no event to
                // wait for but its exec.
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
}

/// A directory outside every synced tree, with one file in it, that
/// nothing may change: [`Outside::assert_untouched`] compares its entries,
/// their content, modes and mtimes, and the directory's own mtime (which a
/// new or removed entry changes) with what they were at [`Outside::new`].
pub struct Outside {
    pub dir: PathBuf,
    before: (BTreeMap<PathBuf, Seen>, (i64, i64)),
}

impl Outside {
    /// Creates `dir` with a file `sentinel` in it.
    pub fn new(dir: &Path) -> Outside {
        write(&dir.join("sentinel"), b"outside every tree");
        Outside { dir: dir.to_path_buf(), before: Outside::seen(dir) }
    }

    fn seen(dir: &Path) -> (BTreeMap<PathBuf, Seen>, (i64, i64)) {
        let md = std::fs::symlink_metadata(dir).expect("the outside directory");
        (snapshot(dir), (md.mtime(), md.mtime_nsec()))
    }

    /// Panics if anything in or of the directory changed.
    pub fn assert_untouched(&self) {
        let now = Outside::seen(&self.dir);
        assert!(now == self.before, "{} changed: {:#?}\nwas {:#?}", self.dir.display(), now, self.before);
    }
}
