//! Answering a peer's requests from the node's state and live files.
//!
//! Every request arrives on its own stream and gets its answer there. The
//! answers come from the recorded state: a file's chunks are read from the
//! chunk store when it has them, else from the live file at the offsets its
//! record gives, and each is checked against its hash before it is sent. A
//! file changed since it was recorded yields `missing` chunks, never wrong
//! ones.
//!
//! Serving holds no lock: answers read the state as it is. Every wait on
//! the peer (its request, its taking our answer) is bounded
//! ([`Deadlines`]). A `Pull` runs its reconcile in a task of its own and
//! sends `Progress` on the `Pull` stream every
//! [`proto::PROGRESS_INTERVAL`] until it answers, so the initiator can tell
//! a long pull from a stalled one; a peer's pulls of one group run one at
//! a time.

use std::collections::HashMap;
use std::collections::HashSet;
use std::collections::hash_map::Entry;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::{Node, Stats, SyncError};
use crate::config::ResolvedGroup;
use crate::hash::Hash;
use crate::net::Stream;
use crate::proto::{self, Deadlines, ErrorCode, FileChunks, Message, PageBuilder, ProtoError, Refusal, WireEntry};
use crate::store::{EntryRecord, Version};
use crate::sync::{Peer, PeerStream, RootsAnswer, agreed_version, roots_of};
use crate::tree::Body;

/// Serves one request stream of `peer`.
pub(super) async fn serve_stream(node: Arc<Node>, peer: Arc<Peer>, stream: Stream) {
    let mut stream = Deadlines::new(stream, "request", "answer");
    let budget = node.request_budget(&peer.host);
    let request = match proto::read_frame_within(&mut stream, &budget).await.and_then(|m| m.validate().map(|()| m)) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!("peer {}: bad request: {e}", peer.host);
            let _ = proto::write_frame(&mut stream, &Message::error(&e)).await;
            let _ = stream.shutdown().await;
            return;
        }
    };
    let kind = request.kind();
    stream.set_labels(format!("{kind} request"), format!("answer to {kind}"));
    if let Err(e) = answer(&node, &peer, request, &mut stream).await {
        tracing::warn!("peer {}: {e}", peer.host);
        let reply = match e {
            SyncError::Proto { source, .. } => Message::error(&source),
            other => Message::Error { code: ErrorCode::Internal, message: truncated(other.to_string()) },
        };
        let _ = proto::write_frame(&mut stream, &reply).await;
    }
    let _ = stream.shutdown().await;
}

