//! SPEC §4.9, §4.10 and §7: what moves over the network — a rename moves
//! no content, a one-byte edit about one chunk, and an interrupted
//! transfer resumes without resending what arrived.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, peer_report};
use crate::common::{bytes, write};

const MIB: usize = 1024 * 1024;

/// `pulled` of the report for `peer`, which must have no error.
fn pulled<'a>(v: &'a serde_json::Value, peer: &str) -> &'a serde_json::Value {
    let p = peer_report(v, peer);
    assert!(p["error"].is_null(), "{v:#}");
    &p["pulled"]
}

/// SPEC §4.9: B and C pull a file A renamed without fetching a chunk.
#[test]
fn sync_rename_moves_no_content() {
    let mut c = Cluster::new(3);
    c.start_all();
    let data = bytes(9, 4 * MIB);
    write(&c.path("a", "big/original.bin"), &data);
    write(&c.path("a", "small"), b"s");
    c.sync_ok("a");
    c.assert_all_same();
    std::fs::create_dir_all(c.path("a", "moved")).unwrap();
    std::fs::rename(c.path("a", "big/original.bin"), c.path("a", "moved/renamed.bin")).unwrap();
    c.check("a");
    for n in ["b", "c"] {
        let v = c.sync_ok_with(n, &["--peer", "a"]);
        let p = pulled(&v, "a");
        assert!(
            super::cluster::changes(&p["changes"]).contains(&("create".into(), "%tree%/moved/renamed.bin".into())),
            "{v:#}"
        );
        assert_eq!(p["chunks_fetched"], 0, "{n} fetched chunks for a rename: {v:#}");
        assert!(p["chunks_local"].as_u64().unwrap() > 0, "{v:#}");
        assert_eq!(std::fs::read(c.path(n, "moved/renamed.bin")).unwrap(), data);
        assert!(!c.path(n, "big/original.bin").exists());
    }
    c.assert_all_same();
}

/// SPEC §4.9 and §7: a renamed directory of 300 files (more than one
/// group of files built and synced together) reaches B and C from their
/// own copies: no chunk fetched, every file in place with its content,
/// the old directory gone, no temporary left.
#[test]
fn sync_renamed_directory_is_placed_from_local_copies() {
    const FILES: usize = 300;
    let mut c = Cluster::new(3);
    c.start_all();
    let content = |i: usize| bytes(i as u64 + 100, 1000 + 37 * i);
    for i in 0..FILES {
        write(&c.path("a", &format!("dir/f{i:03}")), &content(i));
    }
    c.sync_ok("a");
    c.assert_all_same();
    std::fs::rename(c.path("a", "dir"), c.path("a", "moved")).unwrap();
    c.check("a");
    for n in ["b", "c"] {
        let v = c.sync_ok_with(n, &["--peer", "a"]);
        let p = pulled(&v, "a");
        assert_eq!(p["chunks_fetched"], 0, "{n} fetched chunks for a rename: {v:#}");
        assert!(p["chunks_local"].as_u64().unwrap() >= FILES as u64, "{v:#}");
        assert!(p["problems"].as_array().is_none_or(|a| a.is_empty()), "{v:#}");
        for i in 0..FILES {
            assert_eq!(std::fs::read(c.path(n, &format!("moved/f{i:03}"))).unwrap(), content(i), "{n}: f{i:03}");
        }
        assert!(!c.path(n, "dir").exists(), "{n} kept the old directory");
        assert_eq!(c.temporaries(n), Vec::<std::path::PathBuf>::new(), "{n}");
    }
    c.assert_all_same();
}

/// SPEC §4.10: a one-byte edit in the middle of an 8 MiB file: the puller
/// fetches about one chunk.
#[test]
fn sync_one_byte_edit_fetches_about_one_chunk() {
    let mut c = Cluster::new(3);
    c.start_all();
    let mut data = bytes(10, 8 * MIB);
    write(&c.path("a", "large.bin"), &data);
    c.sync_ok("a");
    c.assert_all_same();
    data[4 * MIB + 12345] ^= 0x5a;
    write(&c.path("a", "large.bin"), &data);
    c.check("a");
    for n in ["b", "c"] {
        let v = c.sync_ok_with(n, &["--peer", "a"]);
        let p = pulled(&v, "a");
        let fetched = p["chunks_fetched"].as_u64().unwrap();
        assert!((1..=2).contains(&fetched), "{n} fetched {fetched} chunks for a one-byte edit: {v:#}");
        assert!(p["bytes_fetched"].as_u64().unwrap() <= 2 * 262_145, "{v:#}");
        assert!(p["chunks_local"].as_u64().unwrap() > 50, "{v:#}");
        assert_eq!(std::fs::read(c.path(n, "large.bin")).unwrap(), data);
    }
    c.assert_all_same();
}

