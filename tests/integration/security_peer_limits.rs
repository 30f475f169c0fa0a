//! SPEC §6: every wait on a peer is bounded; a peer that stalls, floods or
//! dies costs a bounded time and bounded memory and never blocks the
//! node's other work. The peers here are crafted from the crate's own
//! protocol types (`snapsync::proto`, `snapsync::net`): a holder of the
//! group key that answers `Hello` and then misbehaves.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use snapsync::chunk::{self, ChunkRef};
use snapsync::hash::Hash;
use snapsync::net::{self, NodeIdentity, Stream, StreamAcceptor};
use snapsync::proto::{self, Message, WireEntry};
use snapsync::store::Version;
use snapsync::tree::{Body, Meta, RootEntry, RootSet, Timestamp};

use crate::cluster::{Cluster, Setup, peer_report};
use crate::common::{proc_status_kb, write};

/// The cluster's group and its one include root, as the crafted peers
/// name them.
const GROUP: &str = "g";
const ROOT: &str = "%tree%";

/// Bound on waiting for the crafted peer to see a request: generous for a
/// loaded machine, still a failure rather than a hang.
const EVENT_WAIT: Duration = Duration::from_secs(60);

/// The crafted peer's identity as host `name`: a certificate signed with
/// the cluster's group key, in a state directory of its own.
fn identity(c: &Cluster, name: &str) -> NodeIdentity {
    let key = snapsync::key::read(&c.key_path()).expect("group key");
    NodeIdentity::load_or_create(&c.root().join(format!("{name}-crafted")), name, &key).expect("identity")
}

/// Metadata like that of the node trees' directories (same owner), so the
/// crafted entries are ones the node can take.
#[derive(Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
    dir_mode: u32,
}

impl Owner {
    fn of(dir: &Path) -> Owner {
        let md = std::fs::metadata(dir).unwrap();
        Owner { uid: md.uid(), gid: md.gid(), dir_mode: md.permissions().mode() & 0o7777 }
    }

    fn dir_meta(self) -> Meta {
        Meta { mode: Some(self.dir_mode), uid: Some(self.uid), gid: Some(self.gid), mtime: None }
    }

    fn file_meta(self) -> Meta {
        Meta {
            mode: Some(0o644),
            uid: Some(self.uid),
            gid: Some(self.gid),
            mtime: Some(Timestamp { secs: 1_700_000_000, nanos: 0 }),
        }
    }
}

fn version() -> Version {
    Version(vec![("b".to_owned(), 1)])
}

/// `Roots` of a group whose include root holds some other tree than any
/// node's: the node descends into it and asks for its listing.
fn roots(owner: Owner) -> Message {
    let meta = owner.dir_meta();
    let body = Body::Dir { tree: Hash::of(b"a tree no node has") };
    let set = RootSet { roots: vec![(ROOT.to_owned(), Some(RootEntry { meta: meta.clone(), body: body.clone() }))] };
    let entry = WireEntry {
        name: ROOT.as_bytes().to_vec(),
        meta,
        body,
        version: version(),
        deleted: false,
        chunks: Vec::new(),
    };
    Message::Roots {
        group: GROUP.to_owned(),
        hash: set.hash(),
        versions: Hash::of(b"versions no node has"),
        roots: vec![(ROOT.to_owned(), Some(entry))],
    }
}

/// A file of `n` chunks of 64 KiB that no node holds.
fn file(owner: Owner, name: &str, n: u32) -> WireEntry {
    let chunks: Vec<ChunkRef> =
        (0..n).map(|i| ChunkRef { hash: Hash::of(format!("{name} {i}").as_bytes()), len: 64 * 1024 }).collect();
    WireEntry {
        name: name.as_bytes().to_vec(),
        meta: owner.file_meta(),
        body: Body::File { size: chunk::total_len(&chunks), content: chunk::content_hash(&chunks) },
        version: version(),
        deleted: false,
        chunks,
    }
}

/// An empty file named `name`.
fn empty_file(owner: Owner, name: String) -> WireEntry {
    WireEntry {
        name: name.into_bytes(),
        meta: owner.file_meta(),
        body: Body::File { size: 0, content: chunk::content_hash(&[]) },
        version: version(),
        deleted: false,
        chunks: Vec::new(),
    }
}

/// How the crafted peer answers `GetDir`.
const STALL: u8 = 0;
const ENDLESS: u8 = 1;
const REPEAT: u8 = 2;

