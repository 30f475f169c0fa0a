//! `serve --watch` (SPEC §1, §8): changes move to every peer as they
//! happen, a burst as a few runs, a file being written only once whole;
//! a watch limit falls back to periodic reconciles; a `sync` on a watching
//! daemon with nothing changed does not walk the tree.
//!
//! The tests wait for events with generous bounds and print the latency
//! they saw; they never assert a time.

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, Setup};
use crate::common::{bytes, wait_for_file, write};

/// How long anything a test waits for may take.
const WAIT: Duration = Duration::from_secs(20);

/// The log line of a watch-triggered run.
const WATCH_RUN: &str = "sync run: watch, ";

/// The log line of a full reconcile.
const FULL_RUN: &str = "sync run: full reconcile";

/// Three nodes, all `serve --watch`, each past its first full reconcile
/// (so what the tests write is seen by the watcher only).
fn watching(extra: &[&str]) -> Cluster {
    watching_with(Setup::nodes(3), extra)
}

/// [`watching`], with the cluster laid out as `setup` says.
fn watching_with(setup: Setup, extra: &[&str]) -> Cluster {
    let mut c = Cluster::with(setup);
    let mut args: Vec<&OsStr> = vec![OsStr::new("--watch")];
    args.extend(extra.iter().map(OsStr::new));
    for n in ["a", "b", "c"] {
        c.start_with(n, &args);
    }
    for n in ["a", "b", "c"] {
        c.wait_for_log(n, FULL_RUN, 1, WAIT);
    }
    c
}