pub(super) fn truncated(mut s: String) -> String {
    if s.len() > proto::limits::MAX_TEXT_LEN {
        let mut end = proto::limits::MAX_TEXT_LEN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn refused(peer: &Peer, code: ErrorCode, message: String) -> SyncError {
    SyncError::Proto { peer: peer.host.clone(), source: ProtoError::Remote { code, message } }
}

/// The group `name`, if this session may sync it.
fn group<'a>(node: &'a Node, peer: &Peer, name: &str) -> Result<(usize, &'a ResolvedGroup), SyncError> {
    if !peer.groups.iter().any(|g| g == name) {
        return Err(refused(peer, ErrorCode::NotAllowed, format!("group {name:?} is not shared on this connection")));
    }
    let gi = node.engine.group_index(name).expect("welcomed groups are configured");
    Ok((gi, &node.engine.groups[gi]))
}

async fn send(stream: &mut PeerStream, msg: &Message) -> Result<(), SyncError> {
    proto::write_frame(stream, msg).await.map_err(|e| SyncError::Refused(format!("writing a reply: {e}")))
}

async fn answer(
    node: &Arc<Node>,
    peer: &Arc<Peer>,
    request: Message,
    stream: &mut PeerStream,
) -> Result<(), SyncError> {
    match request {
        Message::GetRoots { group: name } => {
            let (_, g) = group(node, peer, &name)?;
            let held = HeldBack::new(node, g, peer)?;
            let RootsAnswer { hash, versions, roots } = roots_of(&node.engine, g, |name, e| held.offer(name, name, e))?;
            Stats::add(&node.stats.roots_served, 1);
            send(stream, &Message::Roots { group: name, hash, versions, roots }).await
        }
        Message::GetDir { group: name, path, after } => {
            let (_, g) = group(node, peer, &name)?;
            check_path(peer, g, &path)?;
            let rec = node.engine.store.dir_record(&g.name, &path)?.unwrap_or_default();
            let held = HeldBack::new(node, g, peer)?;
            let mut page = PageBuilder::new();
            let mut last_page = true;
            for (n, r) in rec.children.iter().filter(|(n, _)| after.is_empty() || n.as_slice() > after.as_slice()) {
                if page.push(held.offer(n, &crate::store::join_logical(&path, n), r)).is_some() {
                    last_page = false;
                    break;
                }
            }
            Stats::add(&node.stats.dirs_served, 1);
            send(stream, &page.finish(name, path, last_page)).await
        }
        Message::GetChunkList { group: name, path, content, start } => {
            let (_, g) = group(node, peer, &name)?;
            check_path(peer, g, &path)?;
            let rec = live_file(node, g, &path, &content)?
                .ok_or_else(|| refused(peer, ErrorCode::NotFound, "the file no longer has that content".into()))?;
            let total = rec.chunks.len() as u64;
            let from = start.min(total) as usize;
            let to = (from + proto::limits::MAX_CHUNKS_PER_PAGE).min(rec.chunks.len());
            let chunks = rec.chunks[from..to].to_vec();
            send(stream, &Message::ChunkList { group: name, path, content, start, total, chunks }).await
        }
        Message::GetChunks { group: name, files } => {
            let (gi, g) = group(node, peer, &name)?;
            for f in &files {
                check_path(peer, g, &f.path)?;
            }
            let node2 = Arc::clone(node);
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<ChunkFrame>>(2);
            // Reading and compressing happen on a blocking thread; frames
            // are written as they come, a batch at a time.
            let reader = tokio::task::spawn_blocking(move || {
                let missing = read_chunks(&node2, gi, &files, &tx);
                (files, missing)
            });
            while let Some(batch) = rx.recv().await {
                for chunk in batch {
                    proto::write_chunk_frame(stream, &chunk.head, &chunk.stored)
                        .await
                        .map_err(|e| SyncError::Refused(format!("writing a reply: {e}")))?;
                    Stats::add(&node.stats.chunks_served, 1);
                    peer.sent(chunk.stored.len() as u64);
                    crate::killpoint::hit("serve.chunk");
                }
            }
            let (files, missing) = reader.await.expect("chunk reader panicked");
            let missing = missing?;
            if !missing.is_empty() {
                record_changed_sources(node, peer, gi, &files, &missing).await;
            }
            send(stream, &Message::ChunksDone { missing }).await
        }
        Message::Pull { group: name, dry_run } => {
            if !peer.groups.contains(&name) {
                let message = format!("group {name:?} is not shared on this connection");
                return send(stream, &Message::Refused { reason: Refusal::NotShared, message }).await;
            }
            let (gi, g) = group(node, peer, &name)?;
            if g.host(&peer.host).is_some_and(|h| h.receive_only) {
                let message = format!("{} is receive-only in group {}: it may not push", peer.host, g.name);
                tracing::warn!("refused a push: {message}");
                return send(stream, &Message::Refused { reason: Refusal::ReceiveOnly, message }).await;
            }
            let report = pull(node, peer, gi, dry_run, stream).await?;
            if !dry_run {
                tracing::info!(
                    target: "snapsync::daemon",
                    "pull by {} of group {}: changes {}, conflicts {}, not applied {}",
                    peer.host,
                    name,
                    report.changes_total(),
                    report.conflicts.len(),
                    report.problems.len()
                );
            }
            send(stream, &report.pulled()).await
        }
        Message::Done => {
            if !peer.end_run() {
                return Err(refused(
                    peer,
                    ErrorCode::BadRequest,
                    "Done ends a run of the side that opened the session".into(),
                ));
            }
            // Answered first: the initiator's run is not held up by the
            // actions. They run while this request still counts among the
            // session's requests served at once, so a peer that sends
            // `Done` after `Done` cannot queue work without bound. What the
            // run left in memory then goes back to the system, as when a
            // session ends.
            send(stream, &Message::Done).await?;
            let _ = stream.shutdown().await;
            let (actions, node) = (Arc::clone(&peer.actions), Arc::clone(node));
            let ran = tokio::task::spawn_blocking(move || {
                actions.run_so_far(&node.engine.groups);
                node.settle_memory();
            });
            if let Err(e) = ran.await {
                tracing::error!("peer {}: the run's actions did not finish: {e}", peer.host);
            }
            Ok(())
        }
        // Notices, not answered.
        Message::Bye | Message::Progress => Ok(()),
        other => Err(refused(peer, ErrorCode::BadRequest, format!("{} is not a request", other.kind()))),
    }
}

/// Checks the files that no longer hold chunks their records list (edited
/// here since the last check), so that their new state is recorded before
/// the peer hears the chunks are missing: its next pass then decides the
/// path again against what is on disk here, instead of failing the run on
/// an edit this node had not recorded yet. Best effort: a failed check is
/// logged, and the peer reports the path.
async fn record_changed_sources(node: &Arc<Node>, peer: &Arc<Peer>, gi: usize, files: &[FileChunks], missing: &[Hash]) {
    let g = &node.engine.groups[gi];
    let paths: Vec<std::path::PathBuf> = files
        .iter()
        .filter(|f| f.hashes.iter().any(|h| missing.binary_search_by_key(h.as_bytes(), |m| *m.as_bytes()).is_ok()))
        .filter_map(|f| g.to_local(std::path::Path::new(std::ffi::OsStr::from_bytes(&f.path))))
        .collect();
    if paths.is_empty() {
        return;
    }
    // The peer waits for the answer: a writer busy for long (a large apply
    // of this node's own) is not waited for; the next run records the edit.
    let Ok(w) = tokio::time::timeout(proto::REPLY_TIMEOUT / 3, node.engine.store.writer()).await else {
        tracing::debug!("files changed while {} pulled them are left for the next check", peer.host);
        return;
    };
    let n = Arc::clone(node);
    let checked = tokio::task::spawn_blocking(move || {
        n.engine.check_with_cause(&w, &paths, "local scan", Some(gi), false, None, &crate::progress::Quiet, None)
    })
    .await
    .expect("check panicked");
    match checked {
        Ok(report) => peer.actions.add_check(&node.engine.groups, &report),
        Err(e) => tracing::warn!("checking files changed while {} pulled them: {e}", peer.host),
    }
}

/// The paths of a group this node has unresolved conflicts on, when the
/// peer asking is receive-only in it: they are offered under the version
/// the sides last agreed on ([`agreed_version`]), so the receive-only
/// peer keeps that version rather than taking whichever side it meets
/// first (SPEC §4.17). A path this node forced is offered as it is: its
/// version is the one that wins. Empty for a sending peer, which decides
/// conflicts itself.
pub(super) struct HeldBack(HashMap<Vec<u8>, Version>);

impl HeldBack {
    fn new(node: &Node, g: &ResolvedGroup, peer: &Peer) -> Result<HeldBack, SyncError> {
        let mut held = HashMap::new();
        if g.host(&peer.host).is_some_and(|h| h.receive_only) {
            for c in node.engine.store.conflicts()? {
                if c.group == g.name && !forced(node, g, &c.path)? {
                    let other = c.remote.as_ref().map(|r| r.version.clone()).unwrap_or_default();
                    match held.entry(c.path) {
                        Entry::Vacant(e) => {
                            e.insert(other);
                        }
                        Entry::Occupied(mut e) => {
                            let v = agreed_version(e.get(), &other);
                            e.insert(v);
                        }
                    }
                }
            }
        }
        Ok(HeldBack(held))
    }

    /// The entry offered for `rec`, named `name`, at logical `path`.
    fn offer(&self, name: &[u8], path: &[u8], rec: &EntryRecord) -> WireEntry {
        let mut e = crate::sync::to_wire(name, rec);
        if let Some(other) = self.0.get(path) {
            e.version = agreed_version(&rec.version, other);
        }
        e
    }
}

/// Whether a force on `path` of `g` is pending here.
fn forced(node: &Node, g: &ResolvedGroup, path: &[u8]) -> Result<bool, SyncError> {
    let Some(f) = node.engine.store.force(&g.name, path)? else { return Ok(false) };
    Ok(f.current(node.engine.local_record(g, path)?.as_ref()))
}

/// Reconciles group `gi` against `peer` as its `Pull` asks, sending
/// `Progress` on the `Pull` stream every [`proto::PROGRESS_INTERVAL`]
/// meanwhile. The reconcile runs in a task of its own, so the heartbeat
/// keeps going while it works on a blocking thread or waits for the writer
/// lock. If the initiator is gone (it no longer takes `Progress`), this
/// returns, and the reconcile stops at its next wait on the network, which
/// fails at once on a closed connection or within
/// [`proto::REPLY_TIMEOUT`] on a silent one; it is never cut off while
/// applying.
async fn pull(
    node: &Arc<Node>,
    peer: &Arc<Peer>,
    gi: usize,
    dry_run: bool,
    stream: &mut PeerStream,
) -> Result<crate::sync::GroupReport, SyncError> {
    let (node, peer) = (Arc::clone(node), Arc::clone(peer));
    let mut work = tokio::spawn(async move {
        // One pull of a group per peer at a time; the later one waits.
        let lock = node.pull_lock(&peer.host, &node.engine.groups[gi].name);
        let _one = lock.lock().await;
        crate::sync::reconcile(&node, &peer, gi, dry_run, false).await
    });
    let start = tokio::time::Instant::now() + proto::PROGRESS_INTERVAL;
    let mut beat = tokio::time::interval_at(start, proto::PROGRESS_INTERVAL);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            done = &mut work => {
                return done.map_err(|e| SyncError::Refused(format!("the pull failed: {e}")))?;
            }
            _ = beat.tick() => send(stream, &Message::Progress).await?,
        }
    }
}

