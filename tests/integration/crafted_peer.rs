//! A crafted member of a cluster, built from the crate's own protocol types
//! (`snapsync::proto`, `snapsync::net`): it holds the group key, so the
//! node under test takes it for host `b`, and it serves whatever tree a
//! test gives it ([`Served`]), lists a directory as [`Listing`] says
//! (stalling, without end, over the frame limit, ...), and can ask the node
//! to pull from it ([`Crafted::push`]).
//!
//! Events: every request it sees is sent, by kind (`GetRoots`, `GetDir`,
//! `GetChunkList`, `GetChunks`, ...), to [`Crafted::wait_for`]; a `GetDir`
//! adds `GetDir PATH`, and a stalled one that the node gives up on adds
//! `GetDir abandoned`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use snapsync::chunk::{self, ChunkRef};
use snapsync::hash::Hash;
use snapsync::net::{self, NodeIdentity, Stream, StreamAcceptor};
use snapsync::proto::{self, Message, WireEntry};
use snapsync::store::Version;
use snapsync::tree::{Body, Meta, RootEntry, RootSet, Timestamp};
use tokio::io::AsyncWriteExt;

use crate::cluster::Cluster;

/// The cluster's group and its one include root, as the crafted peers
/// name them.
pub const GROUP: &str = "g";
pub const ROOT: &str = "%tree%";

/// Bound on waiting for the crafted peer to see a request: generous for a
/// loaded machine, still a failure rather than a hang.
pub const EVENT_WAIT: Duration = Duration::from_secs(60);

/// The crafted peer's identity as host `name`: a certificate signed with
/// the cluster's group key, in a state directory of its own.
pub fn identity(c: &Cluster, name: &str) -> NodeIdentity {
    let key = snapsync::key::read(&c.key_path()).expect("group key");
    NodeIdentity::load_or_create(&c.root().join(format!("{name}-crafted")), name, &key).expect("identity")
}

/// Metadata like that of the node trees' directories (same owner), so the
/// crafted entries are ones the node can take.
#[derive(Clone, Copy)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub dir_mode: u32,
}

impl Owner {
    pub fn of(dir: &Path) -> Owner {
        let md = std::fs::metadata(dir).unwrap();
        Owner { uid: md.uid(), gid: md.gid(), dir_mode: md.permissions().mode() & 0o7777 }
    }

    pub fn dir_meta(self) -> Meta {
        Meta { mode: Some(self.dir_mode), uid: Some(self.uid), gid: Some(self.gid), mtime: None }
    }

    pub fn file_meta(self) -> Meta {
        Meta {
            mode: Some(0o644),
            uid: Some(self.uid),
            gid: Some(self.gid),
            mtime: Some(Timestamp { secs: 1_700_000_000, nanos: 0 }),
        }
    }
}

/// The crafted peer's version of everything it serves: one change by b.
pub fn version() -> Version {
    Version(vec![("b".to_owned(), 1)])
}

/// A directory entry named `name` whose tree no node has: the node
/// descends into it and asks for its listing.
pub fn dir(owner: Owner, name: &[u8]) -> WireEntry {
    WireEntry {
        name: name.to_vec(),
        meta: owner.dir_meta(),
        body: Body::Dir { tree: Hash::of(&[b"a tree no node has: ", name].concat()) },
        version: version(),
        deleted: false,
        chunks: Vec::new(),
    }
}

/// `Roots` of the group listing `roots`, each an entry whose name is its
/// logical path, sorted; the hash is the one the entries make, so the
/// message passes validation.
pub fn roots_of(mut roots: Vec<WireEntry>) -> Message {
    roots.sort_by(|a, b| a.name.cmp(&b.name));
    let logical = |e: &WireEntry| String::from_utf8(e.name.clone()).expect("a root's logical path is text");
    let set = RootSet {
        roots: roots
            .iter()
            .map(|e| (logical(e), Some(RootEntry { meta: e.meta.clone(), body: e.body.clone() })))
            .collect(),
    };
    Message::Roots {
        group: GROUP.to_owned(),
        hash: set.hash(),
        versions: Hash::of(b"versions no node has"),
        roots: roots.into_iter().map(|e| (logical(&e), Some(e))).collect(),
    }
}

