//! Issue 12 item 4, SPEC §6 and §7: a hostile holder of the group key.
//! The crafted peer of [`crate::crafted_peer`] sends what no member would:
//! names with `/`, `.`, `..` or NUL, absolute paths, chunks that are not
//! what they are named, chunk lists that do not add up or claim 2^40
//! chunks, frames over the limit. The node refuses each, naming the peer
//! and the reason; nothing outside the tree changes, nothing is written
//! inside it, no temporary is left, the store verifies, and the daemon
//! goes on syncing with an honest peer. A root outside the include root is
//! skipped unread; a receive-only host's push is refused unread; a
//! replayed push takes nothing older than the node has; a directory
//! swapped for a symlink mid-pull is not written through; a flood of
//! unfinished requests costs bounded memory while others sync.

use snapsync::chunk::ChunkRef;
use snapsync::hash::Hash;
use snapsync::proto::{self, Message, Refusal, WireEntry};

use crate::cluster::{Cluster, Setup, peer_report};
use crate::common::{Outside, proc_status_kb, temporaries, write};
use crate::crafted_peer::{Crafted, Listing, Owner, ROOT, Served, dir, file_of_chunks, one_chunk, roots, roots_of};

/// A file named `name` of one chunk holding `data`, and what serves it.
fn offered(owner: Owner, name: &[u8], data: &[u8]) -> (WireEntry, Hash, Vec<u8>) {
    let (r, stored) = one_chunk(data);
    (file_of_chunks(owner, name, vec![r]), r.hash, stored)
}

/// Serves the include root listing `entries`, and `chunks` (name, stored
/// bytes) for `GetChunks`.
fn listing(owner: Owner, entries: Vec<WireEntry>, chunks: Vec<(Hash, Vec<u8>)>) -> Served {
    Served {
        roots: Some(roots(owner)),
        dirs: [(ROOT.as_bytes().to_vec(), entries)].into(),
        chunks: chunks.into_iter().collect(),
        ..Served::default()
    }
}

/// Node a's state after a hostile exchange: the sync failed naming peer b
/// and `why`, a's tree is as it was, no temporary is left, nothing outside
/// changed, and `verify` passes.
fn assert_refused(c: &Cluster, case: &str, outside: &Outside, before: &crate::common::Snapshot, why: &str) {
    let (code, v) = c.sync("a", &["--peer", "b"]);
    eprintln!("{case}: exit {code}: {v:#}");
    assert_ne!(code, 0, "{case}: the sync succeeded: {v:#}");
    let b = peer_report(&v, "b");
    let problems = b["pulled"]["problems"].as_array().into_iter().flatten().filter_map(|p| p.as_str());
    let text: Vec<&str> = b["error"].as_str().into_iter().chain(problems).collect();
    let text = text.join("\n");
    assert!(text.contains("peer b") && text.contains(why), "{case}: want peer b and {why:?} in {b:#}");
    assert_untouched(c, case, outside, before);
}

/// A's tree is as it was, no temporary is left in it, nothing outside
/// changed, and `verify` passes.
fn assert_untouched(c: &Cluster, case: &str, outside: &Outside, before: &crate::common::Snapshot) {
    outside.assert_untouched();
    let now = c.snapshot("a");
    assert!(&now == before, "{case}: a's tree changed: {:#?}", crate::cluster::diff_trees(before, &now));
    assert_eq!(temporaries(&c.tree("a")), Vec::<std::path::PathBuf>::new(), "{case}: temporaries left");
    let out = c.run("a", &["verify"]);
    assert_eq!(out.code, 0, "{case}: verify on a: {}\n{}", out.stdout, out.stderr);
}