/// Checks a requested logical path: well formed and inside the group.
fn check_path(peer: &Peer, g: &ResolvedGroup, path: &[u8]) -> Result<(), SyncError> {
    if path.is_empty() {
        return Ok(());
    }
    let roots: Vec<&str> = g.roots.iter().map(|r| r.logical.as_str()).collect();
    proto::check_logical_path(path, &roots).map_err(|source| SyncError::Proto { peer: peer.host.clone(), source })
}

/// The record of the live file at logical `path` with `content`, if the
/// state has one.
fn live_file(node: &Node, g: &ResolvedGroup, path: &[u8], content: &Hash) -> Result<Option<EntryRecord>, SyncError> {
    let (parent, name) = split_logical(g, path);
    let rec = node.engine.store.entry(&g.name, parent, name)?;
    Ok(rec.filter(|r| holds(r, content)))
}

/// Whether `rec` is a live file with `content`.
fn holds(rec: &EntryRecord, content: &Hash) -> bool {
    !rec.deleted && matches!(&rec.body, Body::File { content: c, .. } if c == content)
}

/// Splits a logical path into its parent directory and name; an include
/// root's parent is the empty path.
pub(super) fn split_logical<'p>(g: &ResolvedGroup, path: &'p [u8]) -> (&'p [u8], &'p [u8]) {
    if g.roots.iter().any(|r| r.logical.as_bytes() == path) {
        return (b"", path);
    }
    match path.iter().rposition(|&b| b == b'/') {
        Some(0) => (&path[..1], &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"", path),
    }
}