/// `Roots` of a group whose include root holds some other tree than any
/// node's.
pub fn roots(owner: Owner) -> Message {
    roots_of(vec![dir(owner, ROOT.as_bytes())])
}

/// A file of `n` chunks of 64 KiB that no node holds (and the crafted
/// peer cannot send).
pub fn file(owner: Owner, name: &str, n: u32) -> WireEntry {
    let chunks: Vec<ChunkRef> =
        (0..n).map(|i| ChunkRef { hash: Hash::of(format!("{name} {i}").as_bytes()), len: 64 * 1024 }).collect();
    file_of_chunks(owner, name.as_bytes(), chunks)
}

/// A file named `name` whose chunk list is `chunks`, its size and content
/// hash made from them.
pub fn file_of_chunks(owner: Owner, name: &[u8], chunks: Vec<ChunkRef>) -> WireEntry {
    WireEntry {
        name: name.to_vec(),
        meta: owner.file_meta(),
        body: Body::File { size: chunk::total_len(&chunks), content: chunk::content_hash(&chunks) },
        version: version(),
        deleted: false,
        chunks,
    }
}

/// An empty file named `name`.
pub fn empty_file(owner: Owner, name: String) -> WireEntry {
    file_of_chunks(owner, name.as_bytes(), Vec::new())
}

/// The one chunk of `data` (under 16 KiB, the smallest chunk: one chunk
/// whatever the cut points) and its stored form.
pub fn one_chunk(data: &[u8]) -> (ChunkRef, Vec<u8>) {
    assert!(data.len() < 16 * 1024, "one chunk only");
    (ChunkRef { hash: Hash::of(data), len: data.len() as u32 }, chunk::encode(data))
}

/// How the crafted peer answers `GetDir`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    /// From [`Served::dirs`], in one page.
    Served,
    /// Never: the stream stays open (and QUIC keep-alives keep the
    /// connection up) until the requester gives up on it.
    Stall,
    /// Pages of 4096 names after the cursor, never the last page. They end
    /// in `.junk`, which the tests exclude, so only the listing itself can
    /// cost the node anything.
    Endless,
    /// The first page again, whatever the cursor.
    Repeat,
    /// A frame header announcing a body one byte over [`proto::MAX_FRAME`],
    /// then that many bytes.
    Oversized,
}

/// What the crafted peer serves with [`Listing::Served`].
#[derive(Default)]
pub struct Served {
    /// The answer to `GetRoots` (`None`: [`roots`]).
    pub roots: Option<Message>,
    /// `GetDir` answers: directory logical path → its entries.
    pub dirs: HashMap<Vec<u8>, Vec<WireEntry>>,
    /// `GetChunkList` answers: file logical path → the page sent.
    pub chunk_lists: HashMap<Vec<u8>, Message>,
    /// `GetChunks` answers: chunk name → the stored bytes sent under it
    /// (which need not be that chunk's).
    pub chunks: HashMap<Hash, Vec<u8>>,
    /// Hold every `GetChunks` answer until [`Crafted::release`].
    pub hold_chunks: bool,
}

struct Script {
    owner: Owner,
    listing: Mutex<Listing>,
    served: Mutex<Served>,
    released: tokio::sync::watch::Sender<bool>,
    events: mpsc::Sender<String>,
}

/// A crafted member listening as node `name` of a cluster, on its own
/// runtime. It answers `Hello`, `GetRoots`, `GetChunkList`, `GetChunks` and
/// `Pull` (nothing taken) like a member, from [`Served`], and `GetDir` as
/// its [`Listing`] says.
pub struct Crafted {
    rt: Option<tokio::runtime::Runtime>,
    events: mpsc::Receiver<String>,
    script: Arc<Script>,
    name: String,
}