/// A crafted member listening as node `name` of a cluster, on its own
/// runtime. It answers `Hello`, `GetRoots` (a tree that differs) and
/// `Pull` (nothing taken) like a member, and `GetDir` as its mode says:
/// never (the stream stays open, and QUIC keep-alives keep the connection
/// up), with pages that never end, or with the same page again and again.
struct CraftedServer {
    rt: Option<tokio::runtime::Runtime>,
    events: mpsc::Receiver<String>,
    mode: Arc<AtomicU8>,
}

impl CraftedServer {
    fn start(c: &Cluster, name: &str, mode: u8) -> CraftedServer {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let id = identity(c, name);
        let addr = SocketAddr::from((c.node(name).ip, c.node(name).port));
        let owner = Owner::of(&c.tree("a"));
        let (tx, events) = mpsc::channel();
        let mode = Arc::new(AtomicU8::new(mode));
        let m = Arc::clone(&mode);
        let mut server = rt.block_on(async { net::Server::bind(addr, &id) }).expect("the crafted peer binds");
        rt.spawn(async move {
            loop {
                match server.accept().await {
                    Ok(mut conn) => {
                        // The worst case: the connection never goes idle.
                        let _ = conn.keep_alive(true);
                        let (_opener, acceptor) = conn.split();
                        tokio::spawn(serve(acceptor, owner, Arc::clone(&m), tx.clone()));
                    }
                    Err(net::NetError::EndpointClosed { .. }) => break,
                    Err(_) => {}
                }
            }
        });
        CraftedServer { rt: Some(rt), events, mode }
    }

    /// Waits (bounded) for the event `what`.
    fn wait_for(&self, what: &str) {
        let deadline = Instant::now() + EVENT_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) if e == what => return,
                Ok(_) => {}
                Err(e) => panic!("the crafted peer saw no {what} within {EVENT_WAIT:?}: {e:?}"),
            }
        }
    }

    /// Whether the event `what` has happened (among those not yet seen).
    fn happened(&self, what: &str) -> bool {
        self.events.try_iter().any(|e| e == what)
    }
}

