//! SPEC §3 (issue 9, item 2): long work shows progress on a terminal also
//! when the daemon does it, never on a pipe; Ctrl-C on a command the
//! daemon runs stops the run in the daemon.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, EXIT_TIMEOUT};
use crate::common::{bytes, write};

/// How long a test waits for text on a terminal.
const SHOWN_WAIT: Duration = Duration::from_secs(60);

/// A pseudo-terminal for a command's stderr: what the command draws on it
/// is read here as it comes.
struct Terminal {
    /// The terminal's side the command gets; given away at spawn.
    slave: Option<OwnedFd>,
    /// Chunks read from the master side; closed once the command has gone.
    chunks: Option<mpsc::Receiver<Vec<u8>>>,
    master: Option<OwnedFd>,
    seen: Vec<u8>,
}

impl Terminal {
    fn open() -> Terminal {
        let (mut master, mut slave) = (-1, -1);
        let size = libc::winsize { ws_row: 24, ws_col: 120, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: out-pointers to two descriptors and a window size; no
        // name buffer or termios.
        let rc = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &size) };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: openpty returned two descriptors that nothing else owns.
        let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        Terminal { slave: Some(slave), chunks: None, master: Some(master), seen: Vec::new() }
    }

    /// The terminal as a command's stderr; reading starts.
    fn stderr(&mut self) -> Stdio {
        let mut master = std::fs::File::from(self.master.take().expect("given once"));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            // Ends with EIO once no process holds the terminal's side.
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        self.chunks = Some(rx);
        Stdio::from(self.slave.take().expect("given once"))
    }

    /// Waits (bounded) until `text` has been shown.
    fn wait_for(&mut self, text: &str) {
        let deadline = Instant::now() + SHOWN_WAIT;
        while !String::from_utf8_lossy(&self.seen).contains(text) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.as_ref().expect("reading").recv_timeout(left) {
                Ok(chunk) => self.seen.extend(chunk),
                Err(e) => panic!("{text:?} not shown within {SHOWN_WAIT:?} ({e:?}); shown:\n{}", self.shown()),
            }
        }
    }

    /// Everything shown until the command (which has exited) let go of
    /// the terminal.
    fn rest(&mut self) -> String {
        let deadline = Instant::now() + SHOWN_WAIT;
        let chunks = self.chunks.as_ref().expect("reading");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match chunks.recv_timeout(left) {
                Ok(chunk) => self.seen.extend(chunk),
                Err(mpsc::RecvTimeoutError::Disconnected) => return self.shown(),
                Err(e) => panic!("the terminal was not let go within {SHOWN_WAIT:?} ({e:?})"),
            }
        }
    }

    fn shown(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }
}

/// Runs `snapsync ARGS` of node `name` with its stderr on `term`.
fn spawn_on(c: &Cluster, name: &str, term: &mut Terminal, args: &[&str]) -> std::process::Child {
    c.std_cmd(name)
        .args(args)
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(term.stderr())
        .spawn()
        .expect("command starts")
}

/// Waits (bounded) for `child` to exit; its exit status.
fn exit_of(mut child: std::process::Child) -> (i32, String) {
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
            return (status.code().unwrap_or(-1), out);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the command did not exit within {EXIT_TIMEOUT:?}");
        }
        // No event to wait for on a child but its exit; `Child::wait`
        // cannot be bounded.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The daemon draws nothing itself: the command that waits shows the scan
/// and the transfer of a sync the daemon runs, on its terminal; the same
/// command on a pipe shows none.
#[test]
fn a_sync_run_by_the_daemon_shows_progress_on_a_terminal_and_never_on_a_pipe() {
    let mut c = Cluster::new(2);
    c.start_all();
    for i in 0..8 {
        write(&c.path("b", &format!("big/{i}.bin")), &bytes(i, 256 * 1024));
    }
    c.check("b");

    let mut term = Terminal::open();
    let child = spawn_on(&c, "a", &mut term, &["sync"]);
    let (code, out) = exit_of(child);
    let shown = term.rest();
    assert_eq!(code, 0, "stdout:\n{out}\nterminal:\n{shown}");
    assert!(shown.contains("scanning g"), "the scan is shown:\n{shown}");
    assert!(shown.contains("receiving from b (g)"), "the transfer is shown:\n{shown}");
    assert!(out.contains("g with b: 9 changes applied here"), "the report is on stdout:\n{out}");
    assert!(c.log("a").contains("sync run:"), "the daemon ran it:\n{}", c.log("a"));

    // The same on a pipe: the report, no progress.
    write(&c.path("b", "big/more.bin"), &bytes(99, 256 * 1024));
    c.check("b");
    let piped = c.run("a", &["sync"]);
    assert_eq!(piped.code, 0, "{}{}", piped.stdout, piped.stderr);
    assert!(piped.stdout.contains("1 change applied here"), "{}", piped.stdout);
    for bar in ["scanning", "receiving", "connecting", "\x1b["] {
        assert!(!piped.stderr.contains(bar), "no progress on a pipe ({bar:?}):\n{}", piped.stderr);
    }

    // Nor on a terminal with --quiet or --json.
    for flag in ["--quiet", "--json"] {
        write(&c.path("b", &format!("big/{flag}.bin")), &bytes(98, 256 * 1024));
        c.check("b");
        let mut term = Terminal::open();
        let child = spawn_on(&c, "a", &mut term, &[flag, "sync"]);
        let (code, out) = exit_of(child);
        let shown = term.rest();
        assert_eq!(code, 0, "{flag}: stdout:\n{out}\nterminal:\n{shown}");
        assert!(!shown.contains("scanning") && !shown.contains("receiving"), "{flag}: no progress:\n{shown}");
    }
}

