//! SPEC §3: the daemon logs to stderr, the system journal or a file
//! (`serve --log`), with timestamps and escaped names in every sink.

use std::ffi::OsStr;
use std::path::Path;

use crate::cluster::Cluster;

/// Whether a log line starts with an RFC 3339 UTC timestamp
/// (`2026-11-29T22:55:18.123456Z`).
fn stamped(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && line[..line.find(' ').unwrap_or(0)].ends_with('Z')
}

/// `serve --log FILE` appends its lines, timestamped, to FILE (created not
/// readable by others) and no longer to stderr; a second run appends.
#[test]
fn serve_log_file_gets_the_timestamped_start_line() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut c = Cluster::new(1);
    let file = c.root().join("a").join("snapsync.log");
    c.start_with("a", &[OsStr::new("--log"), file.as_os_str()]);
    let text = std::fs::read_to_string(&file).expect("the log file exists once the daemon is ready");
    let start = text.lines().find(|l| l.contains("started: a serving g on ")).unwrap_or_else(|| panic!("{text}"));
    assert!(stamped(start), "no timestamp: {start:?}");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o007, 0);
    assert!(!c.log("a").contains("started:"), "stderr got the file's lines:\n{}", c.log("a"));
    c.stop("a");
    c.start_with("a", &[OsStr::new("--log"), file.as_os_str()]);
    c.stop("a");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.matches("started: a serving g").count(), 2, "{text}");
    assert!(text.lines().filter(|l| !l.is_empty()).all(stamped), "{text}");
}

/// On SIGHUP the daemon opens its log file's path again: after logrotate
/// has moved the file away, lines go to a new file there, and the daemon
/// runs on.
#[test]
fn serve_log_file_is_reopened_on_sighup() {
    let mut c = Cluster::new(1);
    let file = c.root().join("a").join("snapsync.log");
    let rotated = c.root().join("a").join("snapsync.log.1");
    c.start_with("a", &[OsStr::new("--log"), file.as_os_str()]);
    std::fs::rename(&file, &rotated).unwrap();
    // The daemon is ours and running: its pid cannot have been reused.
    unsafe {
        libc::kill(c.daemon_pid("a") as libc::pid_t, libc::SIGHUP);
    }
    // The new file's first line is the event; a file gives no other
    // notice of it, so it is looked for, with a bound.
    let deadline = std::time::Instant::now() + crate::cluster::READY_TIMEOUT;
    while !std::fs::read_to_string(&file).unwrap_or_default().contains("SIGHUP: log file reopened") {
        assert!(std::time::Instant::now() < deadline, "no reopened log file; stderr:\n{}", c.log("a"));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    c.stop("a");
    let new = std::fs::read_to_string(&file).unwrap();
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(new.contains("stopped") && !new.contains("started:"), "{new}");
    assert!(old.contains("started:") && !old.contains("stopped"), "{old}");
}

/// A symbolic link planted at the log path is not followed: the daemon
/// refuses to start and the link's target is untouched.
#[test]
fn serve_log_file_refuses_a_symbolic_link() {
    let c = Cluster::new(1);
    let target = c.root().join("a").join("elsewhere");
    std::fs::write(&target, b"").unwrap();
    let link = c.root().join("a").join("snapsync.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = c.run("a", &["serve", "--log", link.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("symbolic link"), "{}", out.stderr);
    assert_eq!(std::fs::read(&target).unwrap(), b"");
}

/// `serve --log journal` where no journal listens logs to stderr, says so
/// once, and serves.
#[test]
fn serve_log_journal_falls_back_to_stderr_without_a_journal() {
    if Path::new("/run/systemd/journal/socket").exists() {
        eprintln!("skipped: a system journal listens here");
        return;
    }
    let mut c = Cluster::new(2);
    c.start_with("a", &[OsStr::new("--log"), OsStr::new("journal")]);
    c.start("b");
    c.sync_ok("b");
    c.stop("a");
    let log = c.log("a");
    assert_eq!(log.matches("the system journal cannot be reached").count(), 1, "{log}");
    assert!(log.contains("logging to stderr instead"), "{log}");
    let start = log.lines().find(|l| l.contains("started: a serving g")).unwrap_or_else(|| panic!("{log}"));
    assert!(stamped(start), "{start:?}");
}

/// `serve --help` documents `--log` and `RUST_LOG`.
#[test]
fn serve_help_documents_log_and_rust_log() {
    let out = assert_cmd::Command::new(crate::cluster::BIN).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--log <journal|stderr|FILE>"), "{help}");
    assert!(help.contains("RUST_LOG"), "{help}");
}