/// Listings with names no member sends, roots outside the include root,
/// chunk lists that do not add up, chunks that are not what they are
/// named and a frame over the limit: each sync with the crafted peer fails
/// naming it and the reason, and changes nothing; then a sync with an
/// honest peer works.
#[test]
fn a_hostile_peer_pulled_from_writes_nothing_and_is_named() {
    // With backups, so that the node has a chunk store for `verify` to check.
    let mut c = Cluster::with(Setup::nodes(3).backups(2));
    c.start("a");
    c.start("c");
    let outside = Outside::new(&c.root().join("outside"));
    let evil = outside.dir.join("evil");
    write(&c.path("a", "mine"), b"a's file");
    c.sync_ok_with("a", &["--peer", "c"]);
    let before = c.snapshot("a");
    let crafted = Crafted::start(&c, "b", Listing::Served, Served::default());
    let owner = crafted.owner();

    let bad_names: [(&str, Vec<u8>, &str); 5] = [
        ("a name with /", b"sub/evil".to_vec(), "\"sub/evil\""),
        ("a name ..", b"..".to_vec(), "\"..\""),
        ("a name .", b".".to_vec(), "\".\""),
        ("a name with NUL", b"ev\0il".to_vec(), "\"ev\\0il\""),
        ("an absolute name", evil.as_os_str().as_encoded_bytes().to_vec(), "outside/evil\""),
    ];
    for (case, name, why) in bad_names {
        let why = format!("{why} is not a valid entry name");
        let (e, h, stored) = offered(owner, &name, b"written by a hostile peer");
        crafted.serve(|s| *s = listing(owner, vec![e], vec![(h, stored)]));
        assert_refused(&c, case, &outside, &before, &why);
    }

    // A second root, at a path outside the include root, holding a file.
    let (e, h, stored) = offered(owner, b"evil", b"written by a hostile peer");
    let outside_root = outside.dir.to_str().unwrap().as_bytes().to_vec();
    crafted.serve(|s| {
        *s = listing(owner, Vec::new(), vec![(h, stored)]);
        s.roots = Some(roots_of(vec![dir(owner, ROOT.as_bytes()), dir(owner, &outside_root)]));
        s.dirs.insert(outside_root.clone(), vec![e]);
    });
    // A peer's roots that are not the node's are none of its business: it
    // skips them without asking for their listings.
    crafted.events();
    let (code, v) = c.sync("a", &["--peer", "b"]);
    assert_eq!(code, 0, "{v:#}");
    let seen = crafted.events();
    assert!(seen.contains(&format!("GetDir {ROOT}")), "a never descended into the include root: {seen:?}");
    let outside_listing = format!("GetDir {}", outside.dir.display());
    assert!(!seen.contains(&outside_listing), "a asked for the listing of a root outside its include root");
    assert_untouched(&c, "a root outside the include root", &outside, &before);

    // A chunk whose bytes are not the ones it is named after.
    let (mut e, h, _) = offered(owner, b"f", b"the bytes the listing promises");
    let (_, wrong) = one_chunk(b"other bytes under that name");
    crafted.serve(|s| *s = listing(owner, vec![e.clone()], vec![(h, wrong)]));
    assert_refused(&c, "a chunk that does not hash to its name", &outside, &before, "content does not match its hash");

    // A chunk list that does not hash to the content hash.
    let (_, h, stored) = offered(owner, b"f", b"the bytes the listing promises");
    if let snapsync::tree::Body::File { content, .. } = &mut e.body {
        *content = Hash::of(b"some other content");
    }
    crafted.serve(|s| *s = listing(owner, vec![e.clone()], vec![(h, stored.clone())]));
    assert_refused(&c, "a chunk list that is not the content", &outside, &before, "chunk list hashes to");

    // Chunks that do not add up to the size.
    let (mut e, h, stored) = offered(owner, b"f", b"the bytes the listing promises");
    if let snapsync::tree::Body::File { size, .. } = &mut e.body {
        *size += 1;
    }
    crafted.serve(|s| *s = listing(owner, vec![e], vec![(h, stored.clone())]));
    assert_refused(
        &c,
        "chunks that do not add up to the size",
        &outside,
        &before,
        "chunk lengths add up to 30 bytes, but the file has 31",
    );

    // A chunk count absurd for the limits: a 1 TiB file whose chunk list,
    // fetched apart, claims 2^40 chunks.
    let (r, _) = one_chunk(b"the bytes the listing promises");
    let mut e = file_of_chunks(owner, b"f", Vec::new());
    e.body = snapsync::tree::Body::File { size: 1 << 40, content: Hash::of(b"a huge file") };
    let path = format!("{ROOT}/f").into_bytes();
    let page = Message::ChunkList {
        group: "g".into(),
        path: path.clone(),
        content: Hash::of(b"a huge file"),
        start: 0,
        total: 1 << 40,
        chunks: vec![ChunkRef { hash: r.hash, len: r.len }],
    };
    crafted.serve(|s| {
        *s = listing(owner, vec![e], vec![(h, stored)]);
        s.chunk_lists.insert(path, page);
    });
    assert_refused(
        &c,
        "a chunk count over the limit",
        &outside,
        &before,
        &format!(
            "f: peer b: ChunkList.total: {} items, over the limit of {}",
            1u64 << 40,
            proto::limits::MAX_CHUNKS_PER_ENTRY
        ),
    );

    crafted.set_listing(Listing::Oversized);
    assert_refused(
        &c,
        "a frame over the limit",
        &outside,
        &before,
        &format!("peer b: frame of {} bytes, over the {}-byte limit", proto::MAX_FRAME + 1, proto::MAX_FRAME),
    );

    // The daemon still syncs with an honest peer.
    write(&c.path("c", "from-c"), b"c's file");
    let v = c.sync_ok_with("a", &["--peer", "c"]);
    assert!(peer_report(&v, "c")["error"].is_null(), "{v:#}");
    assert_eq!(std::fs::read(c.path("a", "from-c")).unwrap(), b"c's file");
    outside.assert_untouched();
}

