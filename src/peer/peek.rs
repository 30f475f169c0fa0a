//! Comparing one path with peers without changing anything: `snapsync
//! diff` and csync2's `-TT`.
//!
//! Terms:
//! - A *peek* opens a session with a peer, asks for the record of one
//!   logical path (`GetDir` of its parent, paged until the name) and, for a
//!   live file of at most a bound (a *small* file), its chunks
//!   (`GetChunkList` when the record left the list out, then `GetChunks`).
//!   The chunks are decoded, checked and put together in memory. Nothing is
//!   written: not to the tree, the chunk store, the staging area or the
//!   state.
//! - The *local side* is this node's record of the path, as the last check
//!   recorded it, and, for a small file, its bytes as they are on disk now.

use std::collections::HashMap;
use std::io::Read as _;
use std::os::unix::ffi::OsStringExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::server::split_logical;
use super::session::{Opened, open_session};
use super::{Node, SyncError};
use crate::chunk::ChunkRef;
use crate::config::{HostEntry, ResolvedGroup};
use crate::engine::{Engine, EngineError};
use crate::hash::Hash;
use crate::net::StreamOpener;
use crate::proto::{self, FileChunks, Message, ProtoError, WireEntry};
use crate::store::EntryRecord;
use crate::sync::{from_wire, request, send_only};
use crate::tree::Body;

/// The largest file whose content a peek reads, on either side: a diff
/// of anything larger is not read by people, and the content is held in
/// memory.
pub const MAX_PEEK_BYTES: u64 = 1 << 20;

/// One side of a compared path.
#[derive(Clone, Debug, Default)]
pub struct PeekSide {
    /// The entry's record; `None` when this side never had the path.
    pub record: Option<EntryRecord>,
    /// The file's bytes, for a live file of at most the bound.
    pub content: Option<Vec<u8>>,
}

impl PeekSide {
    /// Whether the two sides hold the same thing: the same kind, and the
    /// same bytes or link target (metadata aside). A deleted entry is
    /// the same as one never had.
    pub fn same_as(&self, other: &PeekSide) -> bool {
        let live = |s: &PeekSide| s.record.clone().filter(|r| !r.deleted);
        match (live(self), live(other)) {
            (None, None) => true,
            (Some(a), Some(b)) => match (&a.body, &b.body) {
                (Body::File { .. }, Body::File { .. }) => match (&self.content, &other.content) {
                    (Some(x), Some(y)) => x == y,
                    _ => a.body == b.body,
                },
                (Body::Dir { .. }, Body::Dir { .. }) => true,
                (x, y) => x == y,
            },
            _ => false,
        }
    }
}

/// The comparison of the path with one peer.
#[derive(Debug)]
pub struct PeerPeek {
    /// The peer's host name.
    pub peer: String,
    /// What the peer has, or why it could not be asked.
    pub remote: Result<PeekSide, SyncError>,
}

/// What `diff` found for one path.
#[derive(Debug)]
pub struct DiffReport {
    /// The local path.
    pub path: PathBuf,
    /// The group tracking it.
    pub group: String,
    /// Its logical path.
    pub logical: Vec<u8>,
    /// This node's side.
    pub local: PeekSide,
    /// Each peer's side, sorted by peer.
    pub peers: Vec<PeerPeek>,
    /// The local path (or something below it) changed since the last
    /// check: the local record is not what is on disk.
    pub unrecorded: bool,
}

impl DiffReport {
    /// Whether any peer could not be asked.
    pub fn failed(&self) -> bool {
        self.peers.iter().any(|p| p.remote.is_err())
    }

    /// Whether any peer that answered holds something else.
    pub fn differences(&self) -> bool {
        self.peers.iter().any(|p| p.remote.as_ref().is_ok_and(|r| !r.same_as(&self.local)))
    }
}

