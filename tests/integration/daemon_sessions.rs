//! Sessions a daemon keeps between its runs (protocol 3): its later runs
//! to a peer use the session its first one opened; a peer that restarted
//! meanwhile, or whose configuration changed, gets a new session for the
//! next run, which succeeds as any other.

use std::time::Duration;

use crate::cluster::Cluster;
use crate::common::write;

/// What a daemon logs (at debug) when it accepts a session.
const OPENED: &str = "session opened";

/// How long a daemon has to log a reload.
const LOG_WAIT: Duration = Duration::from_secs(20);

/// Starts node `name`'s daemon with debug logs.
fn start_logging(c: &mut Cluster, name: &str) {
    c.start_with_env(name, &[], &[("RUST_LOG", "snapsync=debug")]);
}

/// Writes `name` on a, has a's daemon sync, and checks b holds it.
fn sync_one(c: &Cluster, name: &str) {
    write(&c.path("a", name), name.as_bytes());
    c.sync_ok("a");
    assert_eq!(std::fs::read(c.path("b", name)).unwrap(), name.as_bytes(), "{name} reached b");
}

#[test]
fn a_daemons_later_runs_use_the_session_its_first_run_opened() {
    let mut c = Cluster::new(2);
    start_logging(&mut c, "a");
    start_logging(&mut c, "b");
    for name in ["one", "two", "three"] {
        sync_one(&c, name);
    }
    // A run with nothing to do uses it too.
    c.sync_ok("a");
    assert_eq!(c.log("b").matches(OPENED).count(), 1, "b accepted one session:\n{}", c.log("b"));
    c.assert_same("a", "b");
}

#[test]
fn a_peer_restarted_between_runs_gets_a_new_session() {
    let mut c = Cluster::new(2);
    start_logging(&mut c, "a");
    start_logging(&mut c, "b");
    sync_one(&c, "before");
    // a keeps the session with the b that stops here; the next run finds
    // it gone and opens one with the new b, and succeeds.
    c.stop("b");
    start_logging(&mut c, "b");
    sync_one(&c, "after");
    assert_eq!(c.log("b").matches(OPENED).count(), 2, "b accepted a session in each life:\n{}", c.log("b"));
    c.assert_same("a", "b");
}

#[test]
fn a_peer_whose_configuration_changed_serves_the_next_run_with_it() {
    let mut c = Cluster::new(2);
    let text = std::fs::read_to_string(c.config_path()).unwrap();
    c.use_own_config("b", &text);
    start_logging(&mut c, "a");
    start_logging(&mut c, "b");
    sync_one(&c, "first.tmp");
    // Only b's configuration changes: a keeps its node and the session;
    // b takes the edit before it serves the next run, on a new session.
    let own = c.node("b").config.clone();
    std::fs::write(&own, text.replacen("  include %tree%;\n", "  include %tree%;\n  exclude *.tmp;\n", 1)).unwrap();
    write(&c.path("a", "second.tmp"), b"excluded on b now");
    write(&c.path("a", "page.html"), b"synced");
    let (code, report) = c.sync("a", &[]);
    assert!(c.path("b", "page.html").exists(), "the run reached b (exit {code}): {report}");
    assert!(!c.path("b", "second.tmp").exists(), "b's new exclude holds in the next run");
    c.wait_for_log("b", "configuration reloaded from", 1, LOG_WAIT);
    assert_eq!(c.log("b").matches(OPENED).count(), 2, "the run after the edit had a new session:\n{}", c.log("b"));
}