/// Without a daemon the command does the work and draws the same bars.
#[test]
fn a_sync_run_here_shows_progress_on_a_terminal() {
    let mut c = Cluster::new(2);
    c.start("b");
    write(&c.path("b", "big.bin"), &bytes(7, 512 * 1024));
    c.check("b");
    let mut term = Terminal::open();
    let child = spawn_on(&c, "a", &mut term, &["sync"]);
    let (code, out) = exit_of(child);
    let shown = term.rest();
    assert_eq!(code, 0, "stdout:\n{out}\nterminal:\n{shown}");
    assert!(shown.contains("scanning g"), "{shown}");
    assert!(shown.contains("receiving from b (g)"), "{shown}");
    assert!(!c.running("a") && c.log("a").is_empty(), "no daemon ran it");
}

/// Ctrl-C on `sync` while the daemon runs it: the command exits at once
/// saying the daemon stopped the run, the daemon logs that it did and keeps
/// serving, and the next sync completes. The run is held up by a peer that
/// does not answer (its daemon stopped with SIGSTOP), so it cannot finish
/// before the Ctrl-C whatever the machine's speed.
#[test]
fn ctrl_c_stops_a_sync_the_daemon_runs() {
    let mut c = Cluster::new(2);
    c.start_all();
    c.sync_ok("a");
    write(&c.path("b", "late.txt"), b"taken once the peer answers again");
    c.check("b");

    let runs = c.log("a").matches("sync run:").count();
    let b = c.daemon_pid("b") as libc::pid_t;
    // SAFETY: b's daemon is this test's child, not reaped.
    unsafe { libc::kill(b, libc::SIGSTOP) };
    let mut term = Terminal::open();
    let child = spawn_on(&c, "a", &mut term, &["sync"]);
    // The daemon is in the run: it reports connecting to b.
    term.wait_for("connecting to b");
    // SAFETY: the command is this test's child, not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let (code, _) = exit_of(child);
    let shown = term.rest();
    assert_eq!(code, 1, "the command reports the interruption (SPEC §3: a run that did not finish):\n{shown}");
    assert!(shown.contains("interrupted; the daemon stopped `sync`"), "{shown}");
    let log = c.log("a");
    assert!(log.contains("`sync` interrupted by the command's caller: stopped"), "{log}");
    assert_eq!(log.matches("sync run:").count(), runs, "the run did not go on to its end:\n{log}");
    assert!(!c.path("a", "late.txt").exists());

    // A command killed outright stops its run too: the daemon sees its
    // connection closed.
    let mut term = Terminal::open();
    let child = spawn_on(&c, "a", &mut term, &["sync"]);
    term.wait_for("connecting to b");
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    let (code, _) = exit_of(child);
    assert_eq!(code, -1, "killed");
    c.wait_for_log("a", "`sync` interrupted by the command's caller: stopped", 2, SHOWN_WAIT);
    assert!(c.log("a").contains("the caller of a local command is gone"), "{}", c.log("a"));

    // SAFETY: as above.
    unsafe { libc::kill(b, libc::SIGCONT) };
    c.sync_ok("a");
    assert_eq!(std::fs::read(c.path("a", "late.txt")).unwrap(), b"taken once the peer answers again");
    c.assert_status_clean("a");
    assert!(c.running("a"));
    // No temporary left in the tree or in the journal of temporaries.
    let temps = c.temporaries("a");
    assert!(temps.is_empty(), "temporaries left: {temps:?}");
}