/// A `Chunk` message: the head of its frame and the chunk's stored form,
/// shared with the node's cache of encoded chunks (not copied).
struct ChunkFrame {
    head: Vec<u8>,
    stored: Arc<Vec<u8>>,
}

/// Chunk frames go from the thread reading them to the task writing them
/// in batches of about this many bytes (the first chunk of an answer on
/// its own, so that it leaves at once). Handed over one at a time, each
/// chunk woke the writer and, once the queue was full, the reader: about
/// 1.3 thread switches per chunk sent in a 3-node first sync of 20k files.
const CHUNK_BATCH_BYTES: usize = 256 << 10;

/// Reads the wanted chunks of `files`, sending each as a `Chunk` frame
/// ([`read_one`]); returns those it could not send.
fn read_chunks(
    node: &Node,
    gi: usize,
    files: &[FileChunks],
    tx: &tokio::sync::mpsc::Sender<Vec<ChunkFrame>>,
) -> Result<Vec<Hash>, SyncError> {
    let g = &node.engine.groups[gi];
    let store = node.engine.chunk_store(gi);
    let mut sent: HashSet<Hash> = HashSet::new();
    let mut missing = Vec::new();
    let (mut batch, mut batch_bytes) = (Vec::new(), 0);
    // Files of one request mostly share a few directories: each directory
    // record is read and decoded once, not once per file.
    let mut dirs: std::collections::HashMap<Vec<u8>, crate::store::DirRecord> = Default::default();
    for f in files {
        let (parent, name) = split_logical(g, &f.path);
        if !dirs.contains_key(parent) {
            let rec = node.engine.store.dir_record(&g.name, parent)?.unwrap_or_default();
            dirs.insert(parent.to_vec(), rec);
        }
        let rec = dirs[parent].get(name).filter(|r| holds(r, &f.content)).cloned();
        let local =
            g.to_local(std::path::Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&f.path)));
        let mut file: Option<File> = None;
        for h in &f.hashes {
            if sent.contains(h) {
                continue;
            }
            // Read once for every peer that asks while it is cached.
            let data = match node.encoded.get(h) {
                Some(stored) => Some(stored),
                None => match (&rec, &local) {
                    (Some(rec), Some(local)) => read_one(store, rec, h, local, &mut file).map(|stored| {
                        let stored = Arc::new(stored);
                        node.encoded.put(*h, Arc::clone(&stored));
                        stored
                    }),
                    _ => None,
                },
            };
            match data {
                Some(stored) => {
                    sent.insert(*h);
                    batch_bytes += stored.len();
                    batch.push(ChunkFrame { head: proto::chunk_frame_head(h, stored.len()), stored });
                    if sent.len() == 1 || batch_bytes >= CHUNK_BATCH_BYTES {
                        batch_bytes = 0;
                        if tx.blocking_send(std::mem::take(&mut batch)).is_err() {
                            return Ok(missing);
                        }
                    }
                    if sent.len() == 1 {
                        pause_for_tests();
                    }
                }
                None => missing.push(*h),
            }
        }
    }
    if !batch.is_empty() && tx.blocking_send(batch).is_err() {
        return Ok(missing);
    }
    missing.retain(|h| !sent.contains(h));
    missing.sort_unstable_by_key(|h| *h.as_bytes());
    missing.dedup();
    Ok(missing)
}