/// Chunks read from a file travel compressed while the sending host has
/// processor time to spare, raw while it has none (src/peer/cpu.rs; the
/// test hook fixes which): 1 MiB of text pulled from A, which always has
/// room, arrives in far fewer bytes than from B, which never has.
#[test]
fn sync_compresses_chunks_only_with_processor_time_to_spare() {
    let mut c = Cluster::new(2);
    let hook = snapsync::peer::COMPRESS_ENV;
    c.start_with_env("a", &[], &[(hook, "always")]);
    c.start_with_env("b", &[], &[(hook, "never")]);
    let text = |seed: u64| -> Vec<u8> {
        let words = ["sync", "chunk", "peer", "tree", "store", "state"];
        let mut out = Vec::with_capacity(MIB + 16);
        let mut x = seed;
        while out.len() < MIB {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            out.extend_from_slice(words[(x >> 33) as usize % words.len()].as_bytes());
            out.push(b' ');
        }
        out.truncate(MIB);
        out
    };
    let (from_a, from_b) = (text(1), text(2));
    write(&c.path("a", "from-a.txt"), &from_a);
    c.check("a");
    let v = c.sync_ok_with("b", &["--peer", "a"]);
    let fetched = pulled(&v, "a")["bytes_fetched"].as_u64().unwrap();
    assert!(fetched < MIB as u64 / 2, "{fetched} bytes fetched for 1 MiB of text, compressed: {v:#}");
    assert_eq!(std::fs::read(c.path("b", "from-a.txt")).unwrap(), from_a);
    write(&c.path("b", "from-b.txt"), &from_b);
    c.check("b");
    let v = c.sync_ok_with("a", &["--peer", "b"]);
    let fetched = pulled(&v, "b")["bytes_fetched"].as_u64().unwrap();
    assert!(fetched > MIB as u64, "{fetched} bytes fetched for 1 MiB of text, raw: {v:#}");
    assert_eq!(std::fs::read(c.path("a", "from-b.txt")).unwrap(), from_b);
    c.assert_all_same();
}

/// What B's tree holds during a transfer: bytes allocated to part files,
/// and the finished (non-temporary) files.
fn progress(dir: &Path, staging: &Path) -> (u64, Vec<String>) {
    let mut allocated = 0;
    let mut finished = Vec::new();
    // Chunks received so far wait in the staging area of the state
    // directory, one directory per file.
    for d in std::fs::read_dir(staging).into_iter().flatten().flatten() {
        for e in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            allocated += e.metadata().map(|m| m.blocks() * 512).unwrap_or(0);
        }
    }
    let Ok(rd) = std::fs::read_dir(dir) else { return (allocated, finished) };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(md) = e.metadata() else { continue };
        if name.starts_with(".snapsync-") {
            allocated += md.blocks() * 512;
        } else if md.is_file() {
            finished.push(name);
        }
    }
    (allocated, finished)
}