/// A host listed receive-only that asks the node to pull from it is
/// refused before the node asks it anything; a sync the node starts with it
/// pushes only. Nothing of its tree reaches the node.
#[test]
fn a_receive_only_peer_that_pushes_gives_nothing() {
    let mut c = Cluster::with(Setup::nodes(3).receive_only("b"));
    c.start("a");
    let outside = Outside::new(&c.root().join("outside"));
    write(&c.path("a", "mine"), b"a's file");
    c.check("a");
    let before = c.snapshot("a");
    let crafted = Crafted::start(&c, "b", Listing::Served, Served::default());
    let owner = crafted.owner();
    let (e, h, stored) = offered(owner, b"from-b", b"b's file");
    crafted.serve(|s| *s = listing(owner, vec![e], vec![(h, stored)]));

    let answers = crafted.push(&c, "a", 1);
    assert!(matches!(answers.as_slice(), [Message::Refused { reason: Refusal::ReceiveOnly, .. }]), "{answers:?}");
    assert!(!crafted.happened("GetRoots"), "a asked a refused peer for its roots");

    c.sync_ok_with("a", &["--peer", "b"]);
    let seen = crafted.events();
    assert!(seen.contains(&"Pull".to_owned()), "a did not push to b: {seen:?}");
    let read = ["GetDir", "GetChunkList", "GetChunks"];
    assert!(!seen.iter().any(|e| read.contains(&e.as_str())), "a read b's tree: {seen:?}");
    assert_eq!(c.snapshot("a"), before);
    outside.assert_untouched();
    let out = c.run("a", &["verify"]);
    assert_eq!(out.code, 0, "verify on a: {}\n{}", out.stdout, out.stderr);
}

/// The paths of the changes in a `Pulled` answer, by action.
fn pulled(answer: &Message) -> Vec<(&'static str, String)> {
    let Message::Pulled { changes, problems, .. } = answer else { panic!("not Pulled: {answer:?}") };
    assert!(problems.is_empty(), "{problems:?}");
    changes.iter().map(|ch| (ch.action.as_str(), String::from_utf8_lossy(&ch.path).into_owned())).collect()
}

/// A replayed push. QUIC with TLS 1.3 makes replaying recorded packets
/// moot, so this tests the protocol-level equivalent: a key holder repeats
/// its `Hello` and `Pull` after the node has moved on, serving the same old
/// `Roots` and listings. The node decides from its own state: the version
/// it took then is older than the one it has now, so it takes nothing
/// (nor asks for chunks), however often it is asked.
#[test]
fn a_replayed_push_takes_nothing_older_than_the_node_has() {
    let mut c = Cluster::new(3);
    c.start("a");
    let outside = Outside::new(&c.root().join("outside"));
    let crafted = Crafted::start(&c, "b", Listing::Served, Served::default());
    let owner = crafted.owner();
    let (e, h, stored) = offered(owner, b"f", b"b's version");
    crafted.serve(|s| *s = listing(owner, vec![e], vec![(h, stored)]));

    let first = crafted.push(&c, "a", 1);
    assert_eq!(pulled(&first[0]), [("create", format!("{ROOT}/f"))]);
    assert_eq!(std::fs::read(c.path("a", "f")).unwrap(), b"b's version");

    // a's own edit, recorded: its version now follows b's.
    write(&c.path("a", "f"), b"a's edit");
    c.check("a");
    let before = c.snapshot("a");
    crafted.events();
    let again = crafted.push(&c, "a", 2);
    assert_eq!(again.len(), 2, "{again:?}");
    for answer in &again {
        assert!(pulled(answer).iter().all(|(action, _)| *action == "merge"), "{answer:?}");
    }
    let seen = crafted.events();
    assert!(seen.iter().filter(|e| *e == "GetRoots").count() >= 2, "the node did not reconcile: {seen:?}");
    assert!(!seen.contains(&"GetChunks".to_owned()), "the node fetched the old content: {seen:?}");
    assert_untouched(&c, "a replayed push", &outside, &before);
    assert_eq!(std::fs::read(c.path("a", "f")).unwrap(), b"a's edit");
}

