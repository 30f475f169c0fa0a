//! Kill points: a test hook that ends the process at a named step, as a
//! power cut would end it, so that crash safety (SPEC §7) can be tested
//! deterministically rather than with timed kills.
//!
//! Terms:
//! - A *kill point* is a call `killpoint::hit("name")` placed at a step
//!   where a crash must leave the trees, the state and the chunk stores
//!   consistent (between a part file's sync and its rename, in the middle
//!   of a state commit, ...). Every name is listed in [`POINTS`]; a unit
//!   test checks that the list and the calls in `src/` agree.
//! - The *target* is read once from the environment variable
//!   [`ENV`] (`SNAPSYNC_KILL_AT`): `name` (the first time that point is
//!   reached) or `name:N` (the N-th time, counting from 1). When the
//!   target is reached the process logs one line on stderr and sends
//!   itself SIGKILL: no destructor runs, no buffer is flushed, no
//!   temporary is removed, exactly as if the machine had lost power
//!   after the writes already handed to the kernel.
//!
//! This is a test hook only (tests/integration/kill_points.rs drives it);
//! nobody sets the variable in production. With the variable unset a
//! point costs one relaxed atomic load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// The environment variable naming the kill point: `name` or `name:N`.
pub const ENV: &str = "SNAPSYNC_KILL_AT";

/// Every kill point placed in the source, with where it is.
pub const POINTS: &[&str] = &[
    // A chunk fetched from a peer is verified and kept (chunk store or
    // staging area), before the file it belongs to is built.
    "receive.chunk",
    // Every missing chunk of a batch has arrived; nothing is built yet.
    "apply.fetched",
    // A temporary file's data is synced, before it is renamed into place
    // (sync and restore).
    "place.synced",
    // A temporary is renamed into place, before the journal forgets it.
    "place.renamed",
    // A batch of files is in place and its directories synced, before the
    // state records them.
    "apply.placed",
    // The state marker is written durably, before the commit it announces.
    "store.commit.marker",
    // Just before a state batch is committed.
    "store.commit.before",
    // Just after a state batch is committed.
    "store.commit.after",
    // A directory's record is added to the scan's writes (a check,
    // before anything is committed).
    "scan.dir",
    // A check's generation is in the batch, before the batch is committed.
    "check.generation",
    // Garbage collection has marked what is live; nothing is swept yet.
    "gc.marked",
    // The collection's state records are swept and committed; the chunks
    // they referenced are not freed yet.
    "gc.state_swept",
    // An in-place or `--to` restore has written one more file.
    "restore.file",
    // A restore has written every target, before the check that records it.
    "restore.written",
    // A reconcile has walked and planned, before anything is committed or
    // fetched.
    "reconcile.planned",
    // The initiator compared roots, before asking the peer to pull.
    "push.before",
    // A node served one more chunk frame to a pulling peer.
    "serve.chunk",
];

/// 0: the environment not read yet; 1: no target; 2: a target is set.
static STATE: AtomicU8 = AtomicU8::new(UNREAD);
const UNREAD: u8 = 0;
const UNSET: u8 = 1;
const SET: u8 = 2;

/// The target: the point's name, which time it fires, and how many times
/// it was reached so far.
struct Target {
    name: String,
    nth: u64,
    seen: AtomicU64,
}

static TARGET: OnceLock<Option<Target>> = OnceLock::new();

/// Ends the process with SIGKILL if [`ENV`] names this point (and this is
/// the time it names). A test hook: see the module documentation.
#[inline]
pub fn hit(name: &'static str) {
    if STATE.load(Ordering::Relaxed) == UNSET {
        return;
    }
    armed(name);
}

#[cold]
fn armed(name: &'static str) {
    debug_assert!(POINTS.contains(&name), "kill point {name:?} is not listed in POINTS");
    let target = TARGET.get_or_init(|| {
        let t = std::env::var(ENV).ok().and_then(|v| parse(&v));
        STATE.store(if t.is_some() { SET } else { UNSET }, Ordering::Relaxed);
        t
    });
    let Some(t) = target else { return };
    if t.name != name {
        return;
    }
    let n = t.seen.fetch_add(1, Ordering::Relaxed) + 1;
    if n != t.nth {
        return;
    }
    // stderr is unbuffered: the line is written before the signal.
    eprintln!("snapsync: kill point {name} reached (time {n}): killing the process");
    // SAFETY: getpid and kill cannot fail in a way that matters here; if
    // the signal is somehow not delivered, abort ends the process anyway.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort();
}

/// `name` or `name:N` (N ≥ 1).
fn parse(v: &str) -> Option<Target> {
    let (name, nth) = match v.rsplit_once(':') {
        Some((name, n)) => (name, n.parse().ok().filter(|&n| n >= 1)?),
        None => (v, 1),
    };
    (!name.is_empty()).then(|| Target { name: name.to_owned(), nth, seen: AtomicU64::new(0) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t = parse("gc.marked").unwrap();
        assert_eq!((t.name.as_str(), t.nth), ("gc.marked", 1));
        let t = parse("receive.chunk:3").unwrap();
        assert_eq!((t.name.as_str(), t.nth), ("receive.chunk", 3));
        assert!(parse("receive.chunk:0").is_none());
        assert!(parse("receive.chunk:x").is_none());
        assert!(parse("").is_none());
    }

    #[test]
    fn an_unset_variable_never_kills() {
        // The test process has no target: every point returns.
        if std::env::var_os(ENV).is_none() {
            for p in POINTS {
                hit(p);
            }
            assert_eq!(STATE.load(Ordering::Relaxed), UNSET);
        }
    }

    /// The list cannot rot: every name in POINTS is hit somewhere in the
    /// source, and every point hit in the source is listed.
    #[test]
    fn points_listed_are_the_points_placed() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut text = String::new();
        let mut stack = vec![src];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("killpoint.rs") {
                    text.push_str(&std::fs::read_to_string(&p).unwrap());
                }
            }
        }
        let call = "killpoint::hit(\"";
        let mut placed: Vec<&str> = text
            .match_indices(call)
            .map(|(i, _)| {
                let rest = &text[i + call.len()..];
                &rest[..rest.find('"').unwrap()]
            })
            .collect();
        placed.sort_unstable();
        placed.dedup();
        let mut listed = POINTS.to_vec();
        listed.sort_unstable();
        assert_eq!(listed.len(), POINTS.len(), "a name is listed twice");
        assert_eq!(placed, listed, "kill points placed in src/ and listed in POINTS differ");
    }
}
