//! The daemon's local socket and the text the CLI prints, as attackers
//! see them (issue 7, items 5 and 10): a local user who is not root nor
//! the state's owner gets nothing from the socket, a client's request is
//! bounded in size and time and checked before anything runs, and file
//! names chosen by a peer reach the operator's terminal escaped.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::cluster::{BIN, COMMAND_TIMEOUT, Cluster};
use crate::common::{NOBODY, as_nobody, write};

/// The daemon's socket of node `name`.
fn socket(c: &Cluster, name: &str) -> PathBuf {
    c.node_state_dir(name).join("daemon.sock")
}

/// A connection to a daemon socket whose reads and writes give up after
/// [`COMMAND_TIMEOUT`].
fn connect(sock: &Path) -> UnixStream {
    let s = UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    s.set_read_timeout(Some(COMMAND_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(COMMAND_TIMEOUT)).unwrap();
    s
}

/// The daemon's answer on `s`: one JSON line.
fn reply(s: UnixStream) -> Value {
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("the daemon answers within the timeout");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a response ({e}): {line:?}"))
}

/// Sends `line` as a request and returns the daemon's answer.
fn request(sock: &Path, line: &[u8]) -> Value {
    let mut s = connect(sock);
    s.write_all(line).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    reply(s)
}

/// A well-formed request line for `args`.
fn request_line(args: &[&str]) -> Vec<u8> {
    let mut line = serde_json::to_vec(&serde_json::json!({ "args": args, "cwd": "/" })).unwrap();
    line.push(b'\n');
    line
}

/// The process at the other end of a Unix socket (SO_PEERCRED).
fn peer_pid(s: &UnixStream) -> i32 {
    use std::os::fd::AsRawFd;
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid socket and a buffer of the length passed.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "SO_PEERCRED: {}", std::io::Error::last_os_error());
    cred.pid
}

/// A `/proc/PID/status` figure in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: i32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The paths `ls --json` of node `name` lists.
fn tracked(c: &Cluster, name: &str) -> Vec<String> {
    let v = c.ls(name);
    v["entries"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap().to_owned()).collect()
}

/// Runs node `name`'s command `args` as [`NOBODY`] with state root `state`.
fn run_as_nobody(c: &Cluster, state: &Path, args: &[&str]) -> Option<Output> {
    let mut cmd = as_nobody(Path::new(BIN))?;
    cmd.arg("--config").arg(c.config_path()).args(["-N", "a", "-D"]).arg(state).args(args);
    cmd.env_remove("RUST_LOG").current_dir("/");
    Some(cmd.output().unwrap())
}