/// SPEC §7: B's daemon killed in the middle of a transfer leaves no final
/// path with wrong content; after a restart one sync completes the tree
/// and fetches only what had not arrived.
#[test]
fn sync_killed_transfer_is_safe_and_resumes() {
    const FILES: usize = 200;
    const SIZE: usize = 256 * 1024;
    let mut c = Cluster::new(2);
    c.start_all();
    let mut chunks_of = std::collections::HashMap::new();
    for i in 0..FILES {
        let data = bytes(1000 + i as u64, SIZE);
        chunks_of.insert(format!("f{i:03}"), snapsync::chunk::chunk_bytes(&data).len() as u64);
        write(&c.path("a", &format!("data/f{i:03}")), &data);
    }
    let total: u64 = chunks_of.values().sum();
    c.check("a");
    let bg = c.spawn("a", "first-sync", &["sync"]);
    // The one place a poll is fine: watching B's tree fill up, bounded.
    let started = Instant::now();
    let data_b = c.path("b", "data");
    let staging_b = c.node_state_dir("b").join("incoming/chunks");
    let (allocated, finished) = loop {
        let (allocated, finished) = progress(&data_b, &staging_b);
        if allocated >= 8 * MIB as u64 || !finished.is_empty() {
            break (allocated, finished);
        }
        assert!(started.elapsed() < Duration::from_secs(60), "b received nothing in 60 s");
        std::thread::sleep(Duration::from_millis(2));
    };
    c.kill("b");
    eprintln!("killed b after {:?}: {allocated} bytes received, {} files finished", started.elapsed(), finished.len());

    // Safety: every final path on B holds exactly A's content (the
    // directory itself comes with the first files placed).
    let mut finished_now = Vec::new();
    for e in std::fs::read_dir(&data_b).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".snapsync-") {
            continue;
        }
        assert_eq!(
            std::fs::read(e.path()).unwrap(),
            std::fs::read(c.path("a", &format!("data/{name}"))).unwrap(),
            "b's {name} differs from a's after the kill"
        );
        finished_now.push(name);
    }
    let remaining: u64 = chunks_of.iter().filter(|(n, _)| !finished_now.contains(n)).map(|(_, k)| *k).sum();

    c.start("b");
    let (code, v) = c.sync("b", &["--peer", "a"]);
    assert_eq!(code, 0, "{v:#}");
    c.assert_all_same();
    let p = pulled(&v, "a");
    let fetched = p["chunks_fetched"].as_u64().unwrap();
    let local = p["chunks_local"].as_u64().unwrap();
    eprintln!("resume: {fetched} chunks fetched, {local} found locally, {remaining} of {total} were missing");
    if remaining == 0 {
        eprintln!("note: the kill came after every file was placed; nothing was left to resume");
    } else {
        assert_eq!(fetched + local, remaining, "{v:#}");
        assert!(local > 0, "nothing received before the kill was reused: {v:#}");
        assert!(fetched < remaining, "the resume fetched everything again: {v:#}");
    }
    // The first run's client ends once A's daemon is gone.
    c.kill("a");
    let first = bg.wait(Duration::from_secs(30));
    eprintln!("first sync ended with {}", first.code);
}

/// SPEC §4.14: a file rewritten in place, over and over, while syncs scan
/// and send it reaches the peer whole (byte for byte one of the versions
/// written) or not at all until a later run; never half-written.
#[test]
fn sync_file_written_during_sync_is_never_delivered_half_written() {
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let mut c = Cluster::new(2);
    c.start_all();
    let versions: Arc<Vec<Vec<u8>>> = Arc::new((0..2).map(|i| bytes(100 + i, 3 * MIB)).collect());
    write(&c.path("a", "hot.bin"), &versions[0]);
    write(&c.path("a", "other"), b"x");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, versions, path) = (Arc::clone(&stop), Arc::clone(&versions), c.path("a", "hot.bin"));
        std::thread::spawn(move || {
            let mut rounds = 0usize;
            while !stop.load(Ordering::Relaxed) {
                // In place, piece by piece: between two pieces the file is
                // a mix of both versions.
                let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                for piece in versions[rounds % 2].chunks(64 * 1024) {
                    f.write_all(piece).unwrap();
                }
                rounds += 1;
            }
            rounds
        })
    };
    let on_b = |c: &Cluster| match std::fs::read(c.path("b", "hot.bin")) {
        Ok(d) => assert!(versions.contains(&d), "b holds a half-written hot.bin ({} bytes)", d.len()),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
    };
    for _ in 0..4 {
        let (code, v) = c.sync("a", &[]);
        assert!(code == 0 || code == 1, "{v:#}");
        on_b(&c);
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = writer.join().unwrap();
    assert!(rounds > 1, "the writer never rewrote the file");
    // Once the writing stops, the next sync delivers the last version.
    c.sync_ok("a");
    on_b(&c);
    assert_eq!(std::fs::read(c.path("b", "hot.bin")).unwrap(), std::fs::read(c.path("a", "hot.bin")).unwrap());
}