impl Drop for CraftedServer {
    fn drop(&mut self) {
        // Closes the endpoint and every connection of the crafted peer.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn serve(mut acceptor: StreamAcceptor, owner: Owner, mode: Arc<AtomicU8>, events: mpsc::Sender<String>) {
    while let Ok(Some(stream)) = acceptor.accept_stream().await {
        tokio::spawn(answer(stream, owner, Arc::clone(&mode), events.clone()));
    }
}

async fn answer(mut stream: Stream, owner: Owner, mode: Arc<AtomicU8>, events: mpsc::Sender<String>) {
    let Ok(request) = proto::read_frame(&mut stream).await else { return };
    let reply = match request {
        Message::Hello { groups, .. } => {
            Message::Welcome { protocol: proto::PROTOCOL_VERSION, host: "b".into(), groups }
        }
        Message::GetRoots { .. } => roots(owner),
        Message::Pull { .. } => {
            Message::Pulled { changes: Vec::new(), more: 0, problems: Vec::new(), problems_total: 0 }
        }
        Message::GetDir { group, path, after } => {
            let _ = events.send("GetDir".into());
            match mode.load(Ordering::SeqCst) {
                STALL => {
                    // Never answered; the stream stays open until the
                    // requester gives up on it.
                    let mut buf = [0u8; 1];
                    let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
                    let _ = events.send("GetDir abandoned".into());
                    return;
                }
                ENDLESS => {
                    // Names after the cursor, 4096 a page, never the last
                    // page. They are excluded on the node (`*.junk`), so
                    // only the listing itself can cost it anything.
                    let from = String::from_utf8_lossy(&after).split('.').next().unwrap_or("").parse().unwrap_or(0u64);
                    let entries = (from + 1..=from + proto::MAX_ENTRIES_PER_PAGE as u64)
                        .map(|n| empty_file(owner, format!("{n:012}.junk")))
                        .collect();
                    Message::Dir { group, path, last_page: false, entries }
                }
                _ => {
                    // The first page again, whatever the cursor.
                    let entries = (1..=16).map(|n| empty_file(owner, format!("{n:012}.junk"))).collect();
                    Message::Dir { group, path, last_page: false, entries }
                }
            }
        }
        _ => return,
    };
    let _ = proto::write_frame(&mut stream, &reply).await;
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
}

/// A peer that answers `Hello` and then never answers a listing: the sync
/// with it fails, naming it, within the reply bound; meanwhile the node
/// syncs with a healthy peer (which needs the writer lock: the check, the
/// apply) as if the stalled one were not there.
#[test]
fn a_stalled_peer_fails_its_sync_and_blocks_nothing_else() {
    let mut c = Cluster::new(3);
    c.start("a");
    c.start("c");
    let crafted = CraftedServer::start(&c, "b", STALL);
    write(&c.path("a", "mine"), b"a's file");
    let stalled = c.spawn("a", "sync-b", &["--json", "sync", "--peer", "b"]);
    crafted.wait_for("GetDir");

    // a's reconcile with b now waits for a listing that never comes.
    write(&c.path("c", "from-c"), b"c's file");
    let v = c.sync_ok_with("a", &["--peer", "c"]);
    assert!(peer_report(&v, "c")["error"].is_null(), "{v:#}");
    assert_eq!(std::fs::read(c.path("a", "from-c")).unwrap(), b"c's file");
    assert_eq!(std::fs::read(c.path("c", "mine")).unwrap(), b"a's file");
    assert!(
        !crafted.happened("GetDir abandoned"),
        "a gave up on b before its sync with c ended: this shows nothing about blocking"
    );

    let out = stalled.wait(proto::REPLY_TIMEOUT + Duration::from_secs(60));
    assert_eq!(out.code, 1, "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    let err = peer_report(&out.json(), "b")["error"].as_str().unwrap_or_default().to_owned();
    assert!(err.contains("peer b") && err.contains("no answer to GetDir within 30s"), "{err}\n{}", out.stdout);
    crafted.wait_for("GetDir abandoned");
}

/// Peak resident memory of process `pid` (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    proc_status_kb(pid, "VmHWM") * 1024
}

/// A peer that sends listing pages forever, never the last one: the sync
/// fails once the listing passes MAX_DIR_ENTRIES, and the node keeps no
/// more than a page of it at a time. A peer that sends the same page again
/// is refused at the second page.
#[test]
fn an_endless_listing_fails_the_sync_and_memory_stays_bounded() {
    let mut c = Cluster::with(Setup::nodes(3).extra("exclude *.junk;"));
    c.start("a");
    let crafted = CraftedServer::start(&c, "b", ENDLESS);
    let before = peak_rss(c.daemon_pid("a"));
    let (code, v) = c.sync("a", &["--peer", "b"]);
    assert_eq!(code, 1, "{v:#}");
    let err = peer_report(&v, "b")["error"].as_str().unwrap_or_default().to_owned();
    let want = format!("lists more than {} entries", proto::MAX_DIR_ENTRIES);
    assert!(err.contains("peer b") && err.contains(&want), "{err}");
    // The listing was about 2M entries; held whole it would take several
    // hundred MiB. One page at a time stays within the daemon's usual
    // footprint.
    let peak = peak_rss(c.daemon_pid("a"));
    eprintln!("a's daemon: peak RSS {} MiB after the listing, {} MiB before", peak >> 20, before >> 20);
    assert!(peak < before.max(64 << 20) + (128 << 20), "peak RSS {} MiB (before: {} MiB)", peak >> 20, before >> 20);

    crafted.mode.store(REPEAT, Ordering::SeqCst);
    let (code, v) = c.sync("a", &["--peer", "b"]);
    assert_eq!(code, 1, "{v:#}");
    let err = peer_report(&v, "b")["error"].as_str().unwrap_or_default().to_owned();
    assert!(err.contains("peer b") && err.contains("not after"), "{err}");
}

/// The environment variable that makes [`crafted_initiator_process`] act.
const CHILD_ENV: &str = "SNAPSYNC_TEST_CRAFTED_INITIATOR";

/// An initiator built from the crate's types, run as a process of its own
/// so that it can be killed: it connects to node a as b, asks a to pull,
/// serves a's requests (a tree with one file a does not have), and when a
/// asks for the file's chunks, says so on stdout and answers nothing more.
#[test]
#[ignore = "a helper process; a_killed_initiator_releases_its_peer_at_once starts it"]
fn crafted_initiator_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let parts: Vec<&str> = spec.split('|').collect();
    let (addr, key, state): (SocketAddr, &str, &str) = (parts[0].parse().unwrap(), parts[1], parts[2]);
    let owner =
        Owner { uid: parts[3].parse().unwrap(), gid: parts[4].parse().unwrap(), dir_mode: parts[5].parse().unwrap() };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async move {
        let key = snapsync::key::read(Path::new(key)).unwrap();
        let id = NodeIdentity::load_or_create(Path::new(state), "b", &key).unwrap();
        let conn = net::connect(addr, "a", &id).await.expect("connects to a");
        let (mut opener, mut acceptor) = conn.split();
        tokio::spawn(async move {
            while let Ok(Some(mut stream)) = acceptor.accept_stream().await {
                tokio::spawn(async move {
                    let Ok(request) = proto::read_frame(&mut stream).await else { return };
                    let reply = match request {
                        Message::GetRoots { .. } => roots(owner),
                        Message::GetDir { group, path, .. } => {
                            let entries =
                                if path == ROOT.as_bytes() { vec![file(owner, "big", 16)] } else { Vec::new() };
                            Message::Dir { group, path, last_page: true, entries }
                        }
                        Message::GetChunks { .. } => {
                            println!("crafted: GetChunks");
                            std::future::pending::<()>().await;
                            return;
                        }
                        _ => return,
                    };
                    let _ = proto::write_frame(&mut stream, &reply).await;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
                });
            }
        });
        let mut hello = opener.open_stream().await.unwrap();
        let msg = Message::Hello { protocol: proto::PROTOCOL_VERSION, host: "b".into(), groups: vec![GROUP.into()] };
        proto::write_frame(&mut hello, &msg).await.unwrap();
        let welcome = proto::read_frame(&mut hello).await.unwrap();
        assert!(matches!(welcome, Message::Welcome { .. }), "{welcome:?}");
        let mut pull = opener.open_stream().await.unwrap();
        proto::write_frame(&mut pull, &Message::Pull { group: GROUP.into(), dry_run: false }).await.unwrap();
        // a's Progress frames, until this process is killed.
        while let Ok(m) = proto::read_frame(&mut pull).await {
            println!("crafted: {}", m.kind());
        }
        std::future::pending::<()>().await;
    });
}