/// The test hook's environment variable: see `pause_for_tests` in this module.
pub const PAUSE_ENV: &str = "SNAPSYNC_TEST_PAUSE_SEND";

/// Test hook. With `SNAPSYNC_TEST_PAUSE_SEND=DIR` in the daemon's
/// environment, the thread answering a `GetChunks` stops after its first
/// chunk: it creates `DIR/paused` and waits, at most a minute, for
/// `DIR/resume`. A test then changes the file being sent at a known point
/// of the transfer instead of racing it. Once `DIR/resume` exists it never
/// pauses again. Unset, as everywhere but in the tests, it costs one
/// environment lookup per request.
fn pause_for_tests() {
    let Some(dir) = std::env::var_os(PAUSE_ENV) else { return };
    let dir = std::path::PathBuf::from(dir);
    let resume = dir.join("resume");
    if resume.exists() {
        return;
    }
    let _ = std::fs::write(dir.join("paused"), b"");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !resume.exists() && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// One chunk's stored form, to send, checked: from the chunk store as it
/// is stored there, else read from the file and compressed if this host
/// has processor time to spare (`cpu.rs`).
fn read_one(
    store: Option<&crate::store::ChunkStore>,
    rec: &EntryRecord,
    hash: &Hash,
    local: &std::path::Path,
    file: &mut Option<File>,
) -> Option<Vec<u8>> {
    if let Some(cs) = store
        && rec.stored
        && let Ok(stored) = cs.get_stored(hash)
    {
        return Some(stored);
    }
    let (offset, c) = crate::chunk::offset_of(&rec.chunks, hash)?;
    if file.is_none() {
        *file = crate::fs::open_nofollow(local).ok();
    }
    let raw = crate::fs::read_checked_raw(file.as_ref()?, offset, c)?;
    Some(if super::cpu::room_to_compress() { crate::chunk::compressed(raw) } else { raw })
}