/// Compares the local `path` with what each peer (those named in `peers`,
/// or every peer of the first group that includes it) has there; reads
/// file content of at most `max` bytes on both sides.
pub async fn diff(node: Arc<Node>, path: &Path, peers: &[String], max: u64) -> Result<DiffReport, SyncError> {
    let engine = &node.engine;
    let abs = Engine::absolute(path)?;
    let Some((gi, g, logical)) = engine
        .groups
        .iter()
        .enumerate()
        .find_map(|(gi, g)| g.to_logical(&abs).map(|l| (gi, g, l.into_os_string().into_vec())))
    else {
        return Err(EngineError::Usage(format!(
            "{} is not below an include root of any group of host {}",
            abs.display(),
            engine.host
        ))
        .into());
    };
    for p in peers {
        if !g.peers().any(|h| h.is_host(p)) {
            return Err(
                EngineError::NotFound(format!("{p} is not a peer of {} in group {}", engine.host, g.name)).into()
            );
        }
    }
    let local = local_side(&node, g, &logical, &abs, max)?;
    // A read-only check of the path alone: whether the record is behind.
    let (n, scope) = (Arc::clone(&node), vec![abs.clone()]);
    let checked = tokio::task::spawn_blocking(move || n.engine.check_read_only(&scope, &crate::progress::Quiet, None));
    let checked = checked.await.expect("check panicked")?;
    let unrecorded = checked.groups.iter().any(|c| c.group == g.name && !c.pending_paths.is_empty());
    let mut tasks = tokio::task::JoinSet::new();
    for entry in g.peers().filter(|h| peers.is_empty() || peers.iter().any(|p| h.is_host(p))) {
        let (node, entry, logical) = (Arc::clone(&node), entry.clone(), logical.clone());
        tasks.spawn(async move {
            let remote = peek(&node, gi, &entry, &logical, max).await;
            PeerPeek { peer: entry.name, remote }
        });
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        out.push(r.expect("peek task panicked"));
    }
    out.sort_by(|a, b| a.peer.cmp(&b.peer));
    Ok(DiffReport { path: abs, group: g.name.clone(), logical, local, peers: out, unrecorded })
}

/// This node's record of `logical`, and the bytes of the file at `path`
/// when it is a regular file of at most `max` bytes.
fn local_side(node: &Node, g: &ResolvedGroup, logical: &[u8], path: &Path, max: u64) -> Result<PeekSide, SyncError> {
    let (parent, name) = split_logical(g, logical);
    let record = node.engine.store.dir_record(&g.name, parent)?.and_then(|d| d.get(name).cloned());
    let content = match crate::fs::open_nofollow(path) {
        Ok(f) => {
            let md = f.metadata().map_err(|e| EngineError::Io { path: path.to_path_buf(), source: e })?;
            if md.is_file() && md.len() <= max {
                let mut bytes = Vec::with_capacity(md.len() as usize);
                // A file that grows while it is read stops at the bound.
                f.take(max + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|e| EngineError::Io { path: path.to_path_buf(), source: e })?;
                (bytes.len() as u64 <= max).then_some(bytes)
            } else {
                None
            }
        }
        Err(_) => None,
    };
    Ok(PeekSide { record, content })
}

/// What the peer `entry` of group `gi` has at `logical`: its record and,
/// for a small live file, its bytes.
async fn peek(node: &Arc<Node>, gi: usize, entry: &HostEntry, logical: &[u8], max: u64) -> Result<PeekSide, SyncError> {
    let g = &node.engine.groups[gi];
    let Opened { host, mut opener, acceptor, .. } = open_session(node, gi, entry).await?;
    let result = async {
        let Some(wire) = find(&host, &mut opener, g, logical).await? else {
            return Ok(PeekSide::default());
        };
        let content = match &wire.body {
            Body::File { size, content } if !wire.deleted && *size <= max => {
                Some(fetch(&host, &mut opener, &g.name, logical, &wire, *size, content).await?)
            }
            _ => None,
        };
        Ok(PeekSide { record: Some(from_wire(wire)), content })
    }
    .await;
    if result.is_ok() {
        let _ = send_only(&host, &mut opener, &Message::Bye).await;
    }
    opener.close(0);
    drop(acceptor);
    result
}

fn mismatch(host: &str, why: String) -> SyncError {
    SyncError::Proto { peer: host.to_owned(), source: ProtoError::Mismatch { why } }
}

/// The peer's entry at `logical`, from the pages of its parent directory.
async fn find(
    host: &str,
    opener: &mut StreamOpener,
    g: &ResolvedGroup,
    logical: &[u8],
) -> Result<Option<WireEntry>, SyncError> {
    let (parent, name) = split_logical(g, logical);
    let mut after = Vec::new();
    loop {
        let ask = Message::GetDir { group: g.name.clone(), path: parent.to_vec(), after: after.clone() };
        let (_, reply) = request(host, opener, &ask).await?;
        let Message::Dir { entries, last_page, .. } = reply else {
            return Err(mismatch(host, format!("expected Dir, got {}", reply.kind())));
        };
        let Some(last) = entries.last() else { return Ok(None) };
        if last.name.as_slice() <= after.as_slice() && !after.is_empty() {
            return Err(mismatch(host, "a Dir page that does not go forward".into()));
        }
        after = last.name.clone();
        if let Some(e) = entries.into_iter().find(|e| e.name == name) {
            return Ok(Some(e));
        }
        if last_page || after.as_slice() > name {
            return Ok(None);
        }
    }
}