/// An initiator killed in the middle of a `Pull`, while the pulling node
/// waits for chunks from it: the next sync from another node applies on
/// that node at once, not after the dead session's connection times out
/// (60 s), because the dead session's pull held nothing while it waited.
#[test]
fn a_killed_initiator_releases_its_peer_at_once() {
    let mut c = Cluster::new(3);
    c.start("a");
    c.start("c");
    let a = c.node("a");
    let owner = Owner::of(&c.tree("a"));
    let spec = format!(
        "{}|{}|{}|{}|{}|{}",
        SocketAddr::from((a.ip, a.port)),
        c.key_path().display(),
        c.root().join("b-crafted").display(),
        owner.uid,
        owner.gid,
        owner.dir_mode
    );
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["security_peer_limits::crafted_initiator_process", "--exact", "--ignored", "--nocapture"])
        .arg("--test-threads=1")
        .env(CHILD_ENV, spec)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(c.root().join("crafted.err")).unwrap())
        .spawn()
        .expect("crafted initiator starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + EVENT_WAIT;
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            // The test harness's own line may come first on the same line.
            Ok(l) if l.ends_with("crafted: GetChunks") => break,
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let err = std::fs::read_to_string(c.root().join("crafted.err")).unwrap_or_default();
                panic!(
                    "a never asked the crafted initiator for chunks ({e:?}); its stderr:\n{err}\na's log:\n{}",
                    c.log("a")
                );
            }
        }
    }
    // a now waits for chunks from b, which dies without a word.
    child.kill().unwrap();
    child.wait().unwrap();

    write(&c.path("c", "from-c"), b"c's file");
    let started = Instant::now();
    let v = c.sync_ok_with("c", &["--peer", "a"]);
    let took = started.elapsed();
    assert!(peer_report(&v, "a")["error"].is_null(), "{v:#}");
    assert_eq!(std::fs::read(c.path("a", "from-c")).unwrap(), b"c's file");
    // Generous for a loaded machine, and well below the 60 s the dead
    // session's connection takes to time out.
    assert!(took < Duration::from_secs(25), "c's sync to a took {took:?}");
    assert!(!c.path("a", "big").exists(), "nothing of the dead session's pull was applied");
}