/// A directory replaced by a symlink to a directory outside the tree
/// between the plan and the write: the crafted peer holds its chunks until
/// the test has swapped the directory a is pulling into. The file is not
/// written through the link (nothing appears outside), the link is left as
/// it is, and the sync reports a conflict on the directory.
#[test]
fn a_directory_swapped_for_a_symlink_mid_pull_is_not_written_through() {
    let mut c = Cluster::new(3);
    c.start("a");
    let outside = Outside::new(&c.root().join("outside"));
    let crafted = Crafted::start(&c, "b", Listing::Served, Served::default());
    let owner = crafted.owner();
    let (e, h, stored) = offered(owner, b"f", b"b's file");
    crafted.serve(|s| {
        *s = listing(owner, vec![dir(owner, b"d")], vec![(h, stored)]);
        s.dirs.insert(format!("{ROOT}/d").into_bytes(), vec![e]);
        s.hold_chunks = true;
    });
    // a has a directory `d` of its own, which b's `d` merges with.
    write(&c.path("a", "d/keep"), b"a's file");
    c.check("a");
    let sync = c.spawn("a", "sync-b", &["--json", "sync", "--peer", "b"]);
    crafted.wait_for("GetChunks");
    // a has planned `d/f` and waits for its content: `d` is moved aside
    // and a link to the outside put in its place.
    let d = c.path("a", "d");
    std::fs::rename(&d, c.path("a", "d.moved")).unwrap();
    std::os::unix::fs::symlink(&outside.dir, &d).unwrap();
    crafted.release();
    let out = sync.wait(proto::REPLY_TIMEOUT + std::time::Duration::from_secs(60));
    eprintln!("{}", out.stdout);
    outside.assert_untouched();
    assert_eq!(std::fs::read_link(&d).unwrap(), outside.dir, "the planted link was replaced");
    assert_ne!(out.code, 0, "{}", out.stdout);
    let v = out.json();
    let b = peer_report(&v, "b");
    // The node finds `d` changed under it: a conflict on `d`, which the
    // operator sees in the report and in `conflicts`.
    let conflicts: Vec<&str> =
        b["pulled"]["conflicts"].as_array().into_iter().flatten().filter_map(|p| p.as_str()).collect();
    assert_eq!(conflicts, [format!("{ROOT}/d")], "{b:#}");
    assert_eq!(std::fs::read(c.path("a", "d.moved/keep")).unwrap(), b"a's file");
    assert_eq!(temporaries(&c.tree("a")), Vec::<std::path::PathBuf>::new());
    let out = c.run("a", &["verify"]);
    assert_eq!(out.code, 0, "verify on a: {}\n{}", out.stdout, out.stderr);
}

/// A key holder floods the node with requests that never end: many
/// connections, each with as many streams as it may open, each stream a
/// frame of the largest size less its last byte; then as many connections
/// more, under a made-up host name, that send such a frame where the node
/// waits for their `Hello`. The
/// daemon's memory stays bounded while they are held (it reads at most
/// [`proto::REQUEST_BUDGET`] of one host's requests at once and refuses
/// the rest as busy), and another peer syncs with it both ways meanwhile.
#[test]
fn a_flood_of_unfinished_requests_keeps_memory_bounded_and_others_syncing() {
    const CONNECTIONS: usize = 16;
    let mut c = Cluster::new(3);
    c.start("a");
    c.start("c");
    let pid = c.daemon_pid("a");
    let crafted = Crafted::start(&c, "b", Listing::Served, Served::default());
    let rss_before = proc_status_kb(pid, "VmRSS");
    let requests = crafted.flood(&c, "a", CONNECTIONS, true);
    let hellos = crafted.flood(&c, "a", CONNECTIONS, false);
    let want = CONNECTIONS * snapsync::net::MAX_STREAMS as usize;
    assert_eq!((requests.streams, hellos.streams), (want, CONNECTIONS), "the flood did not get all its streams");
    let held = proc_status_kb(pid, "VmRSS");
    eprintln!(
        "{} of {want} request streams and {} of {CONNECTIONS} Hello streams sent {} MiB each; \
         a's daemon: RSS {} MiB before, {} MiB while held",
        requests.sent,
        hellos.sent,
        proto::MAX_FRAME >> 20,
        rss_before >> 10,
        held >> 10
    );

    write(&c.path("c", "from-c"), b"c's file");
    let v = c.sync_ok_with("c", &["--peer", "a"]);
    assert!(peer_report(&v, "a")["error"].is_null(), "{v:#}");
    assert_eq!(std::fs::read(c.path("a", "from-c")).unwrap(), b"c's file");
    write(&c.path("a", "from-a"), b"a's file");
    let v = c.sync_ok_with("a", &["--peer", "c"]);
    assert!(peer_report(&v, "c")["error"].is_null(), "{v:#}");
    assert_eq!(std::fs::read(c.path("c", "from-a")).unwrap(), b"a's file");
    let peak = proc_status_kb(pid, "VmHWM");
    eprintln!("a's daemon: peak RSS {} MiB", peak >> 10);
    drop((requests, hellos));
    // What the node may hold of the flood: b's request budget (16 MiB),
    // its decoding and the connections' QUIC buffers, not a frame per
    // stream of every connection (144 frames of 4 MiB: over 500 MiB).
    assert!(peak < rss_before + (96 << 10), "peak RSS {} MiB, {} MiB before", peak >> 10, rss_before >> 10);
}