impl Crafted {
    /// Starts the crafted peer as node `name` of `c`, listing as `listing`
    /// says, serving what `served` holds.
    pub fn start(c: &Cluster, name: &str, listing: Listing, served: Served) -> Crafted {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let id = identity(c, name);
        let addr = SocketAddr::from((c.node(name).ip, c.node(name).port));
        let (tx, events) = mpsc::channel();
        let script = Arc::new(Script {
            owner: Owner::of(&c.tree("a")),
            listing: Mutex::new(listing),
            served: Mutex::new(served),
            released: tokio::sync::watch::channel(false).0,
            events: tx,
        });
        let s = Arc::clone(&script);
        let mut server = rt.block_on(async { net::Server::bind(addr, &id) }).expect("the crafted peer binds");
        rt.spawn(async move {
            loop {
                match server.accept().await {
                    Ok(mut conn) => {
                        // The worst case: the connection never goes idle.
                        let _ = conn.keep_alive(true);
                        let (_opener, acceptor) = conn.split();
                        tokio::spawn(serve(acceptor, Arc::clone(&s)));
                    }
                    Err(net::NetError::EndpointClosed { .. }) => break,
                    Err(_) => {}
                }
            }
        });
        Crafted { rt: Some(rt), events, script, name: name.to_owned() }
    }

    /// The owner the crafted entries carry (that of a's tree).
    pub fn owner(&self) -> Owner {
        self.script.owner
    }

    /// Lists as `listing` says from now on.
    pub fn set_listing(&self, listing: Listing) {
        *self.script.listing.lock().unwrap() = listing;
    }

    /// Changes what is served from now on.
    pub fn serve(&self, edit: impl FnOnce(&mut Served)) {
        edit(&mut self.script.served.lock().unwrap());
    }

    /// Lets held `GetChunks` answers go (and every later one).
    pub fn release(&self) {
        self.script.released.send_replace(true);
    }