/// The bytes of the peer's file `logical` with `content` (`size` bytes),
/// put together from its chunks and checked against the content hash.
async fn fetch(
    host: &str,
    opener: &mut StreamOpener,
    group: &str,
    logical: &[u8],
    wire: &WireEntry,
    size: u64,
    content: &Hash,
) -> Result<Vec<u8>, SyncError> {
    let mut chunks: Vec<ChunkRef> = wire.chunks.clone();
    if wire.chunks_left_out() {
        loop {
            let ask = Message::GetChunkList {
                group: group.to_owned(),
                path: logical.to_vec(),
                content: *content,
                start: chunks.len() as u64,
            };
            let (_, reply) = request(host, opener, &ask).await?;
            let Message::ChunkList { chunks: page, total, .. } = reply else {
                return Err(mismatch(host, format!("expected ChunkList, got {}", reply.kind())));
            };
            if page.is_empty() || total > crate::sync::max_chunks(size) {
                return Err(mismatch(host, format!("a chunk list of {total} chunks for {size} bytes")));
            }
            chunks.extend(page);
            if chunks.len() as u64 >= total {
                break;
            }
        }
    }
    if crate::chunk::content_hash(&chunks) != *content || chunks.iter().map(|c| u64::from(c.len)).sum::<u64>() != size {
        return Err(mismatch(host, "the chunk list does not match the file's content hash and size".into()));
    }
    let mut wanted: Vec<Hash> = chunks.iter().map(|c| c.hash).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut got: HashMap<Hash, Vec<u8>> = HashMap::new();
    for batch in wanted.chunks(proto::limits::MAX_CHUNKS_PER_REQUEST) {
        let files = vec![FileChunks { path: logical.to_vec(), content: *content, hashes: batch.to_vec() }];
        let ask = Message::GetChunks { group: group.to_owned(), files };
        let proto_err = |source| SyncError::Proto { peer: host.to_owned(), source };
        let (mut stream, mut reply) = request(host, opener, &ask).await?;
        loop {
            match reply {
                Message::Chunk { hash, stored } => {
                    if !batch.contains(&hash) || got.contains_key(&hash) {
                        return Err(mismatch(host, format!("chunk {} not asked for", hash.short())));
                    }
                    let data = crate::chunk::decode(&hash, &stored)
                        .map_err(|e| mismatch(host, format!("chunk {}: {e}", hash.short())))?;
                    got.insert(hash, data);
                }
                Message::ChunksDone { missing } if missing.is_empty() => break,
                Message::ChunksDone { .. } => {
                    return Err(SyncError::Refused(format!(
                        "{host} changed its file while it was read; compare again"
                    )));
                }
                other => return Err(mismatch(host, format!("expected Chunk, got {}", other.kind()))),
            }
            reply = proto::read_frame(&mut stream).await.map_err(proto_err)?;
            reply.validate().map_err(proto_err)?;
        }
    }
    let mut bytes = Vec::with_capacity(size as usize);
    for c in &chunks {
        let data = got.get(&c.hash).ok_or_else(|| mismatch(host, format!("chunk {} not sent", c.hash.short())))?;
        bytes.extend_from_slice(data);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(bytes: &[u8]) -> PeekSide {
        let rec = from_wire(WireEntry {
            name: b"f".to_vec(),
            meta: crate::tree::Meta::default(),
            body: Body::File { size: bytes.len() as u64, content: Hash::of(bytes) },
            version: crate::store::Version::default(),
            deleted: false,
            chunks: Vec::new(),
        });
        PeekSide { record: Some(rec), content: Some(bytes.to_vec()) }
    }

    #[test]
    fn sides_compare_by_kind_and_bytes() {
        assert!(file(b"a").same_as(&file(b"a")));
        assert!(!file(b"a").same_as(&file(b"b")));
        assert!(!file(b"a").same_as(&PeekSide::default()));
        let mut deleted = file(b"a");
        deleted.record.as_mut().unwrap().deleted = true;
        assert!(deleted.same_as(&PeekSide::default()));
        // Without content (a large file), the recorded content decides.
        let (mut x, mut y) = (file(b"big"), file(b"big"));
        x.content = None;
        y.content = None;
        assert!(x.same_as(&y));
    }
}