#[test]
fn daemon_socket_refuses_users_other_than_root_and_the_owner() {
    if as_nobody(Path::new(BIN)).is_none() {
        return;
    }
    let mut c = Cluster::new(1);
    c.start("a");
    write(&c.path("a", "planted"), b"only root may record this");
    // The other user's own command reads the config before it looks for
    // the daemon.
    std::fs::set_permissions(c.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = socket(&c, "a");

    // Through the filesystem: the socket is root's, mode 0600; the client
    // says why it cannot go on, and does not open the state itself.
    let out = run_as_nobody(&c, &c.state("a"), &["check"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot use the daemon's socket") && err.contains("only root or the owner of"), "{err}");

    // A socket reachable by mistake (a link elsewhere, mode 0666): the
    // daemon checks who connected and refuses before reading a byte.
    let alt = c.root().join("alt");
    let config_name = snapsync::cli::config_name_of_file(&c.config_path());
    let alt_node = snapsync::cli::node_state_dir(&alt, &config_name, "a");
    std::fs::create_dir_all(&alt_node).unwrap();
    for d in [&alt, &alt.join(&config_name), &alt_node] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::hard_link(&sock, alt_node.join("daemon.sock")).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = run_as_nobody(&c, &alt, &["check"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("refused a local command from uid {NOBODY}")), "{err}");
    assert!(c.log("a").contains(&format!("refused a local command from uid {NOBODY}")), "{}", c.log("a"));

    // Nothing ran: the planted file is not tracked. Root's check, through
    // the same daemon, records it.
    assert!(!tracked(&c, "a").iter().any(|p| p.ends_with("/planted")));
    c.check("a");
    assert!(tracked(&c, "a").iter().any(|p| p.ends_with("/planted")));
}

#[test]
fn daemon_socket_admits_the_state_directory_owner() {
    if as_nobody(Path::new(BIN)).is_none() {
        return;
    }
    let mut c = Cluster::new(1);
    let node_dir = c.node_state_dir("a");
    std::fs::create_dir_all(&node_dir).unwrap();
    std::os::unix::fs::lchown(&node_dir, Some(NOBODY), Some(NOBODY)).unwrap();
    for d in [c.root(), &c.root().join("a"), &c.state("a"), node_dir.parent().unwrap()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // Root's daemon on state the other user owns: the socket is theirs.
    c.start("a");
    let md = std::fs::symlink_metadata(node_dir.join("daemon.sock")).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o7777), (NOBODY, 0o600));

    write(&c.path("a", "owned"), b"recorded for the owner");
    let out = run_as_nobody(&c, &c.state("a"), &["check"]).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run_as_nobody(&c, &c.state("a"), &["--json", "ls"]).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let paths: Vec<&str> = v["entries"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert!(paths.iter().any(|p| p.ends_with("/owned")), "{paths:?}");
}

#[test]
fn daemon_socket_is_private_and_replaces_what_was_left_there() {
    let mut c = Cluster::new(1);
    let node_dir = c.node_state_dir("a");
    std::fs::create_dir_all(&node_dir).unwrap();
    let sock = node_dir.join("daemon.sock");
    // A link planted where the socket goes must be replaced, not followed.
    let victim = c.root().join("victim");
    std::fs::write(&victim, b"not the daemon's").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::symlink(&victim, &sock).unwrap();
    c.start("a");

    let check_socket = || {
        let md = std::fs::symlink_metadata(&sock).unwrap();
        assert!(md.file_type().is_socket(), "{} is not a socket", sock.display());
        assert_eq!(md.mode() & 0o7777, 0o600, "socket mode");
        assert_eq!(md.uid(), unsafe { libc::geteuid() });
        let leftovers: Vec<_> = std::fs::read_dir(&node_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".sock."))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    };
    check_socket();
    let md = std::fs::symlink_metadata(&victim).unwrap();
    assert!(md.is_file());
    assert_eq!(md.mode() & 0o7777, 0o644);
    assert_eq!(std::fs::read(&victim).unwrap(), b"not the daemon's");
    // The daemon holds the state: a command succeeds only through it.
    c.check("a");

    // A killed daemon leaves its socket behind; the next one replaces it.
    c.kill("a");
    assert!(std::fs::symlink_metadata(&sock).is_ok());
    c.start("a");
    check_socket();
    c.check("a");
    c.stop("a");
    assert!(std::fs::symlink_metadata(&sock).is_err(), "a clean stop removes the socket");
}

#[test]
fn daemon_socket_bounds_request_size_and_time() {
    let mut c = Cluster::new(1);
    c.start("a");
    let sock = socket(&c, "a");
    // A client that connects and sends nothing; opened first so that its
    // time limit runs out while the rest of the test runs.
    let idle = connect(&sock);
    let pid = peer_pid(&idle);
    // Reset the peak resident size, so the peak below is this request's.
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    let peak_before = status_kib(pid, "VmHWM");

    // 64 MiB without a newline: the daemon stops reading after 1 MiB.
    let mut big = connect(&sock);
    let block = vec![b'x'; 1 << 20];
    for _ in 0..64 {
        if big.write_all(&block).is_err() {
            break;
        }
    }
    let _ = big.shutdown(std::net::Shutdown::Write);
    let r = reply(big);
    assert_eq!(r["code"], 2, "{r}");
    assert!(r["error"].as_str().unwrap().contains("longer than 1048576 bytes"), "{r}");
    let peak = status_kib(pid, "VmHWM");
    assert!(
        peak < peak_before + 16 * 1024,
        "a 64 MiB request raised the daemon's peak RSS from {peak_before} KiB to {peak} KiB"
    );
    eprintln!("peak RSS {peak_before} KiB before, {peak} KiB after a 64 MiB request");

    // It keeps serving.
    c.check("a");
    assert!(status_kib(pid, "VmRSS") < peak_before + 16 * 1024);

    // The silent client is cut off with a reason.
    let r = reply(idle);
    assert_eq!(r["code"], 2, "{r}");
    assert!(r["error"].as_str().unwrap().contains("no complete request within"), "{r}");
}

#[test]
fn daemon_refuses_commands_not_meant_for_it() {
    let mut c = Cluster::new(1);
    c.start("a");
    let sock = socket(&c, "a");
    let key = c.root().join("forwarded.key");
    let demo = c.root().join("forwarded-demo");
    let (key_s, demo_s) = (key.to_str().unwrap(), demo.to_str().unwrap());
    for (args, name) in
        [(vec!["keygen", key_s], "keygen"), (vec!["serve"], "serve"), (vec!["demo", "--dir", demo_s], "demo")]
    {
        let r = request(&sock, &request_line(&args));
        assert_eq!(r["code"], 2, "{args:?}: {r}");
        let want = format!("`snapsync {name}` is not run by the daemon");
        assert!(r["error"].as_str().unwrap().contains(&want), "{args:?}: {r}");
    }
    assert!(!key.exists() && !demo.exists());

    let r = request(&sock, b"{\"args\": [\"ls\"\n");
    assert_eq!(r["code"], 2, "{r}");
    assert!(r["error"].as_str().unwrap().starts_with("bad request"), "{r}");
    let r = request(&sock, b"\xff\xfe not even text\n");
    assert_eq!(r["code"], 2, "{r}");

    // Still running and serving; a well-formed request works.
    let r = request(&sock, &request_line(&["--json", "ls"]));
    assert_eq!(r["code"], 0, "{r}");
    c.check("a");
    c.stop("a");
}

/// Fails if `text` holds a control character other than the newlines
/// that end its lines, or a line the file name injected.
fn assert_no_raw_controls(what: &str, text: &str) {
    let bad: Vec<char> = text.chars().filter(|c| c.is_control() && *c != '\n').collect();
    assert!(bad.is_empty(), "{what} prints raw control characters {bad:?}:\n{text}");
    assert!(!text.lines().any(|l| l.starts_with("fake line")), "{what} lets a name start a line:\n{text}");
}

#[test]
fn text_output_escapes_control_characters_in_names() {
    let evil = "red\x1b[31mX\nfake line";
    let shown = "red\\x1b[31mX\\nfake line";
    let mut c = Cluster::new(2);
    write(&c.path("a", evil), b"first");
    c.start("b");

    let out = c.run("a", &["sync"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_no_raw_controls("sync", &out.stdout);
    assert!(out.stdout.contains(shown), "{}", out.stdout);
    // b's daemon wrote it, and its audit line names it escaped.
    let log = c.log("b");
    assert_no_raw_controls("the daemon's log", &log);
    assert!(log.contains(&format!("action=create path={}", c.path("b", shown).display())), "{log}");

    for node in ["a", "b"] {
        let out = c.run(node, &["ls"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_no_raw_controls("ls", &out.stdout);
        assert!(out.stdout.contains(shown), "{}", out.stdout);
        // JSON keeps the exact name.
        let want = c.path(node, evil).display().to_string();
        assert!(tracked(&c, node).contains(&want), "{node}: no {want:?}");
    }

    // A conflict on that name, and a new file not yet sent.
    let other = "tab\there\u{9b}2J";
    write(&c.path("a", evil), b"changed on a");
    write(&c.path("b", evil), b"changed on b, differently");
    write(&c.path("a", other), b"new");
    c.check("b");
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 3, "{v:#}");

    let out = c.run("a", &["conflicts"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_no_raw_controls("conflicts", &out.stdout);
    assert!(out.stdout.contains(shown), "{}", out.stdout);
    let list = c.conflicts("a");
    assert!(list.iter().any(|x| x["path"].as_str().unwrap().ends_with(evil)), "{list:?}");

    write(&c.path("a", "one more\x07"), b"bell");
    let out = c.run("a", &["status"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_no_raw_controls("status", &out.stdout);
    assert_no_raw_controls("status (stderr)", &out.stderr);
    assert!(out.stdout.contains("one more\\x07"), "{}", out.stdout);
    // status records nothing (SPEC §3): the new file is listed as a
    // local change not recorded yet.
    let (_, v) = c.json("a", &["status"]);
    let pending = v["check"]["groups"][0]["pending_paths"].as_array().unwrap();
    assert!(pending.iter().any(|p| p.as_str().unwrap().ends_with("one more\x07")), "{v:#}");

    // `other` went across in the conflicting sync; both nodes print it escaped.
    let out = c.run("b", &["ls"]);
    assert_no_raw_controls("ls", &out.stdout);
    assert!(out.stdout.contains("tab\\there\\xc2\\x9b2J"), "{}", out.stdout);
    let mut raw = Vec::new();
    std::fs::File::open(c.log_path("b")).unwrap().read_to_end(&mut raw).unwrap();
    assert!(!raw.contains(&0x1b), "raw ESC in b's log");
}