/// Waits until `path` holds `want`, and returns how long that took.
fn wait_for_content(path: &Path, want: &[u8]) -> Duration {
    let start = Instant::now();
    loop {
        if std::fs::read(path).is_ok_and(|got| got == want) {
            return start.elapsed();
        }
        assert!(start.elapsed() < WAIT, "{} did not arrive in time", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_new_file_reaches_both_peers_under_watch() {
    let c = watching(&[]);
    let data = bytes(1, 20_000);
    let written = Instant::now();
    write(&c.path("a", "new/page.html"), &data);
    for n in ["b", "c"] {
        wait_for_content(&c.path(n, "new/page.html"), &data);
        println!("new file on {n} after {:.3} s", written.elapsed().as_secs_f64());
    }
    // A change of a file that was there before moves too.
    let data = bytes(2, 30_000);
    let written = Instant::now();
    write(&c.path("a", "new/page.html"), &data);
    for n in ["b", "c"] {
        wait_for_content(&c.path(n, "new/page.html"), &data);
        println!("changed file on {n} after {:.3} s", written.elapsed().as_secs_f64());
    }
}

#[test]
fn a_burst_of_creates_arrives_whole_in_few_runs() {
    const FILES: usize = 10_000;
    let c = watching(&[]);
    let before = c.log("a").matches(WATCH_RUN).count();
    let started = Instant::now();
    for i in 0..FILES {
        write(&c.path("a", &format!("release/d{}/f{i}.js", i % 20)), format!("file {i}\n").as_bytes());
    }
    let last = c.path("a", &format!("release/d{}/f{}.js", (FILES - 1) % 20, FILES - 1));
    assert!(last.exists());
    for n in ["b", "c"] {
        let s = Instant::now();
        loop {
            let count = (0..FILES)
                .filter(|i| {
                    std::fs::read(c.path(n, &format!("release/d{}/f{i}.js", i % 20)))
                        .is_ok_and(|b| b == format!("file {i}\n").as_bytes())
                })
                .count();
            if count == FILES {
                break;
            }
            assert!(s.elapsed() < WAIT * 6, "{n} has {count} of {FILES} files:\n{}", c.log("a"));
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    // A run logs once it is over, after its peers have the files.
    c.wait_for_log("a", WATCH_RUN, before + 1, WAIT);
    let runs = c.log("a").matches(WATCH_RUN).count() - before;
    println!("{FILES} files on both peers after {:.3} s, in {runs} watch runs", started.elapsed().as_secs_f64());
    assert!((1..=10).contains(&runs), "{runs} runs for one burst:\n{}", c.log("a"));
}

#[test]
fn a_file_written_slowly_arrives_only_whole() {
    const CHUNKS: usize = 8;
    let c = watching(&[]);
    let data = bytes(3, CHUNKS * 64 * 1024);
    let on_b = c.path("b", "slow.bin");
    // The peer's copy is never a part of it.
    let never_partial = |when: &str| {
        if let Ok(got) = std::fs::read(&on_b) {
            assert!(got == data, "{when}: b holds {} of {} bytes", got.len(), data.len());
        }
    };
    let mut f = std::fs::File::create(c.path("a", "slow.bin")).unwrap();
    for chunk in data.chunks(64 * 1024) {
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
        // Longer than the quiet period a watch run waits for.
        for _ in 0..6 {
            std::thread::sleep(Duration::from_millis(100));
            never_partial("while written");
        }
    }
    let closed = Instant::now();
    drop(f);
    let start = Instant::now();
    while std::fs::read(&on_b).map_or(true, |got| got != data) {
        never_partial("after close");
        assert!(start.elapsed() < WAIT, "slow.bin did not reach b:\n{}", c.log("a"));
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("slowly written file on b {:.3} s after it was closed", closed.elapsed().as_secs_f64());
    wait_for_content(&c.path("c", "slow.bin"), &data);
}

/// A file written and closed is synced with no further event (its close
/// makes it ready), while a file another writer still holds open is left
/// out of that run, and sent whole once closed.
#[test]
fn a_closed_file_moves_at_once_while_one_still_open_waits_for_its_close() {
    let c = watching(&[]);
    let before = c.log("a").matches(WATCH_RUN).count();
    let first = bytes(4, 100_000);
    let mut open = std::fs::File::create(c.path("a", "open.bin")).unwrap();
    open.write_all(&first).unwrap();
    open.flush().unwrap();
    let last_write = Instant::now();
    // Written and closed after the other file's events: its run comes
    // after them, and must leave the open file out.
    write(&c.path("a", "closed.txt"), b"closed and left alone");
    for n in ["b", "c"] {
        wait_for_content(&c.path(n, "closed.txt"), b"closed and left alone");
        println!("closed file on {n} after {:.3} s", last_write.elapsed().as_secs_f64());
    }
    // Its run is over once logged: the open file was not in it.
    c.wait_for_log("a", WATCH_RUN, before + 1, WAIT);
    let log = c.log("a");
    let runs: Vec<&str> = log.lines().filter(|l| l.contains(WATCH_RUN)).skip(before).collect();
    assert!(runs.iter().all(|l| l.contains("watch, 1 changed path,")), "{log}");
    // A writer idle for `HELD_QUIET` (10 s) is taken to be done: only a
    // host too slow to sync one small file in that time gets here later.
    if last_write.elapsed() < Duration::from_secs(10) {
        for n in ["b", "c"] {
            assert!(!c.path(n, "open.bin").exists(), "{n} has a file still open for writing on a:\n{log}");
        }
    } else {
        println!("the open file was idle for as long as the daemon waits for a writer: not checked");
    }
    let rest = bytes(5, 50_000);
    open.write_all(&rest).unwrap();
    drop(open);
    let whole = [first, rest].concat();
    for n in ["b", "c"] {
        wait_for_content(&c.path(n, "open.bin"), &whole);
    }
}

/// A burst is batched, whatever its pace: the changes made while a run
/// works all go in the next run. The run is held mid-transfer by the test
/// hook ([`snapsync::peer::PAUSE_ENV`]) while 200 files are written, so
/// they land during it every time.
#[test]
fn changes_made_while_a_run_works_go_together_in_the_next() {
    const FILES: usize = 200;
    let mut c = Cluster::new(3);
    let hook = c.root().join("hook");
    std::fs::create_dir_all(&hook).unwrap();
    // The directories are there before: each file is a path of its own,
    // not one directory checked whole.
    let name = |i: usize| format!("during/d{}/f{i}.js", i % 10);
    for i in 0..10 {
        std::fs::create_dir_all(c.path("a", &name(i)).parent().unwrap()).unwrap();
    }
    c.start_with_env("a", &[OsStr::new("--watch")], &[(snapsync::peer::PAUSE_ENV, hook.to_str().unwrap())]);
    c.start("b");
    c.start("c");
    c.wait_for_log("a", FULL_RUN, 1, WAIT);
    let before = c.log("a").matches(WATCH_RUN).count();
    let first = bytes(6, 100_000);
    write(&c.path("a", "first.bin"), &first);
    // The run that sends first.bin is under way, stopped after a chunk.
    wait_for_file(&hook.join("paused"), WAIT);
    for i in 0..FILES {
        write(&c.path("a", &name(i)), format!("file {i}\n").as_bytes());
    }
    std::fs::write(hook.join("resume"), b"").unwrap();
    for n in ["b", "c"] {
        wait_for_content(&c.path(n, "first.bin"), &first);
        for i in 0..FILES {
            wait_for_content(&c.path(n, &name(i)), format!("file {i}\n").as_bytes());
        }
    }
    // The run that sent the last of them has logged once it is over.
    c.wait_for_log("a", WATCH_RUN, before + 2, WAIT);
    let log = c.log("a");
    let runs: Vec<&str> = log.lines().filter(|l| l.contains(WATCH_RUN)).skip(before).collect();
    println!("first.bin and {FILES} files written during its run: {} watch runs", runs.len());
    assert!(runs[0].contains("watch, 1 changed path,"), "first.bin alone, then the rest:\n{log}");
    // One run takes them all; a second at most, should the last events
    // reach the watcher only after that run chose its paths. A run per
    // file, or per few files, fails this by far.
    assert!(runs.len() <= 3, "{} runs for first.bin and {FILES} files written during its run:\n{log}", runs.len());
}

#[test]
fn an_exhausted_watch_limit_falls_back_to_periodic_reconciles() {
    let mut c = Cluster::new(3);
    for d in ["one", "two", "three/four"] {
        write(&c.path("a", &format!("{d}/file")), d.as_bytes());
    }
    c.start_with_env(
        "a",
        &[OsStr::new("--watch"), OsStr::new("--full-every"), OsStr::new("1")],
        &[("SNAPSYNC_WATCH_LIMIT", "2")],
    );
    c.start("b");
    c.start("c");
    c.wait_for_log("a", "fs.inotify.max_user_watches", 1, WAIT);
    let log = c.log("a");
    assert!(log.contains("falling back to a full reconcile every 1 s"), "{log}");
    // Changes still move, by the periodic reconcile.
    write(&c.path("a", "two/later"), b"found by a full reconcile");
    for n in ["b", "c"] {
        wait_for_content(&c.path(n, "two/later"), b"found by a full reconcile");
    }
    assert!(c.running("a"), "the daemon keeps running");
}

#[test]
fn a_sync_on_a_watching_daemon_with_nothing_changed_does_not_walk() {
    let c = watching(&[]);
    for i in 0..50 {
        write(&c.path("a", &format!("d{}/f{i}", i % 5)), b"content");
    }
    wait_for_content(&c.path("b", "d4/f49"), b"content");
    wait_for_content(&c.path("c", "d4/f49"), b"content");
    // Once the watcher's run has recorded the change, a `sync` answers from
    // the recorded tree: nothing listed, nothing read.
    let dirs_listed = |v: &serde_json::Value| -> Vec<u64> {
        v["check"]["groups"].as_array().unwrap().iter().map(|g| g["stats"]["dirs_listed"].as_u64().unwrap()).collect()
    };
    let start = Instant::now();
    loop {
        let (code, v) = c.sync("a", &[]);
        assert_eq!(code, 0, "{v:#}");
        let listed = dirs_listed(&v);
        if listed.iter().all(|&n| n == 0) {
            assert!(!listed.is_empty(), "{v:#}");
            assert_eq!(v["check"]["groups"][0]["stats"]["entries_seen"], 0, "{v:#}");
            break;
        }
        assert!(start.elapsed() < WAIT, "every sync walked the tree: {v:#}\n{}", c.log("a"));
        std::thread::sleep(Duration::from_millis(200));
    }
    // A change seen by the watcher is recorded and sent by its run; once
    // that run is over, the next `sync` walks nothing again.
    let runs = c.log("a").matches(WATCH_RUN).count();
    write(&c.path("a", "d0/f0"), b"changed");
    wait_for_content(&c.path("b", "d0/f0"), b"changed");
    c.wait_for_log("a", WATCH_RUN, runs + 1, WAIT);
    let (code, v) = c.sync("a", &[]);
    assert_eq!(code, 0, "{v:#}");
    assert!(dirs_listed(&v).iter().all(|&n| n == 0), "the watch run left the tree clean: {v:#}\n{}", c.log("a"));
    c.assert_status_clean("a");
}

/// Issue 10, item 4: a receive-only host that watches its trees puts the
/// group's version back when its users edit a file, within seconds, and
/// keeps their edit in a generation first.
#[test]
fn a_receive_only_host_restores_the_group_version_of_an_edited_file() {
    let c = watching_with(Setup::nodes(3).receive_only("c").backups(10), &[]);
    write(&c.path("a", "site/index.html"), b"group version");
    wait_for_content(&c.path("c", "site/index.html"), b"group version");
    let edited = Instant::now();
    write(&c.path("c", "site/index.html"), b"edit made on c");
    // Restored: the edit was seen (the file changed) and undone.
    let start = Instant::now();
    while std::fs::read(c.path("c", "site/index.html")).unwrap() != b"group version" {
        assert!(start.elapsed() < WAIT, "c keeps its edit:\n{}", c.log("c"));
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("edit on receive-only c undone after {:.3} s", edited.elapsed().as_secs_f64());
    // The peers never took the edit.
    for n in ["a", "b"] {
        assert_eq!(std::fs::read(c.path(n, "site/index.html")).unwrap(), b"group version", "{n}");
    }
    // The edit is in one of c's generations.
    let (code, gens) = c.json("c", &["generations"]);
    assert_eq!(code, 0);
    let mut found = false;
    for g in gens["generations"].as_array().unwrap() {
        let id = g["id"].to_string();
        let to = c.root().join(format!("restored-{id}"));
        let out = c.run("c", &["restore", "--generation", &id, "--to", to.to_str().unwrap()]);
        // The watching daemon keeps recording generations and dropping
        // those no path needs any more (retention): one listed a moment
        // ago may be gone. The one holding the edit is never dropped.
        if out.code != 0 && out.stderr.contains(&format!("there is no generation {id}")) {
            continue;
        }
        assert_eq!(out.code, 0, "restore {id}: {}", out.stderr);
        for f in Cluster::find_files(&to, "index.html") {
            found |= std::fs::read(&f).unwrap() == b"edit made on c";
        }
    }
    assert!(found, "no generation of c holds the edit: {gens:#}");
}

/// SIGTERM while a watch run sends a burst: the daemon stops the run and
/// exits 0; started again, its first full reconcile sends the rest.
#[test]
fn a_watching_daemon_stops_cleanly_during_a_run_and_catches_up_at_start() {
    const FILES: usize = 1000;
    let mut c = watching(&[]);
    for i in 0..FILES {
        write(&c.path("a", &format!("burst/f{i}")), format!("file {i}\n").as_bytes());
    }
    let start = Instant::now();
    while !(0..FILES).any(|i| c.path("b", &format!("burst/f{i}")).exists()) {
        assert!(start.elapsed() < WAIT, "nothing of the burst reached b:\n{}", c.log("a"));
        std::thread::sleep(Duration::from_millis(5));
    }
    c.stop("a");
    assert!(!c.log("a").contains("panicked"), "{}", c.log("a"));
    c.start_with("a", &[OsStr::new("--watch")]);
    for n in ["b", "c"] {
        wait_for_content(&c.path(n, &format!("burst/f{}", FILES - 1)), format!("file {}\n", FILES - 1).as_bytes());
        let start = Instant::now();
        while (0..FILES).any(|i| !c.path(n, &format!("burst/f{i}")).exists()) {
            assert!(start.elapsed() < WAIT, "{n} lacks files of the burst:\n{}", c.log("a"));
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A symlink in a watched tree that leads outside it is not followed by
/// the watcher: what changes out there starts no run (the link itself is
/// synced as a link).
#[test]
fn a_symlink_out_of_the_tree_is_not_watched_through() {
    let outside = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(3);
    std::os::unix::fs::symlink(outside.path(), c.path("a", "linked")).unwrap();
    for n in ["a", "b", "c"] {
        c.start_with(n, &[OsStr::new("--watch")]);
    }
    for n in ["a", "b", "c"] {
        c.wait_for_log(n, FULL_RUN, 1, WAIT);
    }
    let before = c.log("a").matches(WATCH_RUN).count();
    // Events out there would come before the marker's: in its run, or in
    // a run of their own before it.
    for i in 0..20 {
        write(&outside.path().join(format!("x{i}.txt")), b"outside");
    }
    for (k, marker) in ["marker-1.txt", "marker-2.txt"].into_iter().enumerate() {
        write(&c.path("a", marker), marker.as_bytes());
        wait_for_content(&c.path("b", marker), marker.as_bytes());
        c.wait_for_log("a", WATCH_RUN, before + k + 1, WAIT);
    }
    let log = c.log("a");
    let runs: Vec<&str> = log.lines().filter(|l| l.contains(WATCH_RUN)).skip(before).collect();
    assert_eq!(runs.len(), 2, "one run per marker, none for the files outside:\n{log}");
    assert!(runs.iter().all(|l| l.contains("watch, 1 changed path,")), "{runs:?}");
}
