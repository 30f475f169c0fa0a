//! Live configuration (SPEC §3): a running daemon works with the
//! configuration on disk; an edit takes effect at the next command (or
//! peer session, or SIGHUP), and an edit that does not load leaves the
//! daemon with the configuration it had and shows the error.

use std::time::Duration;

use crate::cluster::Cluster;
use crate::common::write;

/// How long a daemon has to log a reload after SIGHUP.
const LOG_WAIT: Duration = Duration::from_secs(20);

/// The shared config with `line` added to the group.
fn with_line(c: &Cluster, line: &str) -> String {
    let text = std::fs::read_to_string(c.config_path()).unwrap();
    text.replacen("  include %tree%;\n", &format!("  include %tree%;\n  {line}\n"), 1)
}

#[test]
fn an_edited_configuration_takes_effect_at_the_next_command() {
    let mut c = Cluster::new(2);
    c.start_all();
    write(&c.path("a", "first.tmp"), b"synced before the edit");
    c.sync_ok("a");
    assert!(c.path("b", "first.tmp").exists());

    // An exclude added while both daemons run: the next sync honours it
    // on both hosts, without a restart.
    std::fs::write(c.config_path(), with_line(&c, "exclude *.tmp;")).unwrap();
    write(&c.path("a", "second.tmp"), b"excluded now");
    write(&c.path("a", "page.html"), b"synced");
    c.sync_ok("a");
    assert!(c.path("b", "page.html").exists(), "the sync ran");
    assert!(!c.path("b", "second.tmp").exists(), "the edited exclude holds on the next sync");
    for n in ["a", "b"] {
        assert!(c.log(n).contains("configuration reloaded from"), "{n} logs the reload:\n{}", c.log(n));
    }
}

#[test]
fn an_edit_that_does_not_load_keeps_the_old_configuration_and_shows_why() {
    let mut c = Cluster::new(2);
    c.start_all();
    let good = std::fs::read_to_string(c.config_path()).unwrap();

    // A broken edit: the command says what is wrong (as csync2 does).
    std::fs::write(c.config_path(), with_line(&c, "exclude *.tmp")).unwrap();
    let out = c.run("a", &["sync"]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("csync2.cfg"), "the error names the file: {}", out.stderr);

    // The daemons keep serving with the configuration they had: SIGHUP
    // logs why the edit was not taken, and peers still sync with it.
    let pid = c.daemon_pid("b");
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
    c.wait_for_log("b", "keeps the configuration it had", 1, LOG_WAIT);
    assert!(c.running("b"));

    // Fixed again: the next command works and the daemons take it.
    std::fs::write(c.config_path(), &good).unwrap();
    write(&c.path("a", "after.txt"), b"after the fix");
    c.sync_ok("a");
    assert!(c.path("b", "after.txt").exists());
    // SAFETY: as above.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
    c.wait_for_log("b", "configuration reloaded from", 1, LOG_WAIT);
}

/// A configuration the daemon cannot take although it parses: the daemon
/// keeps the old one, and a command it runs shows why.
#[test]
fn a_command_shows_why_the_daemon_kept_its_configuration() {
    let mut c = Cluster::new(2);
    c.start_all();
    let text = std::fs::read_to_string(c.config_path()).unwrap();
    // A second group whose key file others may read: valid syntax, but
    // a key no node may use.
    let key = c.root().join("open.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let edited = format!("{text}\ngroup h {{\n  host a b;\n  key {};\n  include /nonexistent-h;\n}}\n", key.display());
    std::fs::write(c.config_path(), edited).unwrap();
    let out = c.run("a", &["status"]);
    assert!(
        out.stderr.contains("keeps the configuration it had"),
        "the unusable edit is shown: {} {}{}",
        out.code,
        out.stdout,
        out.stderr
    );
    assert!(out.stderr.contains("open.key"), "the reason names the key file: {}", out.stderr);
}