    /// Waits (bounded) for the event `what`.
    pub fn wait_for(&self, what: &str) {
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
    pub fn happened(&self, what: &str) -> bool {
        self.events.try_iter().any(|e| e == what)
    }

    /// The events not yet seen.
    pub fn events(&self) -> Vec<String> {
        self.events.try_iter().collect()
    }

    /// Connects to node `target` of `c` as this peer, says `Hello`, and
    /// asks it `times` times over the connection to pull the group from it,
    /// serving its requests as for a sync; each answer to `Pull` (`Pulled`,
    /// `Refused` or `Error`), or the answer to `Hello` if it is not
    /// `Welcome`. Bounded: [`proto::REPLY_TIMEOUT`] per answer, each
    /// `Progress` restarting it, as a member's wait is.
    pub fn push(&self, c: &Cluster, target: &str, times: usize) -> Vec<Message> {
        let id = identity(c, &self.name);
        let addr = SocketAddr::from((c.node(target).ip, c.node(target).port));
        let target = target.to_owned();
        let script = Arc::clone(&self.script);
        let name = self.name.clone();
        self.rt.as_ref().unwrap().block_on(async move {
            let conn = net::connect(addr, &target, &id).await.expect("connects");
            let (mut opener, acceptor) = conn.split();
            tokio::spawn(serve(acceptor, script));
            let mut hello = opener.open_stream().await.unwrap();
            let msg = Message::Hello { protocol: proto::PROTOCOL_VERSION, host: name, groups: vec![GROUP.into()] };
            proto::write_frame(&mut hello, &msg).await.unwrap();
            let welcome = reply(&mut hello).await;
            if !matches!(welcome, Message::Welcome { .. }) {
                return vec![welcome];
            }
            let mut answers = Vec::new();
            for _ in 0..times {
                let mut pull = opener.open_stream().await.unwrap();
                proto::write_frame(&mut pull, &Message::Pull { group: GROUP.into(), dry_run: false }).await.unwrap();
                let _ = pull.flush().await;
                answers.push(reply(&mut pull).await);
            }
            opener.close(0);
            answers
        })
    }
}

/// A flood of requests that never end, held open until dropped.
pub struct Flood {
    stop: tokio::sync::watch::Sender<bool>,
    /// How many streams sent their partial frame (the others were refused
    /// or reset by the node).
    pub sent: usize,
    /// How many streams were opened.
    pub streams: usize,
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

impl Crafted {
    /// Opens `conns` connections to node `target` of `c` as this peer,
    /// each welcomed, and on each [`net::MAX_STREAMS`] request streams
    /// that announce a frame of [`proto::MAX_FRAME`] bytes and send all but
    /// its last byte, so that the node would hold every one of them whole
    /// while it waits for the end. Not `welcomed`: as a host no group lists
    /// (a certificate minted with the group key), each connection sends
    /// one such frame where the node waits for its `Hello`. Returns once
    /// every stream's bytes are taken or refused, or its connection is
    /// (bounded); the streams and connections stay open until the [`Flood`]
    /// is dropped.
    pub fn flood(&self, c: &Cluster, target: &str, conns: usize, welcomed: bool) -> Flood {
        let addr = SocketAddr::from((c.node(target).ip, c.node(target).port));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (sent_tx, mut sent) = tokio::sync::mpsc::unbounded_channel();
        let rt = self.rt.as_ref().unwrap();
        let host = if welcomed { self.name.clone() } else { "intruder".to_owned() };
        let per_conn = if welcomed { net::MAX_STREAMS as usize } else { 1 };
        for _ in 0..conns {
            let (id, target, name) = (identity(c, &host), target.to_owned(), host.clone());
            let (mut stopped, sent_tx) = (stopped.clone(), sent_tx.clone());
            rt.spawn(async move {
                let mut held = Vec::new();
                let mut reported = 0;
                let opener = async {
                    let mut opener = net::connect(addr, &target, &id).await.ok()?.split().0;
                    if welcomed {
                        let mut hello = opener.open_stream().await.ok()?;
                        let msg = Message::Hello {
                            protocol: proto::PROTOCOL_VERSION,
                            host: name,
                            groups: vec![GROUP.into()],
                        };
                        proto::write_frame(&mut hello, &msg).await.ok()?;
                        let Ok(Message::Welcome { .. }) = proto::read_frame(&mut hello).await else { return None };
                    }
                    for _ in 0..per_conn {
                        let mut s = opener.open_stream().await.ok()?;
                        let len = proto::MAX_FRAME;
                        let mut frame = (len as u32).to_be_bytes().to_vec();
                        frame.resize(4 + len - 1, 0xa5);
                        let sent = s.write_all(&frame).await.is_ok() && s.flush().await.is_ok();
                        let _ = sent_tx.send(sent);
                        reported += 1;
                        held.push(s);
                    }
                    Some(opener)
                }
                .await;
                // Refused or closed: what was not sent is reported so.
                for _ in reported..per_conn {
                    let _ = sent_tx.send(false);
                }
                let _ = stopped.wait_for(|s| *s).await;
                drop(held);
                drop(opener);
            });
        }
        drop(sent_tx);
        let want = conns * per_conn;
        let (streams, sent) = rt.block_on(async {
            let (mut n, mut ok) = (0, 0);
            let deadline = tokio::time::Instant::now() + EVENT_WAIT;
            while n < want {
                match tokio::time::timeout_at(deadline, sent.recv()).await {
                    Ok(Some(s)) => {
                        n += 1;
                        ok += usize::from(s);
                    }
                    _ => break,
                }
            }
            (n, ok)
        });
        Flood { stop, sent, streams }
    }
}

/// The next frame on `stream` that is not `Progress`, bounded.
async fn reply(stream: &mut Stream) -> Message {
    loop {
        match tokio::time::timeout(proto::REPLY_TIMEOUT, proto::read_frame(stream)).await {
            Ok(Ok(Message::Progress)) => {}
            Ok(Ok(m)) => return m,
            Ok(Err(e)) => panic!("reading the answer: {e}"),
            Err(_) => panic!("no answer within {:?}", proto::REPLY_TIMEOUT),
        }
    }
}

impl Drop for Crafted {
    fn drop(&mut self) {
        // Closes the endpoint and every connection of the crafted peer.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn serve(mut acceptor: StreamAcceptor, script: Arc<Script>) {
    while let Ok(Some(stream)) = acceptor.accept_stream().await {
        tokio::spawn(answer(stream, Arc::clone(&script)));
    }
}

async fn answer(mut stream: Stream, script: Arc<Script>) {
    let Ok(request) = proto::read_frame(&mut stream).await else { return };
    let _ = script.events.send(request.kind().to_owned());
    let owner = script.owner;
    let replies = match request {
        Message::Hello { groups, .. } => {
            vec![Message::Welcome { protocol: proto::PROTOCOL_VERSION, host: "b".into(), groups }]
        }
        Message::GetRoots { .. } => vec![script.served.lock().unwrap().roots.clone().unwrap_or_else(|| roots(owner))],
        Message::Pull { .. } => {
            vec![Message::Pulled { changes: Vec::new(), more: 0, problems: Vec::new(), problems_total: 0 }]
        }
        Message::GetChunkList { path, .. } => match script.served.lock().unwrap().chunk_lists.get(&path) {
            Some(m) => vec![m.clone()],
            None => return,
        },
        Message::GetChunks { files, .. } => {
            if script.served.lock().unwrap().hold_chunks {
                let mut released = script.released.subscribe();
                let _ = released.wait_for(|r| *r).await;
            }
            let served = script.served.lock().unwrap();
            let mut replies = Vec::new();
            let mut missing = Vec::new();
            for h in files.iter().flat_map(|f| &f.hashes) {
                match served.chunks.get(h) {
                    Some(stored) => replies.push(Message::Chunk { hash: *h, stored: stored.clone() }),
                    None => missing.push(*h),
                }
            }
            missing.sort_unstable_by_key(|h| *h.as_bytes());
            missing.dedup();
            replies.push(Message::ChunksDone { missing });
            replies
        }
        Message::GetDir { group, path, after } => {
            let _ = script.events.send(format!("GetDir {}", String::from_utf8_lossy(&path)));
            let listing = *script.listing.lock().unwrap();
            match listing {
                Listing::Served => {
                    let entries = script.served.lock().unwrap().dirs.get(&path).cloned().unwrap_or_default();
                    vec![Message::Dir { group, path, last_page: true, entries }]
                }
                Listing::Stall => {
                    let mut buf = [0u8; 1];
                    let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
                    let _ = script.events.send("GetDir abandoned".into());
                    return;
                }
                Listing::Endless => {
                    let from = String::from_utf8_lossy(&after).split('.').next().unwrap_or("").parse().unwrap_or(0u64);
                    let entries = (from + 1..=from + proto::MAX_ENTRIES_PER_PAGE as u64)
                        .map(|n| empty_file(owner, format!("{n:012}.junk")))
                        .collect();
                    vec![Message::Dir { group, path, last_page: false, entries }]
                }
                Listing::Repeat => {
                    let entries = (1..=16).map(|n| empty_file(owner, format!("{n:012}.junk"))).collect();
                    vec![Message::Dir { group, path, last_page: false, entries }]
                }
                Listing::Oversized => {
                    let len = proto::MAX_FRAME + 1;
                    let _ = stream.write_all(&(len as u32).to_be_bytes()).await;
                    let _ = stream.write_all(&vec![0u8; len]).await;
                    let _ = stream.shutdown().await;
                    return;
                }
            }
        }
        _ => return,
    };
    for r in &replies {
        if proto::write_frame(&mut stream, r).await.is_err() {
            return;
        }
    }
    let _ = stream.shutdown().await;
}
